"""The registry on real databases (a SQLite file; PostgreSQL on 127.0.0.1): documents, and jobs with leases."""

import os
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kb.adapters.sql_registry import SqlRegistry
from kb.models import Document, DocumentStatus

pytestmark = pytest.mark.integration


POSTGRES = os.environ.get("KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.sqlite3'}"
        return
    # A schema of its own per test: tests never see each other's rows, and nothing is left behind.
    schema = f"kb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def registry(database_url: str):
    registry = SqlRegistry(database_url)
    yield registry
    registry.close()


def document(document_id: str, sha: str = "0" * 64) -> Document:
    return Document(document_id=document_id, filename="a.pdf", content_type="application/pdf", sha256=sha,
                    size_bytes=10, groups=["staff"], metadata={"team": "kb"})


def test_documents_round_trip_and_status_updates(registry: SqlRegistry) -> None:
    registry.add_document(document("d1", "a" * 64))
    registry.set_status("d1", DocumentStatus.READY, pages=3, chunks=9)
    stored = registry.get_document("d1")
    assert stored is not None
    assert (stored.status, stored.pages, stored.chunks, stored.groups, stored.metadata) == (
        DocumentStatus.READY, 3, 9, ["staff"], {"team": "kb"})
    assert registry.find_by_sha256("a" * 64).document_id == "d1"
    registry.set_status("d1", DocumentStatus.FAILED, error="password protected")
    assert registry.get_document("d1").error == "password protected"
    registry.delete_document("d1")
    assert registry.get_document("d1") is None and registry.list_documents() == []


def test_a_leased_job_is_not_taken_twice_until_its_lease_expires(registry: SqlRegistry) -> None:
    registry.add_document(document("d1"))
    registry.enqueue_job("d1")
    job = registry.claim_next_job("worker-a", lease_seconds=0.3)
    assert job is not None and job.document_id == "d1" and job.attempts == 1
    assert registry.claim_next_job("worker-b", lease_seconds=60) is None
    time.sleep(0.4)  # worker-a died: its lease runs out
    retaken = registry.claim_next_job("worker-b", lease_seconds=60)
    assert retaken is not None and retaken.job_id == job.job_id and retaken.attempts == 2
    assert registry.pending_jobs() == 1
    # worker-a comes back to life: its claim lost the lease, so none of its writes lands.
    assert not registry.holds_lease(job) and registry.holds_lease(retaken)
    assert not registry.extend_lease(job, 60)
    assert not registry.set_status("d1", DocumentStatus.FAILED, error="stale", fence=job)
    assert not registry.update_progress("d1", {"stage": "stale"}, fence=job)
    assert not registry.finish_job(job, error="stale")
    assert registry.get_document("d1").status is DocumentStatus.QUEUED and registry.pending_jobs() == 1
    assert registry.set_status("d1", DocumentStatus.PROCESSING, fence=retaken)
    assert registry.finish_job(retaken)
    assert not registry.finish_job(retaken)  # once
    assert registry.pending_jobs() == 0
    assert registry.claim_next_job("worker-c", lease_seconds=60) is None


def test_jobs_are_taken_oldest_first_and_survive_reopening(database_url: str) -> None:
    url = database_url
    first = SqlRegistry(url)
    for name in ("d1", "d2"):
        first.add_document(document(name))
        first.enqueue_job(name)
    first.close()
    reopened = SqlRegistry(url)
    assert [reopened.claim_next_job("w", 60).document_id for _ in range(2)] == ["d1", "d2"]
    reopened.close()


def test_two_workers_never_take_the_same_job(registry: SqlRegistry) -> None:
    for i in range(20):
        registry.add_document(document(f"d{i}", sha=f"{i:064d}"))
        registry.enqueue_job(f"d{i}")
    import threading

    taken: list[str] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while (job := registry.claim_next_job(worker, 60)) is not None:
            with lock:
                taken.append(job.document_id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(f"d{i}" for i in range(20))


def test_job_ids_are_never_reused_and_a_deleted_documents_worker_cannot_touch_the_next_upload(
    registry: SqlRegistry,
) -> None:
    """The review's lost document: a document deleted while its job ran, the next upload's job got the same id, and the
    stale worker's "document deleted" failure landed on it, leaving the new document queued forever."""
    registry.add_document(document("old"))
    registry.enqueue_job("old")
    stale = registry.claim_next_job("worker-a", lease_seconds=60)
    registry.delete_document("old")  # while worker-a is busy with it
    registry.add_document(document("new", sha="1" * 64))
    registry.enqueue_job("new")
    assert not registry.finish_job(stale, error="document deleted")
    assert not registry.set_status("new", DocumentStatus.FAILED, error="stale", fence=stale)
    fresh = registry.claim_next_job("worker-b", lease_seconds=60)
    assert fresh is not None and fresh.document_id == "new"
    assert fresh.job_id > stale.job_id  # never reused, not even the largest id after its row was deleted
    assert registry.finish_job(fresh)
    assert registry.pending_jobs() == 0


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


def test_signed_out_sessions_are_refused_until_their_expiry_then_pruned(registry: SqlRegistry) -> None:
    from datetime import UTC, datetime, timedelta

    soon, later = datetime.now(UTC) + timedelta(seconds=1), datetime.now(UTC) + timedelta(hours=12)
    registry.revoke_session("nonce-a", soon)
    registry.revoke_session("nonce-b", later)
    registry.revoke_session("nonce-b", later)  # signing out twice is one revocation
    assert registry.session_revoked("nonce-a") and registry.session_revoked("nonce-b")
    assert not registry.session_revoked("nonce-c")
    time.sleep(1.1)
    registry.revoke_session("nonce-c", later)  # each revocation prunes the ones past their expiry
    assert not registry.session_revoked("nonce-a")
    assert registry.session_revoked("nonce-b") and registry.session_revoked("nonce-c")
