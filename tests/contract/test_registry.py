"""One contract for the Registry port, run against SqlRegistry on SQLite (a file) and on PostgreSQL (127.0.0.1), per
concern: documents (DocumentStore), the job queue with its leases (JobQueue), conversations (ConversationStore, also
held against the unit tests' in-memory fake), API keys with signed-out sessions (KeyStore) and feedback on answers
(FeedbackStore) and the ids of events already handled (EventLog, also held against the unit tests' fake)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from kb.adapters.sql_registry import SqlRegistry
from kb.models import ApiKey, Document, DocumentStatus
from kb.ports import (
    ConversationStore,
    DocumentStore,
    EventLog,
    Feedback,
    FeedbackStore,
    JobQueue,
    KeyStore,
    Registry,
)
from tests.fakes import FakeConversations, FakeEventLog
from tests.support import postgres_schema

pytestmark = pytest.mark.contract

OpenRegistry = Callable[[], Registry]


@contextmanager
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty registry database on `backend`."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.sqlite3'}"
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def open_registry(database_url: str) -> Iterator[OpenRegistry]:
    """Opens the registry on the test's database (again after close: what was written is still there)."""
    opened: list[Registry] = []

    def open_() -> Registry:
        opened.append(SqlRegistry(database_url))
        return opened[-1]

    yield open_
    for registry in opened:
        registry.close()  # disposing twice is harmless


@pytest.fixture
def registry(open_registry: OpenRegistry) -> Registry:
    return open_registry()


def document(document_id: str, sha: str = "0" * 64, **fields: object) -> Document:
    values: dict = {"filename": "a.pdf", "content_type": "application/pdf", "sha256": sha, "size_bytes": 10,
                    "groups": ["staff"], "metadata": {"team": "kb"}, **fields}  # fmt: skip
    return Document(document_id=document_id, **values)


def without_times(document: Document) -> Document:
    # SQLite hands documents' timestamps back naive (UTC), PostgreSQL aware, and the adapter passes them on as they
    # come: the API shows them so, so the contract leaves them out of comparisons.
    return dataclasses.replace(document, created_at=None, updated_at=None)


def test_the_adapter_implements_every_port(registry: Registry) -> None:
    for port in (Registry, DocumentStore, JobQueue, ConversationStore, KeyStore, FeedbackStore, EventLog):
        assert isinstance(registry, port), port.__name__


# ---------------------------------------------------------------------------------------------------------------
# Documents


def test_documents_round_trip_and_status_updates(registry: Registry) -> None:
    added = registry.add_document(document("d1", "a" * 64))
    assert added.created_at is not None and added.status is DocumentStatus.QUEUED and added.version == 1
    registry.set_status("d1", DocumentStatus.READY, pages=3, chunks=9)
    stored = registry.get_document("d1")
    assert stored is not None
    expected = (DocumentStatus.READY, 3, 9, ["staff"], {"team": "kb"})
    assert (stored.status, stored.pages, stored.chunks, stored.groups, stored.metadata) == expected
    assert registry.find_by_sha256("a" * 64).document_id == "d1"
    registry.set_status("d1", DocumentStatus.FAILED, error="password protected")
    failed = registry.get_document("d1")
    assert failed.error == "password protected"
    assert (failed.pages, failed.chunks) == (3, 9)  # not given: kept
    assert registry.set_status("d1", DocumentStatus.READY) and registry.get_document("d1").error is None
    registry.delete_document("d1")
    assert registry.get_document("d1") is None and registry.list_documents() == []
    registry.delete_document("d1")  # gone already: nothing to do
    assert not registry.set_status("d1", DocumentStatus.READY)  # no row: nothing written


def test_documents_are_listed_oldest_first_and_an_id_is_taken_once(registry: Registry) -> None:
    for name in ("d1", "d2", "d3"):
        registry.add_document(document(name, sha=name.ljust(64, "0")))
    assert [d.document_id for d in registry.list_documents()] == ["d1", "d2", "d3"]
    with pytest.raises(IntegrityError):
        registry.add_document(document("d2"), enqueue=True)
    assert registry.pending_jobs() == 0  # the failed add wrote no job either
    assert registry.get_document("d2").sha256 == "d2".ljust(64, "0")


