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

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from ingest.parser_process import ParseCancelled, ParserProcess, ParserRestarted
from ingest.partition import ParseError
from ingest.pipeline import IngestionPipeline, LeaseLost, blob_key
from kb.metrics import INGEST_DOCUMENTS, INGEST_DURATION
from kb.models import DocumentStatus, Job
from kb.ports import BlobStore, Registry
from kb.settings import IngestSettings

log = logging.getLogger(__name__)

OnDone = Callable[[str], None]


@dataclass
class _InFlight:
    job: Job
    request_id: int
    claimed_at: float  # time.monotonic()
    path: str
    filename: str


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

    def _take(self) -> bool:
        """Claim one job and hand its original to the parser; False when the queue is empty."""
        job = self._registry.claim_next_job(self.worker_id, self._settings.job_lease_s)
        if job is None:
            return False
        document = self._registry.get_document(job.document_id)
        if document is None:  # deleted while queued
            self._registry.finish_job(job)
            return True
        if not self._registry.set_status(job.document_id, DocumentStatus.PROCESSING, fence=job):
            return True  # deleted (or retaken) since the claim
        self._registry.update_progress(job.document_id, {"stage": "parsing"}, fence=job)
        # The version being ingested, which is not yet the one searches (and downloads) see.
        path = str(self._blobs.path(blob_key(document.document_id, document.version)))
        request_id = self._parser.submit(path, document.filename)
        self._in_flight.append(_InFlight(job, request_id, time.monotonic(), path, document.filename))
        return True

    def run_once(self, on_done: OnDone | None = None) -> bool:
        """Finish one job, keeping the next one parsing meanwhile; returns whether there was a job."""
        while len(self._in_flight) < 2 and self._take():
            pass
        if not self._in_flight:
            return False
        current = self._in_flight.popleft()
        # The next document starts parsing while this one is embedded.
        while len(self._in_flight) < 1 and self._take():
            pass
        self._finish(current)
        if on_done is not None:
            on_done(current.job.document_id)
        return True

    def _finish(self, current: _InFlight) -> None:
        job = current.job
        try:
            blocks = self._parse(current)

            def renew(_: dict) -> None:
                if not self._registry.extend_lease(job, self._settings.job_lease_s):
                    raise LeaseLost(f"job {job.job_id} of {job.document_id} lost its lease")

            self._pipeline.index_blocks(job.document_id, blocks, renew, fence=job)
        except ParseError as exc:
            if self._pipeline.mark_failed(job.document_id, str(exc), fence=job):
                self._registry.finish_job(job, error=str(exc))
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
            if job.attempts < self._settings.max_attempts:
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
                ):
                    self._registry.finish_job(job, error=reason)
                INGEST_DOCUMENTS.labels("failed").inc()
        else:
            self._registry.finish_job(job)
            INGEST_DOCUMENTS.labels("ready").inc()
            INGEST_DURATION.observe(time.monotonic() - current.claimed_at)

    def _parse(self, current: _InFlight) -> list:
        """The document's blocks. Checks once a second that the job still holds its lease (a deleted document's
        parse is stopped at once). A document that was still queued when the parser had to be restarted (the one
        before it overran its limit or was cancelled) is submitted again, without counting an attempt."""
        job = current.job

        def resubmit(_: RetryCallState) -> None:
            current.request_id = self._parser.submit(current.path, current.filename)

        # Three resubmissions at most; then ParserRestarted fails this attempt like any error (the job backs off).
        resubmitting = Retrying(
            retry=retry_if_exception_type(ParserRestarted), stop=stop_after_attempt(4), before_sleep=resubmit,
            reraise=True,
        )
        return resubmitting(
            lambda: self._parser.result(current.request_id, cancelled=lambda: not self._registry.holds_lease(job))
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

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._parser.close()

