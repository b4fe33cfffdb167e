"""Ranking metrics over (ranked unit ids, gold unit ids) pairs."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np

TOP_K = 10


def hit_at(ranked: Sequence[str], gold: Collection[str], k: int) -> float:
    """1.0 if any gold unit is in the top k, else 0.0.

    Averaged over questions this is the recall@k reported here: the share of questions with at least one gold
    unit in the top k (the usual "hit rate" reading for QA retrieval; with one gold per question it equals the
    IR definition, the share of gold units found).
    """
    return 1.0 if any(unit in gold for unit in ranked[:k]) else 0.0


def reciprocal_rank(ranked: Sequence[str], gold: Collection[str], k: int = TOP_K) -> float:
    """1 / rank of the first gold unit within the top k, 0.0 if none is there."""
    for rank, unit in enumerate(ranked[:k], 1):
        if unit in gold:
            return 1.0 / rank
    return 0.0


def ndcg(ranked: Sequence[str], gold: Collection[str], k: int = TOP_K) -> float:
    """nDCG@k with binary relevance: DCG = sum of 1/log2(rank+1) over gold units in the top k, divided by the
    DCG of the ideal ranking (all gold units first, at most k of them)."""
    if not gold:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, unit in enumerate(ranked[:k], 1) if unit in gold)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), k) + 1))
    return dcg / ideal


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else 0.0


def summarize(rankings: Sequence[tuple[Sequence[str], Collection[str]]]) -> dict[str, float]:
    """Mean recall@1/5/10, MRR@10 and nDCG@10 over (ranked unit ids, gold unit ids) pairs."""
    n = len(rankings)
    if n == 0:
        return {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0}
    return {
        "recall@1": sum(hit_at(r, g, 1) for r, g in rankings) / n,
        "recall@5": sum(hit_at(r, g, 5) for r, g in rankings) / n,
        "recall@10": sum(hit_at(r, g, 10) for r, g in rankings) / n,
        "mrr@10": sum(reciprocal_rank(r, g, TOP_K) for r, g in rankings) / n,
        "ndcg@10": sum(ndcg(r, g, TOP_K) for r, g in rankings) / n,
    }