def test_find_by_bytes_or_name_gives_the_oldest_shared_with_exactly_those_groups(registry: Registry) -> None:
    sha = "b" * 64
    registry.add_document(document("staff-copy", sha, groups=["staff"], metadata={"collection": "hr"}))
    registry.add_document(document("eng-copy", sha, groups=["eng", "ops"], metadata={"collection": "hr"}))
    registry.add_document(document("later-staff", sha, groups=["staff"]))

    assert registry.find_by_sha256(sha).document_id == "staff-copy"  # no groups: any, the oldest
    assert registry.find_by_sha256(sha, ["staff"]).document_id == "staff-copy"
    assert registry.find_by_sha256(sha, ["ops", "eng"]).document_id == "eng-copy"  # as a set: order is no matter
    assert registry.find_by_sha256(sha, ["eng"]) is None  # a subset is another audience
    assert registry.find_by_sha256(sha, ["staff", "eng", "ops"]) is None
    assert registry.find_by_sha256("c" * 64) is None

    assert registry.find_by_name("a.pdf", "hr").document_id == "staff-copy"
    assert registry.find_by_name("a.pdf", "hr", ["eng", "ops"]).document_id == "eng-copy"
    assert registry.find_by_name("a.pdf").document_id == "later-staff"  # the default collection is ""
    assert registry.find_by_name("a.pdf", "finance") is None and registry.find_by_name("b.pdf", "hr") is None


def test_a_new_version_is_queued_while_the_live_one_stays(registry: Registry) -> None:
    registry.add_document(document("d1", "1" * 64), enqueue=True)
    job = registry.claim_next_job("w", 60)
    assert registry.set_live_version("d1", 1, fence=job)
    assert registry.update_progress("d1", {"stage": "done", "chunks_total": 9}, fence=job)
    assert registry.set_status("d1", DocumentStatus.FAILED, error="late", pages=2, chunks=9, fence=job)
    assert registry.finish_job(job)

    second = registry.new_version("d1", sha256="2" * 64, size_bytes=20, content_type="text/plain", enqueue=True)

    expected = (2, 1, DocumentStatus.QUEUED, None, {})
    assert (second.version, second.live_version, second.status, second.error, second.progress) == expected
    assert (second.sha256, second.size_bytes, second.content_type) == ("2" * 64, 20, "text/plain")
    assert without_times(registry.get_document("d1")) == without_times(second)
    assert registry.pending_jobs() == 1 and registry.claim_next_job("w", 60).document_id == "d1"
    third = registry.new_version("d1", sha256="3" * 64, size_bytes=30, content_type="text/plain")
    assert third.version == 3 and registry.pending_jobs() == 1  # without enqueue: no job
    with pytest.raises(LookupError):
        registry.new_version("nope", sha256="4" * 64, size_bytes=1, content_type="text/plain")


def test_progress_and_live_version_without_a_fence_always_land(registry: Registry) -> None:
    registry.add_document(document("d1"))
    assert registry.update_progress("d1", {"stage": "parsing", "pages_parsed": 3})
    assert registry.set_live_version("d1", 1)
    stored = registry.get_document("d1")
    assert stored.progress == {"stage": "parsing", "pages_parsed": 3} and stored.live_version == 1
    assert not registry.update_progress("missing", {"stage": "x"}) and not registry.set_live_version("missing", 1)


# ---------------------------------------------------------------------------------------------------------------
# Job queue


def test_a_leased_job_is_not_taken_twice_until_its_lease_expires(registry: Registry) -> None:
    registry.add_document(document("d1"))
    registry.enqueue_job("d1")
    job = registry.claim_next_job("worker-a", lease_seconds=0.3)
    assert job is not None and job.document_id == "d1" and job.attempts == 1
    assert registry.claim_next_job("worker-b", lease_seconds=60) is None
    time.sleep(0.4)  # worker-a died: its lease runs out
    retaken = registry.claim_next_job("worker-b", lease_seconds=60)
    assert retaken is not None and retaken.job_id == job.job_id and retaken.attempts == 2
    assert retaken.lease != job.lease  # a token of each claim
    assert registry.pending_jobs() == 1
    # worker-a comes back to life: its claim lost the lease, so none of its writes lands.
    assert not registry.holds_lease(job) and registry.holds_lease(retaken)
    assert not registry.extend_lease(job, 60)
    assert not registry.set_status("d1", DocumentStatus.FAILED, error="stale", fence=job)
    assert not registry.update_progress("d1", {"stage": "stale"}, fence=job)
    assert not registry.set_live_version("d1", 1, fence=job)
    assert not registry.retry_job(job, error="stale", delay_s=0)
    assert not registry.finish_job(job, error="stale")
    assert registry.get_document("d1").status is DocumentStatus.QUEUED and registry.pending_jobs() == 1
    assert registry.get_document("d1").progress == {} and registry.get_document("d1").live_version is None
    assert registry.set_status("d1", DocumentStatus.PROCESSING, fence=retaken)
    assert registry.finish_job(retaken)
    assert not registry.finish_job(retaken)  # once
    assert not registry.holds_lease(retaken)
    assert registry.pending_jobs() == 0
    assert registry.claim_next_job("worker-c", lease_seconds=60) is None


