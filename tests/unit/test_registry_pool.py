"""The registry's PostgreSQL pool is the deployment's to size (KB_REGISTRY_POOL_SIZE, KB_REGISTRY_MAX_OVERFLOW):
every API replica and worker process holds one, and together they must fit the server's max_connections."""

from __future__ import annotations

import pytest

from kb.container import build_registry
from kb.settings import Settings
from tests.support import postgres_schema


def test_the_pool_takes_the_settings_sizes(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    with postgres_schema() as url:
        monkeypatch.setenv("KB_REGISTRY_POOL_SIZE", "2")
        monkeypatch.setenv("KB_REGISTRY_MAX_OVERFLOW", "1")
        registry = build_registry(Settings(registry_url=url, data_dir=tmp_path))
        try:
            pool = registry._engine.pool
            assert (pool.size(), pool._max_overflow) == (2, 1)
            assert registry.pending_jobs() == 0  # and it works
        finally:
            registry.close()


def test_a_pool_of_no_connections_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings(registry_pool_size=0)
