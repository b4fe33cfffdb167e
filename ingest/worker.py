"""Takes ingestion jobs from the registry with leases and runs them, parsing one document ahead.

While the parser process reads document n+1, this process embeds document n: on two cores parsing (pdfminer,
tesseract) and embedding (torch) overlap instead of taking turns. A job's lease is renewed as it makes progress;
a dead worker's job is taken again when its lease runs out (or at once by the next process that owns the registry
alone). Parse errors are permanent and keep their reason; anything else is retried with exponential backoff.

Every write a job makes is fenced by its claim's lease token (kb.models.Job.lease): once the job is gone (its document
deleted) or retaken by another worker, this worker's writes are refused, it stops at its next check (once a second
while parsing, the parser then killed; after every embedding batch) and removes what it staged for a deleted document.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from ingest.parser_process import ParseCancelled, ParserProcess, ParserRestarted
from ingest.partition import ParseError
from ingest.pipeline import IngestionPipeline, LeaseLost, blob_key
from kb.metrics import INGEST_DOCUMENTS, INGEST_DURATION
from kb.models import DocumentStatus, Job
from kb.outages import store_down_in_chain
from kb.ports import BlobStore, Registry
from kb.settings import IngestSettings

log = logging.getLogger(__name__)

OnDone = Callable[[str], None]
# How long a job interrupted by the index's or the blob store's outage waits before it is taken again (uncounted).
OUTAGE_RETRY_S = 15.0


@dataclass
class _InFlight:
    job: Job
    request_id: int
    claimed_at: float  # time.monotonic()
    path: str
    filename: str
    # Holds the original's local file (a temporary download for a remote blob store) until this entry is done with:
    # the parser reads it asynchronously, and again when it is resubmitted. Closed by run_once and stop.
    local: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    # The original could not be fetched (missing, the store unreachable): raised where the parse result is taken,
    # so that it fails or retries the job like any other error.
    error: Exception | None = None


class IngestWorker:
    def __init__(
        self, registry: Registry, blobs: BlobStore, pipeline: IngestionPipeline, settings: IngestSettings
    ) -> None:
        self._registry = registry
        self._blobs = blobs
        self._pipeline = pipeline
        self._settings = settings
        self._parser = ParserProcess(settings.parse_time_limit_s, settings.parse_memory_limit_mb)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight: deque[_InFlight] = deque()
        self._current: _InFlight | None = None  # the job being worked on (run_once)
        # When each job in hand last had its lease extended (time.monotonic()), by job id.
        self._extended: dict[int, float] = {}
        # The last sign of life (a pass of the loop, a lease kept while parsing or embedding): `kb worker`'s heartbeat
        # stops when a worker shows none for long (ingest/tier.py).
        self.progress_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _keep_leases(self, current: Job) -> bool:
        """Whether `current` still holds its lease (a deleted document's job does not). Asked once a second while a
        document parses and after every embedding batch; it also extends the lease of every job in hand once a third
        of a lease has gone by since the last extension: the job being worked on, and the one parsing ahead, which
        would otherwise be taken by another worker while this one spends longer than a lease on the current job."""
        now = self.progress_at = time.monotonic()
        every = self._settings.job_lease_s / 3
        extended: bool | None = None
        for job in (current, *(entry.job for entry in self._in_flight)):
            if now - self._extended.get(job.job_id, now) >= every:
                self._extended[job.job_id] = now
                kept = self._registry.extend_lease(job, self._settings.job_lease_s)
                if job is current:
                    extended = kept
        return self._registry.holds_lease(current) if extended is None else extended

    def _take(self) -> bool:
        """Claim one job and hand its original to the parser; False when the queue is empty (or the worker is
        stopping: it takes nothing more)."""
        if self._stop.is_set():
            return False
        job = self._registry.claim_next_job(self.worker_id, self._settings.job_lease_s)
        if job is None:
            return False
        self._extended[job.job_id] = time.monotonic()
        document = self._registry.get_document(job.document_id)
        if document is None:  # deleted while queued
            self._registry.finish_job(job)
            return True
        if not self._registry.set_status(job.document_id, DocumentStatus.PROCESSING, fence=job):
            return True  # deleted (or retaken) since the claim
        self._registry.update_progress(job.document_id, {"stage": "parsing"}, fence=job)
        # The version being ingested, which is not yet the one searches (and downloads) see.
        local = contextlib.ExitStack()
        try:
            path = str(local.enter_context(self._blobs.local_file(blob_key(document.document_id, document.version))))
        except Exception as exc:  # noqa: BLE001 - whatever stops the fetch (missing, store down) is this job's failure
            local.close()
            self._in_flight.append(_InFlight(job, -1, time.monotonic(), "", document.filename, local, exc))
            return True
        try:
            request_id = self._parser.submit(path, document.filename)
        except BaseException:
            local.close()
            raise
        self._in_flight.append(_InFlight(job, request_id, time.monotonic(), path, document.filename, local))
        return True

    def run_once(self, on_done: OnDone | None = None) -> bool:
        """Finish one job, keeping the next one parsing meanwhile; returns whether there was a job."""
        while len(self._in_flight) < 2 and self._take():
            pass
        if not self._in_flight:
            return False
        current = self._current = self._in_flight.popleft()
        try:
            # The next document starts parsing while this one is embedded.
            while len(self._in_flight) < 1 and self._take():
                pass
            self._finish(current)
        finally:
            current.local.close()  # its local copy of the original, whatever became of the job
            self._extended.pop(current.job.job_id, None)
            self._current = None
        if on_done is not None:
            on_done(current.job.document_id)
        return True

    def _finish(self, current: _InFlight) -> None:
        job = current.job
        try:
            blocks = self._parse(current)

            def renew(_: dict) -> None:
                if not self._keep_leases(job):
                    raise LeaseLost(f"job {job.job_id} of {job.document_id} lost its lease")

            self._pipeline.index_blocks(job.document_id, blocks, renew, fence=job)
        except ParseError as exc:
            if self._pipeline.mark_failed(job.document_id, str(exc), fence=job):
                if self._registry.finish_job(job, error=str(exc)):
                    self._finished(current, "failed")
                INGEST_DOCUMENTS.labels("failed").inc()
            else:
                self._pipeline.abandon(job.document_id)
        except (LookupError, LeaseLost, ParseCancelled) as exc:
            # Deleted meanwhile, or retaken by another worker after this one's lease ran out: this claim writes
            # nothing more (the registry refuses it anyway) and removes what it staged for a deleted document.
            log.info("stopped ingesting %s: %s", job.document_id, exc)
            self._pipeline.abandon(job.document_id)
            INGEST_DOCUMENTS.labels("cancelled").inc()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            down = store_down_in_chain(exc)
            if down in ("index", "blobs") and not self._stop.is_set():
                # The store's outage (a Qdrant node restarting, S3 unreachable), not the document's fault: wait for
                # the store, the attempt uncounted, rather than spend every attempt within seconds and fail a good
                # document for good. (The registry down: nothing can be written; the lease runs out instead.)
                log.warning("the %s is unavailable while ingesting %s: trying again in %.0f s: %s",
                            down, job.document_id, OUTAGE_RETRY_S, reason)  # fmt: skip
                if self._registry.set_status(
                    job.document_id, DocumentStatus.QUEUED, error=f"waiting for the {down}: {reason}", fence=job
                ):
                    self._registry.give_back_job(job, delay_s=OUTAGE_RETRY_S)
                INGEST_DOCUMENTS.labels("retried").inc()
            elif self._stop.is_set():
                # Stopped mid-job: past the stop timeout the parser was closed under it (ParserCrashed). The
                # document is not at fault: back to the queue at once, the attempt uncounted.
                log.info("gave back %s on stopping: %s", job.document_id, reason)
                if self._registry.set_status(job.document_id, DocumentStatus.QUEUED, fence=job):
                    self._registry.give_back_job(job)
                INGEST_DOCUMENTS.labels("cancelled").inc()
            elif job.attempts < self._settings.max_attempts:
                delay = self._settings.retry_backoff_s * 2 ** (job.attempts - 1)
                log.warning("ingestion of %s failed (attempt %d), retrying in %.0f s: %s",
                            job.document_id, job.attempts, delay, reason)  # fmt: skip
                if self._registry.set_status(
                    job.document_id, DocumentStatus.QUEUED, error=f"retrying: {reason}", fence=job
                ):
                    self._registry.retry_job(job, error=reason, delay_s=delay)
                INGEST_DOCUMENTS.labels("retried").inc()
            else:
                log.error("ingestion of %s failed for good: %s", job.document_id, reason)
                if self._pipeline.mark_failed(
                    job.document_id, f"failed after {job.attempts} attempts: {reason}", fence=job
                ) and self._registry.finish_job(job, error=reason):
                    self._finished(current, "failed")
                INGEST_DOCUMENTS.labels("failed").inc()
        else:
            if self._registry.finish_job(job):
                self._finished(current, "ready")
            INGEST_DOCUMENTS.labels("ready").inc()
            INGEST_DURATION.observe(time.monotonic() - current.claimed_at)

    def _finished(self, current: _InFlight, outcome: str) -> None:
        """One line per job this worker finished (its claim's last write landed): which, how, after how long."""
        log.info("ingestion job finished", extra={
            "job_id": current.job.job_id, "document_id": current.job.document_id, "outcome": outcome,
            "attempt": current.job.attempts, "worker_id": self.worker_id,
            "seconds": round(time.monotonic() - current.claimed_at, 2),
        })  # fmt: skip

    def _parse(self, current: _InFlight) -> list:
        """The document's blocks. Checks once a second that the job still holds its lease (a deleted document's
        parse is stopped at once). A document that was still queued when the parser had to be restarted (the one
        before it overran its limit or was cancelled) is submitted again, without counting an attempt."""
        job = current.job
        if current.error is not None:
            raise current.error

        def resubmit(_: RetryCallState) -> None:
            current.request_id = self._parser.submit(current.path, current.filename)

        # Three resubmissions at most; then ParserRestarted fails this attempt like any error (the job backs off).
        resubmitting = Retrying(
            retry=retry_if_exception_type(ParserRestarted), stop=stop_after_attempt(4), before_sleep=resubmit,
            reraise=True,
        )
        return resubmitting(
            lambda: self._parser.result(current.request_id, cancelled=lambda: not self._keep_leases(job))
        )

    def drain(self, on_done: OnDone | None = None) -> int:
        """Run jobs until the queue is empty (jobs waiting out a retry backoff included)."""
        done = 0
        while True:
            if self.run_once(on_done):
                done += 1
            elif self._registry.pending_jobs():
                self._stop.wait(0.2)  # a retry is backing off
            else:
                return done

    def notify(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.progress_at = time.monotonic()
            try:
                if self.run_once():
                    continue
            except Exception:
                log.exception("ingest worker loop error")
            self._wake.wait(timeout=1.0)
            self._wake.clear()

    def warm_up(self, wait: bool = False) -> None:
        self._parser.start(wait=wait)

    def start(self) -> None:
        self._parser.start()
        self._thread = threading.Thread(target=self._loop, name="kb-ingest-worker", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Take no more jobs; the one being worked on is finished (stop() waits for it)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop: the job being worked on may finish within `timeout`; past it, the job goes back to the queue at once,
        uncounted (a parse is ended by closing the parser; an embedding still running is fenced out: this worker's
        further writes are refused), and so do the jobs claimed but not started (the one parsing ahead). Nothing is
        left held until its lease runs out, and no stop counts against a document's attempts."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self._parser.close()
        if self._thread is not None and self._thread.is_alive():
            # Still parsing: closing the parser ended that parse, and the loop gives its job back (_finish).
            self._thread.join(10)
        if self._thread is not None and self._thread.is_alive():
            # Still embedding: the process is about to go. The loop owns its entries: only their claims are handed
            # back (the registry then refuses the loop's writes).
            for entry in (e for e in (self._current, *self._in_flight) if e is not None):
                self._give_back(entry)
            return
        while self._in_flight:
            entry = self._in_flight.popleft()
            entry.local.close()
            self._give_back(entry)

    def _give_back(self, entry: _InFlight) -> None:
        try:
            if self._registry.set_status(entry.job.document_id, DocumentStatus.QUEUED, fence=entry.job):
                self._registry.give_back_job(entry.job)
        except Exception:  # the registry is down: the lease runs out instead
            log.exception("could not give back job %d of %s", entry.job.job_id, entry.job.document_id)

