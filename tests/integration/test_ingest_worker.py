"""The ingest worker on real parts (parser process, MiniLM, Qdrant Edge, SQLite), with faults injected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kb.container import Container
from kb.models import DocumentStatus
from kb.settings import Settings
from service.state import Services

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"


class FlakyIndex:
    """The real index, whose first `failures` upserts raise as a briefly unreachable Qdrant server would."""

    def __init__(self, index: Any, failures: int) -> None:
        self._index, self.failures = index, failures

    def upsert(self, chunks: Any, vectors: Any, sentence_vectors: Any = None) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("qdrant unreachable")
        self._index.upsert(chunks, vectors, sentence_vectors)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


@pytest.fixture
def open_services(tmp_path: Path) -> Iterator[Any]:
    opened: list[tuple[Container, Services]] = []

    def open_(configure: Any = None, wrap_index: Any = None) -> tuple[Container, Services]:
        settings = Settings(data_dir=tmp_path / "data")
        settings.ingest.retry_backoff_s = 0.1
        if configure:
            configure(settings)
        container = Container.open(settings)
        if wrap_index:
            container.index = wrap_index(container.index)
        services = asyncio.run(Services.open(container, with_generator=False))
        opened.append((container, services))
        return container, services

    yield open_
    for container, services in opened:
        services.worker.stop()
        asyncio.run(container.aclose())


def test_transient_index_errors_are_retried_with_backoff(open_services: Any) -> None:
    flaky: list[FlakyIndex] = []
    container, services = open_services(wrap_index=lambda index: flaky.append(FlakyIndex(index, 2)) or flaky[0])
    path = CORPUS / "txt" / "book-war-and-peace-1p.txt"  # a few chunks: each of the three attempts parses it again
    document = services.pipeline.submit(path.name, path.read_bytes()).document
    services.worker.drain()
    done = container.registry.get_document(document.document_id)
    assert done.status is DocumentStatus.READY and done.error is None
    assert flaky[0].failures == 0  # both failures happened and were retried
    assert container.index.count() == done.chunks


def test_a_document_that_keeps_failing_fails_with_its_reason(open_services: Any) -> None:
    container, services = open_services(wrap_index=lambda index: FlakyIndex(index, 100))
    path = CORPUS / "txt" / "fake-text.txt"
    document = services.pipeline.submit(path.name, path.read_bytes()).document
    services.worker.drain()
    failed = container.registry.get_document(document.document_id)
    assert failed.status is DocumentStatus.FAILED
    assert "failed after 3 attempts" in failed.error and "qdrant unreachable" in failed.error


def test_parsing_past_the_time_limit_fails_that_document_only(open_services: Any) -> None:
    def tight_limit(settings: Settings) -> None:
        settings.ingest.parse_time_limit_s = 1.0

    container, services = open_services(configure=tight_limit)
    slow = CORPUS / "pdf" / "DA-619p.pdf"  # 619 pages: about a minute to parse
    quick = CORPUS / "txt" / "fake-text.txt"
    slow_id = services.pipeline.submit(slow.name, slow.read_bytes()).document.document_id
    quick_id = services.pipeline.submit(quick.name, quick.read_bytes()).document.document_id
    services.worker.drain()
    slow_doc, quick_doc = container.registry.get_document(slow_id), container.registry.get_document(quick_id)
    assert slow_doc.status is DocumentStatus.FAILED and "time limit exceeded" in slow_doc.error
    assert quick_doc.status is DocumentStatus.READY  # the parser was restarted for it


def test_progress_is_recorded(open_services: Any) -> None:
    container, services = open_services()
    path = CORPUS / "pdf" / "layout-parser-paper-fast.pdf"
    document_id = services.pipeline.submit(path.name, path.read_bytes()).document.document_id
    services.worker.drain()
    progress = container.registry.get_document(document_id).progress
    assert progress["stage"] == "done" and progress["pages_parsed"] == 2
    assert progress["chunks_embedded"] == progress["chunks_total"] == container.registry.get_document(document_id).chunks


def test_a_document_deleted_while_it_is_embedded_never_becomes_searchable(open_services: Any) -> None:
    from ingest.partition import partition_file
    from ingest.pipeline import DocumentGone
    from kb.models import SearchFilter

    container, services = open_services()
    path = CORPUS / "txt" / "norwich-city.txt"
    document_id = services.pipeline.submit(path.name, path.read_bytes()).document.document_id
    blocks = partition_file(path, path.name)
    deleted: list[bool] = []

    def delete_midway(progress: dict) -> None:
        if progress["chunks_embedded"] and not deleted:
            deleted.append(services.pipeline.delete(document_id))

    with pytest.raises(DocumentGone):
        services.pipeline.index_blocks(document_id, blocks, delete_midway)
    assert deleted == [True]
    assert container.index.count(SearchFilter(document_ids=[document_id])) == 0
    assert container.registry.get_document(document_id) is None


def test_deleting_a_document_while_it_is_parsed_stops_the_parse_and_the_next_upload_is_ingested(
    open_services: Any,
) -> None:
    """The review's lost document: deleted mid-ingestion, its worker went on for minutes, and the next upload reused
    its job id and stayed queued forever. Now the parse is killed, nothing of it stays, the next upload goes ready."""
    import threading
    import time

    from kb.models import SearchFilter

    container, services = open_services()
    slow = CORPUS / "pdf" / "DA-619p.pdf"  # 619 pages: about a minute of parsing
    slow_id = services.pipeline.submit(slow.name, slow.read_bytes()).document.document_id
    drained = threading.Thread(target=services.worker.drain)
    drained.start()
    while container.registry.get_document(slow_id).progress.get("stage") != "parsing":
        time.sleep(0.05)
    parser_pid = services.worker._parser._process.pid
    time.sleep(1.0)  # well into the parse
    assert services.pipeline.delete(slow_id)
    drained.join()
    # The worker did not wait for the parse to end: it killed the parser process working on the deleted document.
    assert services.worker._parser._process is None or services.worker._parser._process.pid != parser_pid
    quick = CORPUS / "txt" / "fake-text.txt"
    quick_id = services.pipeline.submit(quick.name, quick.read_bytes()).document.document_id
    services.worker.drain()
    assert container.registry.get_document(quick_id).status is DocumentStatus.READY
    assert container.registry.get_document(slow_id) is None
    assert container.index.count(SearchFilter(document_ids=[slow_id])) == 0
    assert container.registry.pending_jobs() == 0


def test_a_document_needing_more_memory_than_the_parser_may_use_fails_and_the_next_one_is_ingested(
    open_services: Any, tmp_path: Path
) -> None:
    def small_memory(settings: Settings) -> None:
        settings.ingest.parse_memory_limit_mb = 20  # beyond what the parser holds after its imports

    container, services = open_services(configure=small_memory)
    rows = "alpha,beta,gamma,delta,epsilon,zeta,eta,theta,iota,kappa\n" * 600_000  # 34 MB of CSV
    big_id = services.pipeline.submit("big.csv", rows.encode()).document.document_id
    quick = CORPUS / "txt" / "fake-text.txt"
    quick_id = services.pipeline.submit(quick.name, quick.read_bytes()).document.document_id
    services.worker.drain()
    big = container.registry.get_document(big_id)
    assert big.status is DocumentStatus.FAILED and big.error.startswith("too large when unpacked"), big.error
    assert container.registry.get_document(quick_id).status is DocumentStatus.READY


class FailingRegistry:
    """The real registry, whose document writes fail as a database that just went away would."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def add_document(self, *args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import OperationalError

        raise OperationalError("INSERT INTO documents", {}, ConnectionError("server closed the connection"))

    new_version = add_document

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


