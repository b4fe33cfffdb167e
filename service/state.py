"""The services one running app hands to its handlers."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.pipeline import IngestionPipeline
from ingest.worker import IngestWorker
from kb.container import Container
from service.answering import AnswerService
from service.retrieval import RetrievalService


@dataclass
class Services:
    container: Container
    pipeline: IngestionPipeline
    worker: IngestWorker
    retrieval: RetrievalService
    answers: AnswerService | None  # None until the generator is up

    @classmethod
    async def open(cls, container: Container, *, with_generator: bool = True) -> "Services":
        settings = container.settings
        pipeline = IngestionPipeline(
            container.registry, container.blobs, container.embedder, container.index, settings.ingest
        )
        worker = IngestWorker(container.registry, pipeline, settings.ingest.job_lease_s)
        retrieval = RetrievalService(container.embedder, container.index, settings.retrieval)
        services = cls(container, pipeline, worker, retrieval, None)
        if with_generator:
            await services.start_generator()
        return services

    async def start_generator(self) -> None:
        settings = self.container.settings
        generator = await self.container.start_generator()
        self.answers = AnswerService(self.retrieval, generator, settings.retrieval, settings.generator)
