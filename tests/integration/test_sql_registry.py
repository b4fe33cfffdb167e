"""SqlRegistry on what only one backend has: a SQLite file created by an older release, migrated on open.

What every backend must do (documents, jobs with leases, conversations, keys) is the Registry contract:
tests/contract/test_registry.py, run on SQLite and PostgreSQL."""

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kb.adapters.sql_registry import SqlRegistry
from kb.models import Document

pytestmark = pytest.mark.integration


def document(document_id: str, sha: str = "0" * 64) -> Document:
    return Document(document_id=document_id, filename="a.pdf", content_type="application/pdf", sha256=sha,
                    size_bytes=10, groups=["staff"], metadata={"team": "kb"})


def test_an_old_sqlite_jobs_table_is_rebuilt_so_ids_are_not_reused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    SqlRegistry(url).close()
    engine = create_engine(url)
    with engine.begin() as connection:  # the jobs table as registries before 2026-11-30 created it
        connection.execute(text("DROP TABLE jobs"))
        connection.execute(text(
            "CREATE TABLE jobs (job_id INTEGER NOT NULL, document_id VARCHAR(64) NOT NULL, state VARCHAR(16) NOT NULL,"
            " attempts INTEGER NOT NULL, lease_owner VARCHAR(128), lease_until DATETIME, error TEXT,"
            " run_after DATETIME, created_at DATETIME NOT NULL, PRIMARY KEY (job_id),"
            " FOREIGN KEY(document_id) REFERENCES documents (document_id) ON DELETE CASCADE)"))
        connection.execute(text("CREATE INDEX ix_jobs_state ON jobs (state)"))
    engine.dispose()
    old = SqlRegistry(url)
    old.add_document(document("d1"))
    old.enqueue_job("d1")
    old.close()
    registry = SqlRegistry(url)  # migrates, keeping the queued job
    first = registry.claim_next_job("w", 60)
    assert first is not None and first.document_id == "d1"
    registry.delete_document("d1")
    registry.add_document(document("d2", sha="2" * 64))
    registry.enqueue_job("d2")
    assert registry.claim_next_job("w", 60).job_id > first.job_id
    registry.close()
