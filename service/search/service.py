"""Retrieval: embed the query, search the index inside the caller's filter (reranked, expanded with neighbours when
configured; boilerplate ranked lower), and judge whether anything is relevant (service.search.relevance)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kb.languages import search_mode_for
from kb.metrics import RETRIEVAL_LATENCY
from kb.models import Passage, SearchFilter
from kb.ports import Embedder, Reranker, SearchMode, VectorIndex
from kb.settings import RetrievalSettings
from service.search.relevance import judge


# Candidates searched beyond `limit` when boilerplate is on the first page: at least this many, or `limit` more.
_MIN_OVERFETCH = 5


def demote_boilerplate(passages: Sequence[Passage], weight: float) -> list[Passage]:
    """`passages` (best first) re-ranked with each boilerplate passage's score (fused or reranked) times `weight`
    (RetrievalSettings.boilerplate_weight; 1: unchanged): contents pages, glossaries and exhibit indexes repeat the
    words of many questions but rarely answer them. A negative score (a cosine in dense mode, a cross-encoder logit)
    is divided instead, so a demoted score is always lower. The passages carry the score they are ranked by; the
    order of equal scores is kept."""
    if weight >= 1 or not any(p.boilerplate for p in passages):
        return list(passages)
    for passage in passages:
        if passage.boilerplate:
            passage.score = passage.score * weight if passage.score >= 0 else passage.score / weight
    return sorted(passages, key=lambda p: -p.score)


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
        setting expand_neighbours). Boilerplate passages rank lower (`demote_boilerplate`); relevance is judged on the
        passages returned, and best_similarity stays the best dense similarity in the filter, boilerplate or not."""
        started = time.perf_counter()
        limit = top_k or self._settings.top_k
        vector = self._embedder.embed_query(query)
        search_mode = search_mode_for(query, mode or self._settings.mode, self._languages)
        weight = self._settings.boilerplate_weight
        if self._reranker is not None:
            candidates = self._index.search(vector, query, max(limit, self._settings.rerank_candidates), filter, search_mode)
            # Every candidate reranked (the cross-encoder scores them all anyway), so that content can take the place
            # of boilerplate that falls below it.
            passages = demote_boilerplate(self._reranker.rerank(query, candidates, len(candidates)), weight)[:limit]
        else:
            passages = self._index.search(vector, query, limit, filter, search_mode)
            if weight < 1 and any(p.boilerplate for p in passages):
                # Only a page holding boilerplate can change; its content successors are a little further down.
                deeper = self._index.search(vector, query, limit + max(limit, _MIN_OVERFETCH), filter, search_mode)
                passages = demote_boilerplate(deeper, weight)[:limit]
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