def test_an_extended_lease_keeps_the_job(registry: Registry) -> None:
    registry.add_document(document("d1"), enqueue=True)
    job = registry.claim_next_job("worker-a", lease_seconds=0.3)
    assert registry.extend_lease(job, 60)
    time.sleep(0.4)  # past the first lease: the extension holds
    assert registry.claim_next_job("worker-b", lease_seconds=60) is None
    assert registry.holds_lease(job) and registry.update_progress("d1", {"stage": "embedding"}, fence=job)


def test_a_retried_job_waits_out_its_delay_then_is_taken_again(registry: Registry) -> None:
    registry.add_document(document("d1"), enqueue=True)
    job = registry.claim_next_job("worker-a", lease_seconds=60)
    assert registry.retry_job(job, error="qdrant unreachable", delay_s=0.5)
    assert not registry.holds_lease(job) and not registry.finish_job(job)  # it gave its claim back
    assert registry.pending_jobs() == 1
    assert registry.claim_next_job("worker-b", lease_seconds=60) is None  # not before its delay
    time.sleep(0.6)
    again = registry.claim_next_job("worker-b", lease_seconds=60)
    assert again is not None and again.job_id == job.job_id and again.attempts == 2
    assert registry.finish_job(again, error="failed after 2 attempts")  # failed: done with, not pending
    assert registry.pending_jobs() == 0 and registry.claim_next_job("worker-c", 60) is None


def test_a_claim_given_back_unstarted_is_taken_at_once_without_counting_an_attempt(registry: Registry) -> None:
    registry.add_document(document("d1"), enqueue=True)
    registry.add_document(document("d2"), enqueue=True)
    stopping = registry.claim_next_job("stopping-worker", lease_seconds=600)
    assert registry.give_back_job(stopping)
    assert not registry.give_back_job(stopping) and not registry.holds_lease(stopping)  # once; its claim is gone
    assert not registry.finish_job(stopping)
    again = registry.claim_next_job("other-worker", lease_seconds=60)
    assert (again.document_id, again.attempts) == ("d1", 1)  # first in line still, no attempt used up
    assert registry.pending_jobs() == 2
    # An outage's give-back waits out its delay (the store is down), still uncounted.
    assert registry.give_back_job(again, delay_s=0.5)
    assert registry.claim_next_job("other-worker", lease_seconds=60).document_id == "d2"
    assert registry.claim_next_job("other-worker", lease_seconds=60) is None
    time.sleep(0.6)
    later = registry.claim_next_job("other-worker", lease_seconds=60)
    assert (later.document_id, later.attempts) == ("d1", 1)


def test_release_leases_requeues_every_running_job_at_start(registry: Registry) -> None:
    for name in ("d1", "d2", "d3"):
        registry.add_document(document(name), enqueue=True)
    claims = [registry.claim_next_job("crashed", lease_seconds=600) for _ in range(2)]

    assert registry.release_leases() == 2
    assert registry.release_leases() == 0
    assert not any(registry.holds_lease(claim) for claim in claims)
    assert registry.pending_jobs() == 3
    taken = [registry.claim_next_job("restarted", 60) for _ in range(3)]
    assert [(j.document_id, j.attempts) for j in taken] == [("d1", 2), ("d2", 2), ("d3", 1)]


def test_jobs_are_taken_oldest_first_and_survive_reopening(open_registry: OpenRegistry) -> None:
    first = open_registry()
    for name in ("d1", "d2"):
        first.add_document(document(name))
        first.enqueue_job(name)
    first.close()
    reopened = open_registry()
    assert [reopened.claim_next_job("w", 60).document_id for _ in range(2)] == ["d1", "d2"]


def test_a_document_added_with_its_job_is_queued_in_one_step(registry: Registry) -> None:
    registry.add_document(document("d1"), enqueue=True)
    assert registry.pending_jobs() == 1
    job = registry.claim_next_job("w", 60)
    assert job.document_id == "d1" and registry.holds_lease(job)


