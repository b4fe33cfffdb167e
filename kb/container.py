"""Builds the adapters the settings choose. Whoever runs (app lifespan, CLI, worker) opens and closes it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from kb.ports import BlobStore, Embedder, Generator, Registry, Reranker, VectorIndex
from kb.settings import Settings

log = logging.getLogger(__name__)


def embedder_model_path(settings: Settings) -> str:
    if settings.embedder.model:
        return settings.embedder.model
    from kb.model_store import default_embedder_path

    return str(default_embedder_path())


def generator_model_path(settings: Settings) -> Path:
    if settings.generator.model:
        return Path(settings.generator.model)
    from kb.model_store import ensure_smollm2

    return ensure_smollm2(settings.models_dir)


def build_registry(settings: Settings) -> Registry:
    from kb.adapters.sql_registry import SqlRegistry

    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    return SqlRegistry(
        settings.resolved_registry_url, pool_size=settings.registry_pool_size, max_overflow=settings.registry_max_overflow
    )


def build_blob_store(settings: Settings) -> BlobStore:
    blobs = settings.blobs
    if blobs.backend == "s3":
        # boto3 is imported only where S3 is used.
        from kb.adapters.s3_blob_store import S3BlobStore

        return S3BlobStore(
            blobs.s3_bucket, blobs.s3_prefix, endpoint_url=blobs.s3_endpoint_url or None, region=blobs.s3_region or None
        )
    from kb.adapters.blob_store import FileBlobStore

    return FileBlobStore(settings.blob_dir)


def build_embedder(settings: Settings) -> Embedder:
    if settings.embedder.backend in ("onnx", "onnx-int8"):
        from kb.adapters.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(
            settings.embedder,
            embedder_model_path(settings),
            settings.models_dir / "onnx",
            quantize=settings.embedder.backend == "onnx-int8",
        )
    from kb.adapters.st_embedder import SentenceTransformersEmbedder

    return SentenceTransformersEmbedder(settings.embedder, embedder_model_path(settings))


def build_reranker(settings: Settings) -> Reranker | None:
    """The cross-encoder of settings.retrieval.reranker_model, or None when reranking is off (the default)."""
    if not settings.retrieval.reranker_model:
        return None
    from kb.adapters.st_reranker import SentenceTransformersReranker

    return SentenceTransformersReranker(settings.retrieval.reranker_model, device=settings.retrieval.reranker_device)


def build_index(settings: Settings, dimension: int) -> VectorIndex:
    from kb.index.bm25 import Bm25Terms
    from kb.index.fusion import HybridFusion

    fusion = HybridFusion.from_settings(settings.index)
    terms = Bm25Terms.from_settings(settings.index)
    if settings.index.backend == "edge":
        from kb.adapters.edge_index import EdgeVectorIndex

        return EdgeVectorIndex(settings.index_path, dimension, fusion=fusion, terms=terms)
    from kb.adapters.qdrant_server_index import ClusterLayout, QdrantServerIndex

    layout = ClusterLayout(
        settings.index.shards, settings.index.replication_factor, settings.index.write_consistency_factor,
        settings.index.storage,
    )
    return QdrantServerIndex.from_url(
        settings.index.url, settings.index.api_key, settings.index.collection, dimension, fusion=fusion, terms=terms,
        layout=layout,
    )  # fmt: skip


def build_scratch_index(settings: Settings, dimension: int, path: Path) -> VectorIndex:
    """A Qdrant Edge index at `path` searching with the fusion and BM25 settings of `settings.index`, whichever
    backend those name: a throwaway index (retrieval evaluation) that must not touch the knowledge base's own."""
    from kb.adapters.edge_index import EdgeVectorIndex
    from kb.index.bm25 import Bm25Terms
    from kb.index.fusion import HybridFusion

    fusion = HybridFusion.from_settings(settings.index)
    terms = Bm25Terms.from_settings(settings.index)
    return EdgeVectorIndex(path, dimension, fusion=fusion, terms=terms)


