"""The services one running app hands to its handlers."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ingest.pipeline import IngestionPipeline
from ingest.worker import IngestWorker
from kb.container import Container, build_reranker
from service.ask.extract import Extractor
from service.ask.pipeline import AskPipeline
from service.auth import ApiKeyService
from service.search.service import RetrievalService

log = logging.getLogger(__name__)


@dataclass
class Services:
    container: Container
    pipeline: IngestionPipeline
    worker: IngestWorker
    retrieval: RetrievalService
    answers: AskPipeline | None  # None until the generator is up
    keys: ApiKeyService
    more_workers: list[IngestWorker] = field(default_factory=list)

    def start_workers(self) -> None:
        """The ingestion workers KB_INGEST__WORKERS asks this process for; none for an API-only process."""
        if self.container.settings.ingest.workers > 0:
            for worker in (self.worker, *self.more_workers):
                worker.start()

    def stop_workers(self) -> None:
        for worker in (self.worker, *self.more_workers):
            worker.request_stop()
        for worker in (self.worker, *self.more_workers):
            worker.stop()

    @classmethod
    async def open(cls, container: Container, *, with_generator: bool = True) -> "Services":
        settings = container.settings
        pipeline = IngestionPipeline(
            container.registry, container.blobs, container.embedder, container.index, settings.ingest,
            settings.embedder.languages,
        )  # fmt: skip
        if not settings.registry_url:
            # The registry is the SQLite file of a data directory this process holds the lock of: any job marked
            # running was left by a process that died (kill -9, power cut). Resume it now, not when its lease ends.
            resumed = container.registry.release_leases()
            if resumed:
                log.info("resuming %d interrupted ingestion job(s)", resumed)
        worker = IngestWorker(container.registry, container.blobs, pipeline, settings.ingest)
        retrieval = RetrievalService(
            container.embedder,
            container.index,
            settings.retrieval,
            languages=settings.embedder.languages,
            reranker=build_reranker(settings),
        )
        keys = ApiKeyService(container.registry, settings.auth)
        services = cls(container, pipeline, worker, retrieval, None, keys)
        # KB_INGEST__WORKERS beyond the first, each with a parser process of its own (0: `kb serve --no-worker`).
        services.more_workers = [
            IngestWorker(container.registry, container.blobs, pipeline, settings.ingest)
            for _ in range(settings.ingest.workers - 1)
        ]
        if with_generator:
            await services.start_generator()
        return services

    async def start_generator(self) -> None:
        settings = self.container.settings
        generator = await self.container.start_generator()
        registry = self.container.registry
        self.answers = AskPipeline(
            self.retrieval, generator, settings.retrieval, settings.generator, conversations=registry,
            documents=registry, answer_settings=settings.answers,
            extractor=Extractor(self.container.embedder, settings.embedder.languages),
        )  # fmt: skip