def test_two_workers_never_take_the_same_job(registry: Registry) -> None:
    for i in range(20):
        registry.add_document(document(f"d{i}", sha=f"{i:064d}"))
        registry.enqueue_job(f"d{i}")

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
    registry: Registry,
) -> None:
    """The review's lost document: a document deleted while its job ran, the next upload's job got the same id, and the
    stale worker's "document deleted" failure landed on it, leaving the new document queued forever."""
    registry.add_document(document("old"))
    registry.enqueue_job("old")
    stale = registry.claim_next_job("worker-a", lease_seconds=60)
    registry.delete_document("old")  # while worker-a is busy with it
    assert not registry.holds_lease(stale)
    registry.add_document(document("new", sha="1" * 64))
    registry.enqueue_job("new")
    assert not registry.finish_job(stale, error="document deleted")
    assert not registry.set_status("new", DocumentStatus.FAILED, error="stale", fence=stale)
    fresh = registry.claim_next_job("worker-b", lease_seconds=60)
    assert fresh is not None and fresh.document_id == "new"
    assert fresh.job_id > stale.job_id  # never reused, not even the largest id after its row was deleted
    assert registry.finish_job(fresh)
    assert registry.pending_jobs() == 0


# ---------------------------------------------------------------------------------------------------------------
# Conversations: the real registry on both databases, and the unit tests' fake held to the same contract.


@pytest.fixture(params=["sqlite", "postgresql", "fake"])
def conversations(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConversationStore]:
    if request.param == "fake":
        yield FakeConversations()
        return
    with database(request.param, tmp_path) as url:
        registry = SqlRegistry(url)
        yield registry
        registry.close()


def test_a_conversation_gives_its_last_messages_oldest_first(conversations: ConversationStore) -> None:
    sources = [{"document_id": "d1", "chunk_id": "c1", "filename": "a.pdf", "page": 2}]
    conversations.add_message("c-1", "user", "When do backups run?")
    conversations.add_message("c-1", "assistant", "Nightly at 02:00 [1].", sources)
    conversations.add_message("c-2", "user", "Another conversation")
    for i in range(3):
        conversations.add_message("c-1", "user", f"follow-up {i}")

    history = conversations.conversation("c-1")
    assert [m["content"] for m in history] == [
        "When do backups run?", "Nightly at 02:00 [1].", "follow-up 0", "follow-up 1", "follow-up 2"]  # fmt: skip
    assert history[0] == {"role": "user", "content": "When do backups run?", "sources": []}
    assert history[1] == {"role": "assistant", "content": "Nightly at 02:00 [1].", "sources": sources}
    assert [m["content"] for m in conversations.conversation("c-1", limit=2)] == ["follow-up 1", "follow-up 2"]
    assert conversations.conversation("c-2") == [{"role": "user", "content": "Another conversation", "sources": []}]
    assert conversations.conversation("unknown") == []


def test_a_follow_up_reads_the_sources_of_the_newest_answer_only(conversations: ConversationStore) -> None:
    first = [{"document_id": "d1", "chunk_id": "c1", "filename": "a.pdf", "page": 2}]
    second = [{"document_id": "d2", "chunk_id": "c7", "filename": "b.pdf", "page": 9}]
    conversations.add_message("c-1", "user", "When do backups run?")
    conversations.add_message("c-1", "assistant", "Nightly [1].", first)
    conversations.add_message("c-1", "user", "Where are they kept?")
    conversations.add_message("c-1", "assistant", "In the vault [1].", second)
    conversations.add_message("c-1", "user", "For how long?")  # asked, its answer not yet written

    last = conversations.conversation("c-1", sources="last")
    assert [m["content"] for m in last] == [m["content"] for m in conversations.conversation("c-1")]
    assert [m["sources"] for m in last] == [[], [], [], second, []]
    assert [m["sources"] for m in conversations.conversation("c-1", limit=2, sources="last")] == [second, []]
    assert conversations.conversation("c-2", sources="last") == []
    conversations.add_message("c-3", "user", "A question without an answer")
    assert conversations.conversation("c-3", sources="last") == [
        {"role": "user", "content": "A question without an answer", "sources": []}
    ]


def test_a_conversation_belongs_to_whoever_claimed_it_first(conversations: ConversationStore) -> None:
    assert conversations.conversation_owner("c-1") is None
    assert conversations.claim_conversation("c-1", "key-a")
    assert conversations.claim_conversation("c-1", "key-a")  # its owner continues it
    assert not conversations.claim_conversation("c-1", "key-b")
    assert conversations.conversation_owner("c-1") == "key-a"
    assert conversations.claim_conversation("c-2", "key-b") and conversations.conversation_owner("c-2") == "key-b"


