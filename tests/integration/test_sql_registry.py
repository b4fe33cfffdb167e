"""SqlRegistry on what only one backend has: a SQLite file or a PostgreSQL schema created by an older release, migrated
on open.

What every backend must do (documents, jobs with leases, conversations, keys) is the Registry contract:
tests/contract/test_registry.py, run on SQLite and PostgreSQL."""

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kb.adapters.sql_registry import SqlRegistry
from kb.models import Document
from kb.models import Feedback

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


POSTGRES = os.environ.get("KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def test_an_old_postgresql_registry_takes_long_owners_and_feedback(tmp_path: Path) -> None:
    """Before users signed in through the proxy, a conversation's owner was a key id of at most 64 characters and there
    was no feedback table: a user's `user:<name>` owner must fit once the registry is opened by this release."""
    schema = f"kb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    try:
        SqlRegistry(url).close()
        engine = create_engine(url)
        with engine.begin() as connection:  # the tables as registries before 2026-11-30 had them
            connection.execute(text("DROP TABLE feedback"))
            connection.execute(text("ALTER TABLE conversations ALTER COLUMN owner TYPE VARCHAR(64)"))
            connection.execute(text("INSERT INTO conversations (conversation_id, owner, created_at)"
                                    " VALUES ('c-old', 'k1', now())"))  # fmt: skip
        engine.dispose()
        registry = SqlRegistry(url)
        owner = "user:" + "x" * 200
        assert registry.claim_conversation("c-new", owner) and registry.conversation_owner("c-new") == owner
        assert registry.conversation_owner("c-old") == "k1"  # kept
        registry.add_feedback(Feedback("f1", owner, "up", "q", "a"))
        assert [f.principal_id for f in registry.list_feedback()] == [owner]
        registry.close()
        SqlRegistry(url).close()  # opening again migrates nothing twice
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_an_old_sqlite_registry_gets_the_feedback_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    SqlRegistry(url).close()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE feedback"))
    engine.dispose()
    registry = SqlRegistry(url)
    registry.add_feedback(Feedback("f1", "k1", "down", "q", "a", comment="wrong"))
    assert registry.get_feedback("f1").comment == "wrong"
    registry.close()
