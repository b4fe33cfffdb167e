"""One contract for every BlobStore adapter: the originals on the local file system (FileBlobStore)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kb.adapters.blob_store import FileBlobStore
from kb.ports import BlobStore

pytestmark = pytest.mark.contract

OpenStore = Callable[[], BlobStore]


@pytest.fixture(params=[FileBlobStore], ids=["file"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """Opens the adapter on tmp_path/blobs (again: a second store on the same place sees what the first wrote)."""
    return lambda: request.param(tmp_path / "blobs")


@pytest.fixture
def store(open_store: OpenStore) -> BlobStore:
    return open_store()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_the_adapter_implements_the_port(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)


def test_what_is_put_is_read_back_from_its_path_and_by_another_store_on_the_same_place(
    open_store: OpenStore, tmp_path: Path
) -> None:
    store = open_store()
    store.put("0123abcd", b"%PDF-1.7 original bytes")
    store.put("empty", b"")
    store.put("big", bytes(range(256)) * 4096)

    assert store.read("0123abcd") == b"%PDF-1.7 original bytes"
    assert store.read("empty") == b""
    assert store.read("big") == bytes(range(256)) * 4096
    assert store.path("0123abcd").read_bytes() == b"%PDF-1.7 original bytes"  # a parser may open the file itself
    assert store.path("0123abcd").resolve().is_relative_to((tmp_path / "blobs").resolve())
    assert open_store().read("0123abcd") == b"%PDF-1.7 original bytes"


def test_putting_again_replaces_the_bytes_and_leaves_no_temporary_file(store: BlobStore, tmp_path: Path) -> None:
    store.put("doc-1", b"the first version, longer than the second")
    store.put("doc-1", b"second")

    assert store.read("doc-1") == b"second"
    assert files_under(tmp_path / "blobs") == [store.path("doc-1")]


def test_each_id_has_its_own_bytes(store: BlobStore) -> None:
    # Same two-character prefix (the adapter's fan-out directory), different ids.
    store.put("aa1", b"one")
    store.put("aa2", b"two")
    store.put("AA1", b"three")

    assert [store.read(i) for i in ("aa1", "aa2", "AA1")] == [b"one", b"two", b"three"]
    assert len({store.path(i) for i in ("aa1", "aa2", "AA1")}) == 3


def test_a_missing_id_cannot_be_read_and_deleting_it_is_a_no_op(store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.read("never-stored")
    store.delete("never-stored")
    assert not store.path("never-stored").exists()


def test_delete_removes_the_original_and_only_it(store: BlobStore) -> None:
    store.put("gone", b"bytes")
    store.put("kept", b"other bytes")

    store.delete("gone")
    store.delete("gone")  # twice: still fine

    with pytest.raises(FileNotFoundError):
        store.read("gone")
    assert not store.path("gone").exists()
    assert store.read("kept") == b"other bytes"


HOSTILE_IDS = [
    "../x", "..", ".", "a/b", "/etc/passwd", "..\\x", "a\\b", "x/../../y", "", "a" * 65, "abc\n", "a\x00b", "é",
    "a b", "~", "..%2Fx",
]  # fmt: skip


@pytest.mark.parametrize("document_id", HOSTILE_IDS, ids=ascii)
def test_an_id_that_could_name_anything_outside_the_store_is_refused(
    store: BlobStore, tmp_path: Path, document_id: str
) -> None:
    (tmp_path / "outside").write_bytes(b"not the store's")
    for attempt in (
        lambda: store.put(document_id, b"written outside?"),
        lambda: store.read(document_id),
        lambda: store.path(document_id),
        lambda: store.delete(document_id),
    ):
        with pytest.raises(ValueError, match="invalid document id"):
            attempt()
    assert files_under(tmp_path) == [tmp_path / "outside"]
    assert (tmp_path / "outside").read_bytes() == b"not the store's"


def test_the_longest_accepted_id(store: BlobStore) -> None:
    longest = "a" * 64
    store.put(longest, b"fits")
    assert store.read(longest) == b"fits"