def test_conversations_last_continued_before_the_moment_are_forgotten_with_their_messages(
    conversations: ConversationStore,
) -> None:
    assert conversations.forget_conversations(datetime.now(UTC)) == 0
    for conversation_id, owner in (("old", "key-a"), ("continued", "key-a"), ("unanswered", "key-b")):
        assert conversations.claim_conversation(conversation_id, owner)
    conversations.add_message("old", "user", "When do backups run?")
    conversations.add_message("old", "assistant", "Nightly [1].", [{"document_id": "d1", "chunk_id": "c1"}])
    conversations.add_message("continued", "user", "Where are the backups kept?")
    conversations.add_message("ownerless", "user", "Asked with authentication off")  # messages, no claim
    time.sleep(0.05)
    # The moment in another offset than UTC: the same instant, whatever the database keeps.
    moment = datetime.now(UTC).astimezone(timezone(timedelta(hours=8)))
    time.sleep(0.05)
    conversations.add_message("continued", "user", "And for how long?")  # continued since: kept whole
    conversations.claim_conversation("new", "key-b")

    assert conversations.forget_conversations(moment) == 3  # old, unanswered, ownerless
    assert conversations.conversation("old") == [] and conversations.conversation("ownerless") == []
    assert conversations.conversation_owner("old") is None and conversations.conversation_owner("unanswered") is None
    assert [m["content"] for m in conversations.conversation("continued")] == [
        "Where are the backups kept?", "And for how long?"
    ]  # fmt: skip
    assert conversations.conversation_owner("continued") == "key-a" and conversations.conversation_owner("new")
    assert [c["conversation_id"] for c in conversations.list_conversations("key-a")] == ["continued"]
    assert conversations.forget_conversations(moment) == 0
    assert conversations.claim_conversation("old", "key-b")  # forgotten: the id is free again


