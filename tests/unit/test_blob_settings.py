"""The blob store the settings choose (KB_BLOBS__*): the data directory, a shared volume, or an S3 bucket."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kb.container import build_blob_store
from kb.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BACKEND", "DIR", "S3_BUCKET", "S3_PREFIX", "S3_ENDPOINT_URL", "S3_REGION"):
        monkeypatch.delenv(f"KB_BLOBS__{name}", raising=False)


def test_by_default_originals_are_files_in_the_data_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.blobs.backend == "files"
    assert settings.blob_dir == (tmp_path / "data" / "originals").resolve()

    store = build_blob_store(settings)
    assert type(store).__name__ == "FileBlobStore"
    store.put("doc", b"bytes")
    assert (settings.blob_dir / "do" / "doc").read_bytes() == b"bytes"


def test_a_shared_volume_is_named_by_kb_blobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_BLOBS__DIR", str(tmp_path / "shared-volume"))
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.blob_dir == (tmp_path / "shared-volume").resolve()

    build_blob_store(settings).put("doc", b"bytes")
    assert (tmp_path / "shared-volume" / "do" / "doc").read_bytes() == b"bytes"
    assert not (tmp_path / "data" / "originals").exists()


def test_an_empty_kb_blobs_dir_means_the_data_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_BLOBS__DIR", "")
    assert Settings(data_dir=tmp_path / "data").blob_dir == (tmp_path / "data" / "originals").resolve()


def test_s3_is_chosen_with_its_bucket_prefix_endpoint_and_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KB_BLOBS__BACKEND", "s3")
    monkeypatch.setenv("KB_BLOBS__S3_BUCKET", "kb-originals")
    monkeypatch.setenv("KB_BLOBS__S3_PREFIX", "prod/originals/")
    monkeypatch.setenv("KB_BLOBS__S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("KB_BLOBS__S3_REGION", "eu-central-1")
    settings = Settings(data_dir=tmp_path / "data")
    assert (settings.blobs.s3_bucket, settings.blobs.s3_prefix) == ("kb-originals", "prod/originals/")

    store = build_blob_store(settings)  # builds without contacting the store: check() is the probe
    assert type(store).__name__ == "S3BlobStore"
    assert repr(store) == "S3BlobStore(bucket='kb-originals', prefix='prod/originals/', endpoint='http://127.0.0.1:9')"
    assert store.key("0123abcd-v1") == "prod/originals/01/0123abcd-v1"  # type: ignore[attr-defined]
    assert store._client.meta.region_name == "eu-central-1"  # type: ignore[attr-defined]
    assert not (tmp_path / "data" / "originals").exists()


def test_s3_on_aws_itself_when_no_endpoint_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_BLOBS__BACKEND", "s3")
    monkeypatch.setenv("KB_BLOBS__S3_BUCKET", "kb-originals")
    monkeypatch.setenv("KB_BLOBS__S3_REGION", "eu-west-1")
    store = build_blob_store(Settings(data_dir=tmp_path / "data"))
    assert store.endpoint == "https://s3.eu-west-1.amazonaws.com"  # type: ignore[attr-defined]
    assert store.key("ab") == "originals/ab/ab"  # type: ignore[attr-defined]


def test_s3_without_a_bucket_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_BLOBS__BACKEND", "s3")
    with pytest.raises(ValidationError, match="needs a bucket \\(KB_BLOBS__S3_BUCKET\\)"):
        Settings()


def test_an_unknown_backend_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_BLOBS__BACKEND", "gcs")
    with pytest.raises(ValidationError, match="blobs.backend"):
        Settings()


@pytest.mark.parametrize(
    ("prefix", "key"), [("originals/", "originals/ab/abc"), ("originals", "originals/ab/abc"), ("", "ab/abc")]
)
def test_the_s3_prefix_is_a_folder_of_the_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str, key: str
) -> None:
    monkeypatch.setenv("KB_BLOBS__BACKEND", "s3")
    monkeypatch.setenv("KB_BLOBS__S3_BUCKET", "kb-originals")
    monkeypatch.setenv("KB_BLOBS__S3_PREFIX", prefix)
    monkeypatch.setenv("KB_BLOBS__S3_ENDPOINT_URL", "http://127.0.0.1:9")
    assert build_blob_store(Settings(data_dir=tmp_path / "data")).key("abc") == key  # type: ignore[attr-defined]
