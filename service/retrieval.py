"""Retrieval: embed the query, search the index inside the caller's filter, decide whether anything is relevant."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from kb.models import Passage, SearchFilter
from kb.ports import Embedder, SearchMode, VectorIndex
from kb.settings import RetrievalSettings
from service.lexical import coverage


@dataclass
class RetrievalResult:
    passages: list[Passage]
    relevant: bool
    best_similarity: float
    best_coverage: float
    latency_ms: float


class RetrievalService:
    # A query whose content terms mostly occur in a passage is on topic even when the dense model
    # (English-only MiniLM by default) cannot tell, as with Chinese questions.
    LEXICAL_RELEVANCE = 0.6

    def __init__(self, embedder: Embedder, index: VectorIndex, settings: RetrievalSettings) -> None:
        self._embedder = embedder
        self._index = index
        self._settings = settings

    def search_sync(
        self,
        query: str,
        top_k: int | None = None,
        filter: SearchFilter | None = None,
        mode: SearchMode | None = None,
    ) -> RetrievalResult:
        started = time.perf_counter()
        limit = top_k or self._settings.top_k
        vector = self._embedder.embed_query(query)
        passages = self._index.search(vector, query, limit, filter, mode or self._settings.mode)
        dense_best = self._index.search(vector, query, 1, filter, "dense")
        best_similarity = dense_best[0].score if dense_best else 0.0
        best_coverage = max((coverage(query, p.text) for p in passages), default=0.0)
        relevant = bool(passages) and (
            best_similarity >= self._settings.min_relevance or best_coverage >= self.LEXICAL_RELEVANCE
        )
        return RetrievalResult(
            passages=passages,
            relevant=relevant,
            best_similarity=best_similarity,
            best_coverage=best_coverage,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def search(
        self,
        query: str,
        top_k: int | None = None,
        filter: SearchFilter | None = None,
        mode: SearchMode | None = None,
    ) -> RetrievalResult:
        # Embedding is CPU-bound torch work: keep it off the event loop.
        return await asyncio.to_thread(self.search_sync, query, top_k, filter, mode)
