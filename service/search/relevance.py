"""Relevance gating: whether what retrieval found is on topic at all, or the answer is "no information"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kb.models import Passage
from service.search.lexical import coverage

# A query whose content terms mostly occur in a passage is on topic even when the dense model (English-only MiniLM by
# default) cannot tell, as with Chinese questions.
LEXICAL_RELEVANCE = 0.6


@dataclass(frozen=True)
class Relevance:
    relevant: bool
    best_similarity: float  # the best dense similarity in the caller's filter
    best_coverage: float  # the largest share of the query's content terms found in one hit


def judge(query: str, passages: Sequence[Passage], best_similarity: float, min_relevance: float) -> Relevance:
    best_coverage = max((coverage(query, p.text) for p in passages), default=0.0)
    relevant = bool(passages) and (best_similarity >= min_relevance or best_coverage >= LEXICAL_RELEVANCE)
    return Relevance(relevant, best_similarity, best_coverage)
