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


def test_pooled_connections_find_a_silently_dropped_server_within_a_minute(tmp_path) -> None:
    """TCP keepalives and a user timeout on every connection (libpq's parameters, as the connection reports them):
    without them a peer gone without a word holds a pooled connection, and /readyz, for ~15 minutes."""
    with postgres_schema() as url:
        registry = build_registry(Settings(registry_url=url, data_dir=tmp_path))
        try:
            with registry._engine.connect() as connection:
                dsn = connection.connection.dbapi_connection.info.dsn
            for parameter in ("keepalives=1", "keepalives_idle=30", "keepalives_count=3", "tcp_user_timeout=30000"):
                assert parameter in dsn, dsn
        finally:
            registry.close()


def test_a_pool_of_no_connections_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings(registry_pool_size=0)
