"""The collection kb creates on a Qdrant server carries the cluster layout of the settings (KB_INDEX__SHARDS,
REPLICATION_FACTOR, WRITE_CONSISTENCY_FACTOR) and storage (KB_INDEX__STORAGE); replicas and workers racing to create
it all end up using it."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import Headers
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from kb.container import build_index
from kb.settings import Settings

DIM = 8


class ServerLike:
    """A real qdrant-client (local mode underneath) that presents itself as a server client, recording the
    create_collection calls a server would receive; `conflict`: another process created the collection first."""

    def __init__(self, conflict: bool = False) -> None:
        self._real = QdrantClient(location=":memory:")
        self.init_options = {"url": "http://qdrant:6333"}
        self.created: list[dict[str, Any]] = []
        self._conflict = conflict

    def create_collection(self, name: str, **kwargs: Any) -> bool:
        self.created.append(dict(kwargs))
        layout = {k: kwargs.pop(k) for k in ("shard_number", "replication_factor", "write_consistency_factor")
                  if k in kwargs}  # fmt: skip
        assert layout  # a server receives the layout
        self._real.create_collection(name, **kwargs)
        if self._conflict:
            raise UnexpectedResponse(409, "Conflict", b'{"status":{"error":"already exists"}}', Headers())
        return True

    def create_payload_index(self, *args: Any, **kwargs: Any) -> None:
        pass  # local mode has none

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def open_index(monkeypatch: pytest.MonkeyPatch, client: ServerLike, **index: Any):
    monkeypatch.setattr("kb.adapters.qdrant_server_index.QdrantClient", lambda *a, **k: client)
    settings = Settings(index={"backend": "qdrant", "url": "http://qdrant:6333", **index})
    return build_index(settings, DIM)


def test_the_collection_is_created_with_the_settings_cluster_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    client = ServerLike()
    open_index(monkeypatch, client, shards=6, replication_factor=2, write_consistency_factor=1)
    [created] = client.created
    assert (created["shard_number"], created["replication_factor"], created["write_consistency_factor"]) == (6, 2, 1)


def test_a_single_server_gets_one_shard_and_one_copy_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    client = ServerLike()
    open_index(monkeypatch, client)
    [created] = client.created
    assert (created["shard_number"], created["replication_factor"], created["write_consistency_factor"]) == (1, 1, 1)


def test_losing_the_race_to_create_it_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    client = ServerLike(conflict=True)
    index = open_index(monkeypatch, client, shards=3)
    assert index.count() == 0  # usable: the collection the other process made


def test_local_mode_ignores_the_layout(tmp_path) -> None:
    settings = Settings(index={"backend": "qdrant", "url": f"path:{tmp_path}", "shards": 6, "replication_factor": 2})
    index = build_index(settings, DIM)
    try:
        assert index.count() == 0
    finally:
        index.close()


@pytest.mark.parametrize("field", ["shards", "replication_factor", "write_consistency_factor"])
def test_a_layout_below_one_is_refused(field: str) -> None:
    with pytest.raises(ValueError):
        Settings(index={field: 0})


def test_disk_storage_keeps_an_int8_copy_in_ram_and_the_rest_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    client = ServerLike()
    open_index(monkeypatch, client, storage="disk")
    [created] = client.created
    dense, sentences = created["vectors_config"]["dense"], created["vectors_config"]["sentences"]
    assert dense.on_disk is True and dense.hnsw_config.on_disk is False  # originals on disk, the graph in RAM
    scalar = dense.quantization_config.scalar
    assert (scalar.type.value, scalar.always_ram) == ("int8", True)
    assert sentences.on_disk is True and sentences.datatype.value == "float16"
    assert created["sparse_vectors_config"]["bm25"].index.on_disk is True
    assert created["on_disk_payload"] is True


def test_memory_storage_is_qdrants_default(monkeypatch: pytest.MonkeyPatch) -> None:
    client = ServerLike()
    open_index(monkeypatch, client)
    [created] = client.created
    dense, sentences = created["vectors_config"]["dense"], created["vectors_config"]["sentences"]
    assert dense.on_disk is None and dense.quantization_config is None and sentences.on_disk is None
    assert created["sparse_vectors_config"]["bm25"].index is None and "on_disk_payload" not in created


def test_an_unknown_storage_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings(index={"storage": "ssd"})
