"""Takes ingestion jobs from the registry with leases; a crashed worker's jobs are taken again when the lease expires."""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback

from ingest.pipeline import IngestionPipeline
from kb.models import DocumentStatus
from kb.ports import Registry

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


class IngestWorker:
    def __init__(self, registry: Registry, pipeline: IngestionPipeline, lease_seconds: float) -> None:
        self._registry = registry
        self._pipeline = pipeline
        self._lease_seconds = lease_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """Process one job if there is one; returns whether a job was taken."""
        job = self._registry.claim_next_job(self.worker_id, self._lease_seconds)
        if job is None:
            return False
        try:
            self._pipeline.process(job.document_id)
        except Exception as exc:
            log.error("ingestion of %s failed: %s", job.document_id, traceback.format_exc(limit=5))
            if job.attempts < MAX_ATTEMPTS:
                # Unexpected errors (not parse errors, which the pipeline records) are retried by re-queueing.
                self._registry.finish_job(job.job_id, error=f"attempt {job.attempts}: {exc}")
                self._registry.enqueue_job(job.document_id)
                self._registry.set_status(job.document_id, DocumentStatus.QUEUED, error=f"retrying: {exc}")
            else:
                self._registry.finish_job(job.job_id, error=str(exc))
                self._registry.set_status(job.document_id, DocumentStatus.FAILED, error=f"internal error: {exc}")
            return True
        self._registry.finish_job(job.job_id)
        return True

    def drain(self) -> int:
        done = 0
        while self.run_once():
            done += 1
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="kb-ingest-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