def test_forgetting_more_conversations_than_one_batch_takes_them_all(
    conversations: ConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kb.adapters.sql_registry._FORGET_BATCH", 2)  # the SQL registry's transactions
    for i in range(5):
        conversations.claim_conversation(f"c-{i}", "key-a")
        conversations.add_message(f"c-{i}", "user", f"question {i}")
    conversations.claim_conversation("c-5", "key-a")  # never answered
    assert conversations.forget_conversations(datetime.now(UTC) + timedelta(seconds=1)) == 6
    assert conversations.list_conversations("key-a") == [] and conversations.conversation_owner("c-5") is None


def test_a_turn_is_kept_only_while_the_conversation_is_its_owners(conversations: ConversationStore) -> None:
    assert conversations.claim_conversation("c-1", "key-a")
    assert conversations.add_message("c-1", "user", "When do backups run?", owner="key-a")
    assert not conversations.add_message("c-1", "user", "Written by another key", owner="key-b")
    assert conversations.delete_conversation("c-1", "key-a")  # deleted while an answer was being written
    assert not conversations.add_message("c-1", "assistant", "Nightly [1].", [{"chunk_id": "c"}], owner="key-a")
    assert conversations.conversation("c-1") == [] and conversations.conversation_owner("c-1") is None
    assert not conversations.add_message("never-claimed", "user", "?", owner="key-a")
    assert conversations.add_message("slack-T1-C1-1.0", "user", "A Slack thread's question")  # no owner: as is
    assert [m["content"] for m in conversations.conversation("slack-T1-C1-1.0")] == ["A Slack thread's question"]


def test_messages_nobody_owns_are_nobody_to_claim(conversations: ConversationStore) -> None:
    """A Slack thread's conversation has messages and no owner: a key that guesses its id must not take it (and read
    the thread's answers through GET /v1/conversations/{id})."""
    conversations.add_message("slack-T1-C1-1.0", "user", "What is the Q3 margin?")
    conversations.add_message("slack-T1-C1-1.0", "assistant", "31 % [1].", [{"chunk_id": "c"}])
    assert not conversations.claim_conversation("slack-T1-C1-1.0", "key-a")
    assert conversations.conversation_owner("slack-T1-C1-1.0") is None
    assert conversations.claim_conversation("fresh", "key-a")  # an unused id is claimed as before


def test_of_many_claims_at_once_exactly_one_wins(conversations: ConversationStore) -> None:
    results: dict[str, bool] = {}
    barrier = threading.Barrier(6)

    def claim(owner: str) -> None:
        barrier.wait()
        results[owner] = conversations.claim_conversation("contested", owner)

    threads = [threading.Thread(target=claim, args=(f"key-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [owner for owner, won in results.items() if won]
    assert len(results) == 6 and len(winners) == 1
    assert conversations.conversation_owner("contested") == winners[0]


def test_an_owner_lists_its_conversations_most_recently_continued_first(conversations: ConversationStore) -> None:
    long_question = "How do I " + "really " * 20 + "restore a backup?"
    for conversation_id, owner in (("c-old", "key-a"), ("c-new", "key-a"), ("c-empty", "key-a"), ("c-b", "user:bob")):
        assert conversations.claim_conversation(conversation_id, owner)
    conversations.add_message("c-old", "user", "  When do\nbackups run?  ")
    conversations.add_message("c-old", "assistant", "Nightly [1].", [{"document_id": "d1"}])
    conversations.add_message("c-new", "user", long_question)
    conversations.add_message("c-new", "assistant", "From the console [1].")
    conversations.add_message("c-b", "user", "Bob's question")
    time.sleep(0.01)
    conversations.add_message("c-old", "user", "And on Sundays?")  # continued last: listed first

    listed = conversations.list_conversations("key-a")
    assert [c["conversation_id"] for c in listed] == ["c-old", "c-new"]  # never one without messages, nor Bob's
    old, new = listed
    assert (old["title"], old["turns"]) == ("When do backups run?", 2)
    assert 70 < len(new["title"]) <= 80 and new["title"].endswith("…") and long_question.startswith(new["title"][:-1])
    assert new["turns"] == 1
    assert old["updated_at"].tzinfo is not None and old["updated_at"] > new["updated_at"]
    assert abs(old["updated_at"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert [c["conversation_id"] for c in conversations.list_conversations("key-a", limit=1)] == ["c-old"]
    assert [c["conversation_id"] for c in conversations.list_conversations("user:bob")] == ["c-b"]
    assert conversations.list_conversations("nobody") == []


def test_only_its_owner_deletes_a_conversation(conversations: ConversationStore) -> None:
    conversations.claim_conversation("c-1", "key-a")
    conversations.add_message("c-1", "user", "Question")
    conversations.add_message("c-1", "assistant", "Answer", [{"document_id": "d1"}])
    assert not conversations.delete_conversation("c-1", "key-b")
    assert len(conversations.conversation("c-1")) == 2 and conversations.conversation_owner("c-1") == "key-a"
    assert conversations.delete_conversation("c-1", "key-a")
    assert conversations.conversation("c-1") == [] and conversations.conversation_owner("c-1") is None
    assert conversations.list_conversations("key-a") == []
    assert not conversations.delete_conversation("c-1", "key-a")  # gone already
    assert not conversations.delete_conversation("never-was", "key-a")


def test_a_proxy_users_long_id_owns_a_conversation(conversations: ConversationStore) -> None:
    owner = "user:" + "a.very.long.name" * 12  # ~200 characters: wider than a key's id
    assert conversations.claim_conversation("c-1", owner)
    conversations.add_message("c-1", "user", "Question")
    assert conversations.conversation_owner("c-1") == owner
    assert [c["conversation_id"] for c in conversations.list_conversations(owner)] == ["c-1"]


# ---------------------------------------------------------------------------------------------------------------
# Feedback on answers


def feedback(feedback_id: str, **fields: object) -> Feedback:
    values: dict = {"principal_id": "key-a", "rating": "down", "question": "When do backups run?",
                    "answer": "Nightly [1].", "groups": ["eng"], **fields}  # fmt: skip
    return Feedback(feedback_id=feedback_id, **values)


def test_feedback_is_kept_with_its_question_answer_and_sources(registry: Registry) -> None:
    citations = [{"n": 1, "document_id": "d1", "filename": "运维手册.pdf", "page": 2, "snippet": "每晚 02:00"}]
    before = datetime.now(UTC) - timedelta(seconds=1)
    stored = registry.add_feedback(feedback(
        "f1", comment="Wrong: backups moved to 03:00.", citations=citations, conversation_id="c-1", source="web",
        principal_id="user:alice", groups=["eng", "everyone"],
    ))  # fmt: skip
    assert stored.created_at is not None and stored.created_at.tzinfo is not None
    assert before <= stored.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert registry.get_feedback("f1") == stored
    expected = ("user:alice", "down", "When do backups run?", "Nightly [1].", "Wrong: backups moved to 03:00.",
                citations, "c-1", "web", ["eng", "everyone"])  # fmt: skip
    got = (stored.principal_id, stored.rating, stored.question, stored.answer, stored.comment, stored.citations,
           stored.conversation_id, stored.source, stored.groups)  # fmt: skip
    assert got == expected
    plain = registry.add_feedback(feedback("f2", rating="up"))
    assert (plain.comment, plain.citations, plain.conversation_id, plain.source) == (None, [], None, "api")
    with pytest.raises(IntegrityError):
        registry.add_feedback(feedback("f1"))  # an id is taken once
    assert registry.get_feedback("missing") is None
    assert registry.delete_feedback("f1") and registry.get_feedback("f1") is None
    assert not registry.delete_feedback("f1")
    assert [f.feedback_id for f in registry.list_feedback()] == ["f2"]


def test_feedback_is_listed_newest_first_by_rating_and_page(registry: Registry) -> None:
    start = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    for i in range(6):
        registry.add_feedback(feedback(f"f{i}", rating="down" if i % 2 else "up", created_at=start + timedelta(hours=i)))
    assert [f.feedback_id for f in registry.list_feedback()] == ["f5", "f4", "f3", "f2", "f1", "f0"]
    assert [f.feedback_id for f in registry.list_feedback(rating="down")] == ["f5", "f3", "f1"]
    assert [f.feedback_id for f in registry.list_feedback(rating="up", limit=2)] == ["f4", "f2"]
    page = registry.list_feedback(limit=2)
    assert [f.feedback_id for f in page] == ["f5", "f4"]
    after = registry.list_feedback(limit=2, before=page[-1].created_at)
    assert [f.feedback_id for f in after] == ["f3", "f2"]
    # A moment in another time zone means the same instant.
    beijing = (start + timedelta(hours=2)).astimezone(timezone(timedelta(hours=8)))
    assert [f.feedback_id for f in registry.list_feedback(before=beijing)] == ["f1", "f0"]
    assert registry.list_feedback(rating="down", before=start) == []


def test_feedback_within_groups_fills_its_limit_past_other_groups_rows(registry: Registry) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    for i in range(3):  # the oldest: the only ones an eng administrator may read
        registry.add_feedback(feedback(f"eng-{i}", created_at=start + timedelta(seconds=i)))
    registry.add_feedback(feedback("eng-and-hr", groups=["eng", "hr"], created_at=start + timedelta(seconds=5)))
    registry.add_feedback(feedback("everyone", groups=["*"], created_at=start + timedelta(seconds=6)))
    for i in range(130):  # newer than all of them: more than a page of rows to read past
        registry.add_feedback(feedback(f"hr-{i:03d}", groups=["hr"], created_at=start + timedelta(minutes=1, seconds=i)))

    eng = registry.list_feedback(limit=3, within_groups=["eng"])
    assert [f.feedback_id for f in eng] == ["eng-2", "eng-1", "eng-0"]
    both = registry.list_feedback(limit=2, within_groups=["eng", "hr"])
    assert [f.feedback_id for f in both] == ["hr-129", "hr-128"]
    assert len(registry.list_feedback(limit=500, within_groups=["eng", "hr"])) == 134  # not "*": that is everyone's
    assert len(registry.list_feedback(limit=500)) == 135
    assert registry.list_feedback(within_groups=["sales"]) == []


# ---------------------------------------------------------------------------------------------------------------
# API keys and signed-out sessions


def api_key(key_id: str, **fields: object) -> ApiKey:
    values: dict = {"name": f"{key_id} key", "prefix": f"kb_{key_id}"[:10], "scopes": ["ask", "search"],
                    "groups": ["eng"], **fields}  # fmt: skip
    return ApiKey(key_id=key_id, **values)


def test_keys_are_found_by_digest_or_id_never_by_secret(registry: Registry) -> None:
    later = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    stored = registry.add_api_key(api_key("k1", expires_at=later), "digest-1")
    registry.add_api_key(api_key("k2", scopes=["admin"], groups=[]), "digest-2")

    assert stored.created_at is not None and stored.created_at.tzinfo is not None
    assert (stored.revoked_at, stored.last_used_at, stored.expires_at) == (None, None, later)
    by_digest = registry.api_key_by_digest("digest-1")
    assert by_digest == registry.api_key_by_id("k1") == stored
    expected = ("k1 key", "kb_k1", ["ask", "search"], ["eng"])
    assert (by_digest.name, by_digest.prefix, by_digest.scopes, by_digest.groups) == expected
    assert by_digest.active and registry.api_key_by_id("k2").expires_at is None
    assert registry.api_key_by_digest("digest-3") is None and registry.api_key_by_id("k3") is None
    assert [k.key_id for k in registry.list_api_keys()] == ["k1", "k2"]  # oldest first
    with pytest.raises(IntegrityError):
        registry.add_api_key(api_key("k3"), "digest-1")  # a digest names one key


def test_a_revoked_key_stays_revoked_from_the_first_time(registry: Registry) -> None:
    registry.add_api_key(api_key("k1"), "digest-1")
    assert registry.revoke_api_key("k1")
    first = registry.api_key_by_id("k1").revoked_at
    assert first is not None and not registry.api_key_by_digest("digest-1").active
    time.sleep(0.01)
    assert registry.revoke_api_key("k1")  # twice: the first time is kept
    assert registry.api_key_by_id("k1").revoked_at == first
    assert not registry.revoke_api_key("no-such-key")


def test_using_a_key_records_when(registry: Registry) -> None:
    registry.add_api_key(api_key("k1"), "digest-1")
    before = datetime.now(UTC) - timedelta(seconds=1)
    registry.touch_api_key("k1")
    used = registry.api_key_by_id("k1").last_used_at
    assert used is not None and before <= used <= datetime.now(UTC) + timedelta(seconds=1)
    registry.touch_api_key("no-such-key")  # nothing to record


def test_signed_out_sessions_are_refused_until_their_expiry_then_pruned(registry: Registry) -> None:
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


# ---------------------------------------------------------------------------------------------------------------
# Events already handled (a Slack retry, or the same event at another replica, is handled once): the registry on both
# databases, and the unit tests' fake.


@pytest.fixture(params=["sqlite", "postgresql", "fake"])
def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    if request.param == "fake":
        yield FakeEventLog()
        return
    with database(request.param, tmp_path) as url:
        registry = SqlRegistry(url)
        yield registry
        registry.close()


def test_an_event_is_claimed_once(event_log: EventLog) -> None:
    assert event_log.claim_event("Ev0A1")
    assert not event_log.claim_event("Ev0A1")  # the retry
    assert not event_log.claim_event("Ev0A1")
    assert event_log.claim_event("Ev0A2")  # another event
    assert event_log.claim_event("ev0a1")  # ids are compared exactly
    long_id = "slack:T0KB:" + "x" * 200
    assert event_log.claim_event(long_id) and not event_log.claim_event(long_id)


def test_forgotten_claims_are_those_made_before_the_moment(event_log: EventLog) -> None:
    assert event_log.forget_events(datetime.now(UTC)) == 0
    event_log.claim_event("old-1")
    event_log.claim_event("old-2")
    time.sleep(0.05)
    # The moment in another offset than UTC: the same instant, whatever the database keeps.
    moment = datetime.now(UTC).astimezone(timezone(timedelta(hours=-5)))
    time.sleep(0.05)
    event_log.claim_event("new")
    assert event_log.forget_events(moment) == 2
    assert event_log.claim_event("old-1")  # forgotten: claimable again
    assert not event_log.claim_event("new")  # kept
    assert event_log.forget_events(moment) == 0


def test_claims_survive_reopening(open_registry: OpenRegistry) -> None:
    first = open_registry()
    assert first.claim_event("Ev-durable")
    first.close()
    assert not open_registry().claim_event("Ev-durable")  # a restart does not answer a retry again


def test_of_many_threads_claiming_an_event_exactly_one_wins(event_log: EventLog) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(event_log.claim_event("Ev-contested"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and results.count(True) == 1


EVENTS_RACED = 40


def _claim_in_a_process(url: str, barrier: object, won: object, name: str) -> None:
    """A replica: its own registry (engine, pool, connections) on the shared database, claiming every event."""
    registry = SqlRegistry(url)
    try:
        barrier.wait()  # type: ignore[attr-defined]
        for i in range(EVENTS_RACED):
            if registry.claim_event(f"Ev-{i}"):
                won.put((name, i))  # type: ignore[attr-defined]
    finally:
        registry.close()
        won.put((name, None))  # type: ignore[attr-defined]


def test_of_processes_claiming_the_same_events_exactly_one_wins_each(database_url: str) -> None:
    SqlRegistry(database_url).close()  # the schema, before the replicas race to create it
    context = multiprocessing.get_context("spawn")  # not fork: no inherited connections or threads
    barrier, won = context.Barrier(3), context.Queue()
    replicas = [(database_url, barrier, won, f"replica-{n}") for n in range(3)]
    processes = [context.Process(target=_claim_in_a_process, args=args) for args in replicas]
    for process in processes:
        process.start()
    winners: dict[int, list[str]] = {}
    finished = 0
    while finished < len(processes):
        name, event = won.get(timeout=120)
        if event is None:
            finished += 1
        else:
            winners.setdefault(event, []).append(name)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    assert sorted(winners) == list(range(EVENTS_RACED))  # every event handled...
    assert all(len(names) == 1 for names in winners.values()), winners  # ...by exactly one replica
