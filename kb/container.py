"""Builds the adapters the settings choose. Whoever runs (app lifespan, CLI, worker) opens and closes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kb.ports import BlobStore, Embedder, Generator, Registry, Reranker, VectorIndex
from kb.settings import Settings


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
    return SqlRegistry(settings.resolved_registry_url)


def build_blob_store(settings: Settings) -> BlobStore:
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
    from kb.adapters.qdrant_server_index import QdrantServerIndex

    return QdrantServerIndex.from_url(
        settings.index.url, settings.index.api_key, settings.index.collection, dimension, fusion=fusion, terms=terms
    )


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

        return OpenAIHttpGenerator(settings.generator, model_dir)
    from kb.adapters.vllm_engine import VllmEngineGenerator

    return VllmEngineGenerator(settings.generator, model_dir)


@dataclass
class Container:
    """The open adapters of one process. The generator is optional: ingestion and search do not need it."""

    settings: Settings
    registry: Registry
    blobs: BlobStore
    embedder: Embedder
    index: VectorIndex
    generator: Generator | None = None
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, settings: Settings) -> "Container":
        registry = build_registry(settings)
        blobs = build_blob_store(settings)
        embedder = build_embedder(settings)
        index = build_index(settings, embedder.dimension)
        return cls(settings=settings, registry=registry, blobs=blobs, embedder=embedder, index=index)

    async def start_generator(self) -> Generator:
        if self.generator is None:
            generator = build_generator(self.settings)
            await generator.start()
            self.generator = generator
        return self.generator

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.generator is not None:
            await self.generator.close()
        self.index.close()
        self.registry.close()
