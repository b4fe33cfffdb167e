"""Retrieve: the evidence for an answer. Documents the question is about, whole where they fit the budget; a search
(inside those that do not, or everywhere) deep enough to fill the budget."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kb.models import Passage, SearchFilter
from service.ask.packing import Budget, Packer
from service.ask.scope import Scope
from service.search.service import RetrievalService

# A document of more chunks than budget / this cannot fit whole: only a document's last chunk and its short
# headings fall far below the chunk size, so fetching more would only read what is then thrown away.
_MIN_CHUNK_TOKENS = 16


@dataclass
class Evidence:
    whole: list[Passage] = field(default_factory=list)  # whole documents, each in document order
    retrieved: list[Passage] = field(default_factory=list)  # search hits, best first
    relevant: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    query: str | None = None  # what was searched with (a follow-up made standalone), if anything was


class RetrieveStage:
    def __init__(self, retrieval: RetrievalService, packer: Packer) -> None:
        self._retrieval = retrieval
        self._packer = packer

    async def whole_documents(
        self, document_ids: Sequence[str], filter: SearchFilter | None, tokens: int
    ) -> tuple[list[Passage], list[str]]:
        """The chunks of the documents that fit `tokens` whole (in the order asked, each in document order), and the
        documents that do not (or that the caller cannot see): those are answered from retrieval inside them."""
        whole: list[Passage] = []
        rest: list[str] = []
        for document_id in dict.fromkeys(document_ids):
            limit = max(1, tokens // _MIN_CHUNK_TOKENS) + 1
            # The index call off the loop; token counting stays on it, like all of the generator's other calls.
            chunks: list[Passage] = []
            if tokens > 0:
                chunks = await asyncio.to_thread(self._retrieval.document_chunks, document_id, filter, limit)
            costs = self._packer.costs(len(whole) + 1, chunks)
            if chunks and len(chunks) < limit and sum(costs) <= tokens:
                whole.extend(chunks)
                tokens -= sum(costs)
            else:
                rest.append(document_id)
        return whole, rest

    async def gather(self, scope: Scope, budget: Budget, query: Callable[[], Awaitable[str]]) -> Evidence:
        """`query`: the retrieval query, asked for only when a search is needed (it may cost a generator call)."""
        evidence = Evidence()
        search_in = scope.filter
        if scope.document_ids:
            started = time.perf_counter()
            evidence.whole, rest = await self.whole_documents(scope.document_ids, scope.filter, budget.context)
            evidence.timings_ms["documents"] = (time.perf_counter() - started) * 1000
            if scope.filter is not None and evidence.whole:
                search_in = dataclasses.replace(scope.filter, document_ids=rest)
        evidence.relevant = bool(evidence.whole)
        if evidence.whole and not (search_in is not None and search_in.document_ids):
            return evidence  # every document asked about is there whole
        tokens = budget.context - sum(self._packer.costs(1, evidence.whole))
        evidence.query = await query()
        result = await self._retrieval.search(evidence.query, top_k=self._packer.candidates(tokens), filter=search_in)
        evidence.timings_ms["retrieval"] = result.latency_ms
        # Inside documents the reader named, a weak match is still the best part of what they asked about.
        if result.relevant or (scope.document_ids and result.passages):
            evidence.retrieved, evidence.relevant = result.passages, True
        return evidence
