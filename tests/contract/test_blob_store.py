"""One contract for every BlobStore adapter: the originals as files under a directory (FileBlobStore, one machine or a
shared volume) and as objects in an S3 bucket (S3BlobStore, through boto3 over HTTP to moto's S3 server on loopback,
a real protocol server: nothing is mocked inside boto3)."""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from kb.adapters.blob_store import FileBlobStore
from kb.adapters.s3_blob_store import S3BlobStore
from kb.ports import BlobStore
from tests.support import free_port

pytestmark = pytest.mark.contract

PREFIX = "originals/"


@dataclass
class Place:
    """Where one adapter keeps its originals: `open` opens a store on it (again: a second store on the same place is
    another process's view), `listing` names everything there (files under the directory, objects in the whole
    bucket), `name` where an id's bytes are expected to be."""

    kind: str
    open: Callable[[], BlobStore]
    listing: Callable[[], list[str]]
    name: Callable[[str], str]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, one for the module; each test gets a bucket of its own."""
    with pytest.MonkeyPatch.context() as env:
        # Credentials through boto3's own chain (environment variables), as a deployment gives them; never the
        # machine's files or an instance metadata service.
        env.setenv("AWS_ACCESS_KEY_ID", "kb-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "kb-test-secret")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def s3_client(endpoint: str):  # boto3 generates its client type
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(params=["file", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "file":
        root = tmp_path / "blobs"
        return Place(
            "file",
            lambda: FileBlobStore(root),
            lambda: [str(p.relative_to(root)) for p in files_under(root)],
            lambda i: f"{i[:2]}/{i}",
        )
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"kb-test-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return Place(
        "s3",
        lambda: S3BlobStore(bucket, PREFIX, endpoint_url=endpoint),
        lambda: bucket_keys(endpoint, bucket),
        lambda i: f"{PREFIX}{i[:2]}/{i}",
    )


@pytest.fixture
def store(place: Place) -> BlobStore:
    return place.open()


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory every `tempfile` call uses during the test, to see what is left in it."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def test_the_adapter_implements_the_port(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)


def test_what_is_put_is_read_back_from_a_local_file_and_by_another_store_on_the_same_place(place: Place) -> None:
    store = place.open()
    store.put("0123abcd", b"%PDF-1.7 original bytes")
    store.put("empty", b"")
    store.put("big", bytes(range(256)) * 4096)

    assert store.read("0123abcd") == b"%PDF-1.7 original bytes"
    assert store.read("empty") == b""
    assert store.read("big") == bytes(range(256)) * 4096
    with store.local_file("0123abcd") as path:  # a parser opens the file itself
        assert path.read_bytes() == b"%PDF-1.7 original bytes"
    with store.local_file("empty") as path:
        assert path.read_bytes() == b""
    assert place.open().read("0123abcd") == b"%PDF-1.7 original bytes"


def test_putting_again_replaces_the_bytes_and_leaves_nothing_else_behind(place: Place, store: BlobStore) -> None:
    store.put("doc-1", b"the first version, longer than the second")
    store.put("doc-1", b"second")

    assert store.read("doc-1") == b"second"
    assert place.listing() == [place.name("doc-1")]


def test_each_id_has_its_own_bytes(place: Place, store: BlobStore) -> None:
    # Same two-character prefix (the adapter's fan-out), different ids.
    store.put("aa1", b"one")
    store.put("aa2", b"two")
    store.put("AA1", b"three")

    assert [store.read(i) for i in ("aa1", "aa2", "AA1")] == [b"one", b"two", b"three"]
    assert place.listing() == sorted(place.name(i) for i in ("aa1", "aa2", "AA1"))


def test_a_missing_id_cannot_be_read_and_deleting_it_is_a_no_op(place: Place, store: BlobStore, temp_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.read("never-stored")
    with pytest.raises(FileNotFoundError), store.local_file("never-stored"):
        pytest.fail("a missing id yielded a file")
    store.delete("never-stored")
    assert place.listing() == []
    assert list(temp_dir.iterdir()) == []  # no download left behind


def test_delete_removes_the_original_and_only_it(place: Place, store: BlobStore) -> None:
    store.put("gone", b"bytes")
    store.put("kept", b"other bytes")

    store.delete("gone")
    store.delete("gone")  # twice: still fine

    with pytest.raises(FileNotFoundError):
        store.read("gone")
    with pytest.raises(FileNotFoundError), store.local_file("gone"):
        pass
    assert store.read("kept") == b"other bytes"
    assert place.listing() == [place.name("kept")]


HOSTILE_IDS = [
    "../x", "..", ".", "a/b", "/etc/passwd", "..\\x", "a\\b", "x/../../y", "", "a" * 65, "abc\n", "a\x00b", "é",
    "a b", "~", "..%2Fx",
]  # fmt: skip


def enter_local_file(store: BlobStore, document_id: str) -> None:
    with store.local_file(document_id):
        pass


@pytest.mark.parametrize("document_id", HOSTILE_IDS, ids=ascii)
def test_an_id_that_could_name_anything_outside_the_store_is_refused(
    place: Place, store: BlobStore, tmp_path: Path, document_id: str
) -> None:
    (tmp_path / "outside").write_bytes(b"not the store's")
    for attempt in (
        lambda: store.put(document_id, b"written outside?"),
        lambda: store.read(document_id),
        lambda: enter_local_file(store, document_id),
        lambda: store.delete(document_id),
    ):
        with pytest.raises(ValueError, match="invalid document id"):
            attempt()
    assert place.listing() == []
    assert files_under(tmp_path) == [tmp_path / "outside"]
    assert (tmp_path / "outside").read_bytes() == b"not the store's"


def test_the_longest_accepted_id(store: BlobStore) -> None:
    longest = "a" * 64
    store.put(longest, b"fits")
    assert store.read(longest) == b"fits"
    with store.local_file(longest) as path:
        assert path.read_bytes() == b"fits"


def test_local_file_is_the_stores_own_file_or_a_temporary_copy_removed_after(
    place: Place, store: BlobStore, tmp_path: Path, temp_dir: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    store.put("parse-me", data)

    with store.local_file("parse-me") as path:
        assert path.read_bytes() == data
        if place.kind == "file":
            # Nothing copied: the store's own file, under its directory.
            assert path.resolve() == (tmp_path / "blobs" / place.name("parse-me")).resolve()
            assert list(temp_dir.iterdir()) == []
        else:
            assert path.parent == temp_dir  # a download into the temporary directory
    if place.kind == "file":
        assert path.exists()  # the original stays
    else:
        assert not path.exists()
        assert list(temp_dir.iterdir()) == []

    # Also when whatever used the file fails.
    with pytest.raises(RuntimeError, match="the parser failed"), store.local_file("parse-me") as path:
        raise RuntimeError("the parser failed")
    assert path.exists() == (place.kind == "file")
    assert store.read("parse-me") == data
    assert list(temp_dir.iterdir()) == []


def test_check_passes_on_a_usable_store(store: BlobStore) -> None:
    store.check()
    store.put("after-check", b"x")
    store.check()
    assert store.read("after-check") == b"x"


def test_two_stores_on_the_same_place_see_each_others_writes_and_deletes(place: Place) -> None:
    api, worker = place.open(), place.open()  # e.g. an API replica and a worker on another machine
    api.put("uploaded", b"from the API")
    assert worker.read("uploaded") == b"from the API"
    with worker.local_file("uploaded") as path:
        assert path.read_bytes() == b"from the API"
    worker.put("uploaded", b"replaced by the worker")
    assert api.read("uploaded") == b"replaced by the worker"
    api.delete("uploaded")
    with pytest.raises(FileNotFoundError):
        worker.read("uploaded")


def test_a_large_original_is_stored_whole(place: Place, store: BlobStore, request: pytest.FixtureRequest) -> None:
    data = os.urandom(20 * 1024 * 1024)  # above the S3 adapter's multipart threshold: uploaded in parts
    store.put("large", data)

    assert store.read("large") == data
    with store.local_file("large") as path:
        assert path.stat().st_size == len(data)
        assert path.read_bytes() == data
    assert place.listing() == [place.name("large")]
    if place.kind == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = store._bucket  # type: ignore[attr-defined]
        etag = s3_client(endpoint).head_object(Bucket=bucket, Key=place.name("large"))["ETag"]
        assert etag.strip('"').endswith("-3")  # a multipart object's ETag counts its parts: 8 + 8 + 4 MB


def test_threads_share_one_store_and_never_see_part_of_an_object(place: Place, store: BlobStore) -> None:
    """Puts, reads and local files from threads at once (the worker's thread and the API's). Readers of an id being
    replaced meanwhile see one whole version or another, never a mix or a truncated one."""
    size = 2 * 1024 * 1024
    versions = {bytes([n]) * size for n in range(1, 7)}
    store.put("shared", bytes([1]) * size)
    seen: list[bytes] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for _ in range(3):
            store.put("shared", bytes([n]) * size)

    def reader(use_file: bool) -> None:
        for _ in range(4):
            if use_file:
                with store.local_file("shared") as path:
                    data = path.read_bytes()
            else:
                data = store.read("shared")
            with lock:
                seen.append(data)

    def own(n: int) -> None:
        document_id = f"own-{n}"
        payload = f"document {n} ".encode() * (1000 + n)
        store.put(document_id, payload)
        assert store.read(document_id) == payload

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(writer, n) for n in range(2, 7)]
        futures += [pool.submit(reader, n % 2 == 0) for n in range(4)]
        futures += [pool.submit(own, n) for n in range(16)]
        for future in futures:
            future.result()

    assert len(seen) == 16
    assert all(data in versions for data in seen)
    assert store.read("shared") in versions
    assert len(place.listing()) == 17


# --- check(): an unusable store says which one, and why ---------------------------------------------------------


def test_check_fails_clearly_when_the_directory_cannot_be_written(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = FileBlobStore(root)
    root.rmdir()
    root.write_bytes(b"a file where the directory should be")  # root may write anywhere: a file stops it anyway
    with pytest.raises(RuntimeError, match=f"blob store directory {root} is not writable"):
        store.check()


def test_check_fails_clearly_when_the_bucket_does_not_exist(s3_endpoint: str) -> None:
    store = S3BlobStore("kb-no-such-bucket", PREFIX, endpoint_url=s3_endpoint)
    with pytest.raises(RuntimeError) as failure:
        store.check()
    message = str(failure.value)
    assert "'kb-no-such-bucket'" in message and s3_endpoint in message and "does not exist" in message


def test_check_fails_clearly_and_quickly_when_the_endpoint_is_down(s3_endpoint: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = S3BlobStore("kb-bucket", PREFIX, endpoint_url=dead)
    with pytest.raises(RuntimeError) as failure:
        store.check()
    message = str(failure.value)
    assert "unreachable" in message and "'kb-bucket'" in message and dead in message


def test_check_fails_clearly_without_credentials(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3BlobStore("kb-bucket", PREFIX, endpoint_url=s3_endpoint)
    with pytest.raises(RuntimeError, match="'kb-bucket' at .*: no AWS credentials found"):
        store.check()
