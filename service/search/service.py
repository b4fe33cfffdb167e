"""Retrieval: embed the query, search the index inside the caller's filter (reranked, expanded with neighbours when
configured), and judge whether anything is relevant (service.search.relevance)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from kb.languages import search_mode_for
from kb.metrics import RETRIEVAL_LATENCY
from kb.models import Passage, SearchFilter
from kb.ports import Embedder, Reranker, SearchMode, VectorIndex
from kb.settings import RetrievalSettings
from service.search.relevance import judge


@dataclass
class RetrievalResult:
    passages: list[Passage]
    relevant: bool
    best_similarity: float
    best_coverage: float
    latency_ms: float


class RetrievalService:
    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        settings: RetrievalSettings,
        *,
        languages: list[str] | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        self._embedder = embedder
        self._index = index
        self._settings = settings
        # What the embedder understands (EmbedderSettings.languages); None: every language.
        self._languages = languages if languages is not None else ["*"]
        self._reranker = reranker

    def search_sync(
        self,
        query: str,
        top_k: int | None = None,
        filter: SearchFilter | None = None,
        mode: SearchMode | None = None,
        expand: int | None = None,
    ) -> RetrievalResult:
        """`expand`: neighbouring chunks (ordinal +- n) to attach to each passage as its context (default: the
        setting expand_neighbours)."""
        started = time.perf_counter()
        limit = top_k or self._settings.top_k
        vector = self._embedder.embed_query(query)
        search_mode = search_mode_for(query, mode or self._settings.mode, self._languages)
        if self._reranker is not None:
            candidates = self._index.search(vector, query, max(limit, self._settings.rerank_candidates), filter, search_mode)
            passages = self._reranker.rerank(query, candidates, limit)
        else:
            passages = self._index.search(vector, query, limit, filter, search_mode)
        radius = self._settings.expand_neighbours if expand is None else expand
        if radius > 0:
            for passage in passages:
                # The same filter: a neighbour the caller may not see is not shown either.
                passage.context = self._index.neighbours(passage, radius, filter)
        dense_best = self._index.search(vector, query, 1, filter, "dense")
        best_similarity = dense_best[0].score if dense_best else 0.0
        relevance = judge(query, passages, best_similarity, self._settings.min_relevance)
        return RetrievalResult(
            passages=passages,
            relevant=relevance.relevant,
            best_similarity=relevance.best_similarity,
            best_coverage=relevance.best_coverage,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def document_chunks(self, document_id: str, filter: SearchFilter | None = None, limit: int = 1000) -> list[Passage]:
        """A whole document (its first `limit` chunks) in order, inside the caller's filter."""
        return self._index.document_chunks(document_id, filter, limit)

    async def search(
        self,
        query: str,
        top_k: int | None = None,
        filter: SearchFilter | None = None,
        mode: SearchMode | None = None,
        expand: int | None = None,
    ) -> RetrievalResult:
        # Embedding is CPU-bound torch work: keep it off the event loop.
        result = await asyncio.to_thread(self.search_sync, query, top_k, filter, mode, expand)
        RETRIEVAL_LATENCY.observe(result.latency_ms / 1000)
        return result