def test_an_upload_the_registry_cannot_record_leaves_no_original_behind(open_services: Any) -> None:
    from sqlalchemy.exc import OperationalError

    from ingest.pipeline import IngestionPipeline

    container, services = open_services()
    kept = services.pipeline.submit("kept.txt", b"The first version, recorded.").document
    pipeline = IngestionPipeline(FailingRegistry(container.registry), container.blobs, container.embedder,
                                 container.index, container.settings.ingest)  # fmt: skip
    root = container.settings.data_dir / "originals"
    originals = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert originals
    with pytest.raises(OperationalError):
        pipeline.submit("lost.txt", b"Never recorded: the registry is down.")
    with pytest.raises(OperationalError):
        pipeline.submit("kept.txt", b"A second version, never recorded.", document_id=kept.document_id)
    assert sorted(str(p) for p in root.rglob("*") if p.is_file()) == originals
    assert container.registry.pending_jobs() == 1 and [d.filename for d in container.registry.list_documents()] == [
        "kept.txt"]


class LeaseClock:
    """The clock leases are kept by, on both sides (the registry's lease deadlines, the worker's "a third of a lease
    has gone by"): the real clock plus an offset the test moves forward. A job then outlives its lease in the clock's
    terms however fast or slow this machine runs the embedding, so the test proves the extension, not a race."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import kb.adapters.sql_registry as sql_registry
        import ingest.worker as worker

        self.offset_s = 0.0
        real_now, real_monotonic = sql_registry._now, time.monotonic
        monkeypatch.setattr(sql_registry, "_now", lambda: real_now() + timedelta(seconds=self.offset_s))
        clock = SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
        clock.monotonic = lambda: real_monotonic() + self.offset_s
        monkeypatch.setattr(worker, "time", clock)


class SlowIndex:
    """The real index, each upsert (one embedding batch) taking `batch_s` on the lease clock; after each, another
    worker tries to take a job from the same registry, as one would while this worker spends longer than a lease on
    one document."""

    def __init__(self, index: Any, clock: LeaseClock, batch_s: float) -> None:
        self._index, self._clock, self._batch_s = index, clock, batch_s
        self._registry: Any = None
        self.stolen: list[Any] = []

    def upsert(self, chunks: Any, vectors: Any, sentence_vectors: Any = None) -> None:
        self._clock.offset_s += self._batch_s
        self._index.upsert(chunks, vectors, sentence_vectors)
        self.stolen.append(self._registry.claim_next_job("another-worker", 60))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


def test_the_job_parsing_ahead_keeps_its_lease_while_the_current_one_takes_longer_than_a_lease(
    open_services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease_s = 60.0

    def configure(settings: Settings) -> None:
        settings.ingest.job_lease_s = lease_s

    clock = LeaseClock(monkeypatch)
    # Each batch takes 0.45 of a lease, so the worker extends after every one (past a third of a lease); the real time
    # a batch takes adds to that, up to 0.55 of a lease (33 s) before a slow machine could lose the current job.
    slow = SlowIndex(None, clock, 0.45 * lease_s)

    def wrap(index: Any) -> SlowIndex:
        slow._index = index
        return slow

    container, services = open_services(configure, wrap_index=wrap)
    slow._registry = container.registry
    long = CORPUS / "html" / "example-10k.html"  # ~400 chunks: 7 embedding batches, 3 leases on the lease clock
    short = CORPUS / "txt" / "fake-text.txt"
    first = services.pipeline.submit(long.name, long.read_bytes()).document
    second = services.pipeline.submit(short.name, short.read_bytes()).document
    services.worker.drain()
    first_batches = len(slow.stolen) - 1  # the short document is one batch
    assert first_batches * 0.45 * lease_s > 2 * lease_s  # the second was claimed, parsing ahead, for over two leases
    assert slow.stolen == [None] * len(slow.stolen)  # nothing for another worker to take
    for document in (first, second):
        assert container.registry.get_document(document.document_id).status is DocumentStatus.READY


def test_stopping_gives_back_the_job_parsing_ahead_and_finishes_the_current_one(open_services: Any) -> None:
    container, services = open_services()
    long = CORPUS / "html" / "example-10k.html"
    short = CORPUS / "txt" / "fake-text.txt"
    first = services.pipeline.submit(long.name, long.read_bytes()).document
    second = services.pipeline.submit(short.name, short.read_bytes()).document
    services.worker.start()
    deadline = time.monotonic() + 120
    while container.registry.get_document(second.document_id).status is not DocumentStatus.PROCESSING:
        assert time.monotonic() < deadline, "the second document was never claimed"
        time.sleep(0.1)
    services.worker.stop(timeout=300)

    assert container.registry.get_document(first.document_id).status is DocumentStatus.READY
    given_back = container.registry.get_document(second.document_id)
    assert given_back.status is DocumentStatus.QUEUED and container.registry.pending_jobs() == 1
    job = container.registry.claim_next_job("the next worker", 60)  # at once, not after a lease
    assert job is not None and job.document_id == second.document_id and job.attempts == 1
