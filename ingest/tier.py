"""`kb worker`: the ingestion tier as a process of its own, no HTTP API and no generator.

Any number of these processes (and `kb serve` replicas, with or without workers of their own) share one registry
(PostgreSQL: jobs are claimed with `FOR UPDATE SKIP LOCKED` and a lease, kb.adapters.sql_registry), one index (a
Qdrant server or cluster) and one blob store (a shared volume or S3). A worker killed mid-job loses nothing: its
lease runs out and another worker takes the job again; every write of the first is fenced by its lease
(ingest/worker.py).

The process is alive for a liveness probe while it touches `KB_INGEST__HEARTBEAT_PATH`: it does so only while every
worker thread has shown progress recently (a pass of its loop, a lease renewal while parsing or embedding), so a
worker stuck inside a job stops the heartbeat and the orchestrator restarts the process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from ingest.pipeline import IngestionPipeline
from ingest.worker import IngestWorker
from kb.container import Container
from kb.metrics import INGEST_QUEUE_DEPTH
from kb.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0
# A worker thread that has shown no progress for this long is stuck: the heartbeat stops (liveness probes allow a
# margin on top). Progress comes at least once a second while a document parses and after every embedding batch.
STUCK_AFTER_S = 120.0


class WorkerTier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.container: Container | None = None
        self.workers: list[IngestWorker] = []

    def open(self) -> None:
        """Adapters, parsers and the embedding model loaded and warmed before the first job is claimed."""
        settings = self.settings
        self.container = container = Container.open(settings)
        container.blobs.check()
        if not settings.registry_url:
            # The data directory's SQLite file, whose lock this process holds (service/cli.py): a job left running was
            # left by a process that died; resume it now rather than when its lease ends (as `kb serve` does).
            resumed = container.registry.release_leases()
            if resumed:
                log.info("resuming %d interrupted ingestion job(s)", resumed)
        pipeline = IngestionPipeline(
            container.registry, container.blobs, container.embedder, container.index, settings.ingest,
            settings.embedder.languages,
        )  # fmt: skip
        count = max(1, settings.ingest.workers)
        self.workers = [IngestWorker(container.registry, container.blobs, pipeline, settings.ingest) for _ in range(count)]
        started = time.perf_counter()
        for worker in self.workers:
            worker.warm_up()
        container.embedder.embed_query("warm start")
        for worker in self.workers:
            worker.warm_up(wait=True)
        log.info("kb worker: %d ingestion worker(s) warmed in %.1f s", count, time.perf_counter() - started)
        if settings.ingest.metrics_port:
            from prometheus_client import start_http_server

            INGEST_QUEUE_DEPTH.set_function(container.registry.pending_jobs)
            try:
                start_http_server(settings.ingest.metrics_port, addr=settings.ingest.metrics_host)
            except OSError as exc:  # a name that does not resolve, an address not on this host, a port in use
                raise RuntimeError(
                    f"cannot serve metrics on {settings.ingest.metrics_host}:{settings.ingest.metrics_port} "
                    f"(KB_INGEST__METRICS_HOST, KB_INGEST__METRICS_PORT): {exc}"
                ) from exc
            log.info("kb worker: metrics at http://%s:%d/metrics", settings.ingest.metrics_host,
                     settings.ingest.metrics_port)  # fmt: skip

    def run(self, stop: threading.Event) -> int:
        """Run until `stop` is set (SIGTERM, SIGINT) or a worker thread dies; the exit status of the process."""
        if stop.is_set():  # stopped while loading: claim nothing
            return 0
        for worker in self.workers:
            worker.start()
        log.info("kb worker: taking ingestion jobs (%s)", ", ".join(w.worker_id for w in self.workers))
        heartbeat = Path(self.settings.ingest.heartbeat_path) if self.settings.ingest.heartbeat_path else None
        status = 0
        while True:
            dead = [w.worker_id for w in self.workers if not w.running]
            if dead:
                log.error("kb worker: worker thread(s) %s stopped unexpectedly; exiting", ", ".join(dead))
                status = 1
                break
            stuck = [w.worker_id for w in self.workers if time.monotonic() - w.progress_at > STUCK_AFTER_S]
            if heartbeat is not None and not stuck:
                _touch(heartbeat)
            elif stuck:
                log.warning("kb worker: no progress for %.0f s in %s", STUCK_AFTER_S, ", ".join(stuck))
            if stop.wait(HEARTBEAT_EVERY_S):
                break
        return status

    def close(self) -> None:
        """Stop taking jobs; a job in hand may finish within the stop timeout, else it goes back to the queue, as do
        those read ahead (IngestWorker.stop): none is counted as an attempt or left held until its lease runs out."""
        for worker in self.workers:
            worker.request_stop()
        for worker in self.workers:
            worker.stop()
        if self.container is not None:
            import asyncio

            asyncio.run(self.container.aclose())
            self.container = None


def _touch(path: Path) -> None:
    try:
        path.touch()
        os.utime(path)
    except OSError as exc:  # a read-only or missing directory: say so, keep working (the probe will say the rest)
        log.warning("kb worker: cannot touch the heartbeat file %s: %s", path, exc)