def build_generator(settings: Settings) -> Generator:
    model_dir = generator_model_path(settings)
    if settings.generator.backend == "openai":
        from kb.adapters.openai_http import OpenAIHttpGenerator

        if settings.generator.fallback != "engine":
            return OpenAIHttpGenerator(settings.generator, model_dir)
        from kb.adapters.fallback_generator import BreakerGenerator, ContinuingEngineGenerator, fallback_settings

        # Behind the breaker a question need not wait out the server's restart: one quick retry, then the fallback.
        primary = OpenAIHttpGenerator(settings.generator, model_dir, connect_attempts=2)
        engine = fallback_settings(settings.generator)
        fallback_dir = generator_model_path(settings.model_copy(update={"generator": engine}))
        return BreakerGenerator(primary, ContinuingEngineGenerator(engine, fallback_dir), settings.generator)
    from kb.adapters.vllm_engine import VllmEngineGenerator

    return VllmEngineGenerator(settings.generator, model_dir)


# The warm-up question's text: English and Chinese, so that the first real query finds the BM25 encoder's Chinese
# segmenter (jieba: its dictionary loads on first use) loaded already.
WARM_UP_TEXT = "How large may an upload be? 上传文件的大小限制是多少？"
WARM_UP_MESSAGES = [{"role": "user", "content": "Say OK."}]
# A warm-up that hangs (an index that does not answer) must not keep /readyz from reporting what is wrong.
WARM_UP_TIMEOUT_S = 120.0


async def warm_generation(generator: Generator) -> None:
    """One generation of one token (the generator's own warm_up where it has one: the breaker warms its fallback
    engine). The first request of an engine pays for allocations and kernels that later ones reuse."""
    warm_up = getattr(generator, "warm_up", None)
    if warm_up is not None:
        await warm_up()
        return
    stream = generator.stream(WARM_UP_MESSAGES, 1)
    try:
        async for _ in stream:
            pass  # drained: the generation itself is the warm-up
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class Container:
    """The open adapters of one process. The generator is optional: ingestion and search do not need it."""

    settings: Settings
    registry: Registry
    blobs: BlobStore
    embedder: Embedder
    index: VectorIndex
    generator: Generator | None = None
    # Warm start: True once one embedding and one index query ran (warm_up_retrieval), whatever their outcome;
    # /readyz waits for it. The seconds each part took to load and warm, for the log and /metrics.
    retrieval_warm: bool = False
    warm_start_s: dict[str, float] = field(default_factory=dict)
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> "Container":
        registry = build_registry(settings)
        blobs = build_blob_store(settings)
        embedder = build_embedder(settings)
        index = build_index(settings, embedder.dimension)
        return cls(settings=settings, registry=registry, blobs=blobs, embedder=embedder, index=index)

    async def start_generator(self) -> Generator:
        """Start the generator and warm it with one generation before handing it out (the first answer would pay for
        it otherwise); a warm-up that fails is logged, and the generator's own health check says the rest."""
        if self.generator is None:
            started = time.perf_counter()
            generator = build_generator(self.settings)
            await generator.start()
            # In-process engines only: a generator server warms itself before it reports healthy, and one still
            # starting would hold this process's readiness for nothing (/readyz reports it).
            if self.settings.generator.backend == "vllm" or hasattr(generator, "warm_up"):
                try:
                    await warm_generation(generator)
                except Exception:
                    log.exception("the generator's warm-up generation failed")
            self._record_warm("generator", started)
            self.generator = generator
        return self.generator

    async def warm_up_retrieval(self) -> None:
        """One query embedding and one hybrid index query (the models loaded, the index's files read, the BM25 encoder
        and its segmenter ready) before /readyz turns ready; failures are logged, the readiness checks say the rest."""
        started = time.perf_counter()

        def query() -> None:
            vector = self.embedder.embed_query(WARM_UP_TEXT)
            self.index.search(vector, WARM_UP_TEXT, limit=1)

        try:
            await asyncio.wait_for(asyncio.to_thread(query), WARM_UP_TIMEOUT_S)
        except Exception:
            log.exception("the retrieval warm-up failed")
        finally:
            self.retrieval_warm = True
            self._record_warm("retrieval", started)

    def _record_warm(self, part: str, started: float) -> None:
        from kb.metrics import WARM_START_SECONDS

        self.warm_start_s[part] = round(time.perf_counter() - started, 2)
        WARM_START_SECONDS.labels(part).set(self.warm_start_s[part])
        log.info("warm start: %s loaded and warmed in %.1f s", part, self.warm_start_s[part])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.generator is not None:
            await self.generator.close()
        self.index.close()
        self.registry.close()
