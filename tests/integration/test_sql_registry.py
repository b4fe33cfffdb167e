"""The registry on a real SQLite file: documents, and ingestion jobs with leases."""

import time
from pathlib import Path

import pytest

from kb.adapters.sql_registry import SqlRegistry
from kb.models import Document, DocumentStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(tmp_path: Path):
    registry = SqlRegistry(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
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
    registry.finish_job(retaken.job_id)
    assert registry.pending_jobs() == 0
    assert registry.claim_next_job("worker-c", lease_seconds=60) is None


def test_jobs_are_taken_oldest_first_and_survive_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    first = SqlRegistry(url)
    for name in ("d1", "d2"):
        first.add_document(document(name))
        first.enqueue_job(name)
    first.close()
    reopened = SqlRegistry(url)
    assert [reopened.claim_next_job("w", 60).document_id for _ in range(2)] == ["d1", "d2"]
    reopened.close()
