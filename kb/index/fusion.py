"""How a hybrid query fuses its candidate lists: the policy both adapters run inside Qdrant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kb.index.schema import DENSE_VECTOR, SENTENCE_VECTOR, SPARSE_VECTOR

if TYPE_CHECKING:
    from kb.settings import IndexSettings

# The constant of the original RRF paper; set explicitly because qdrant-client's default (2) and
# Edge's (no default) differ.
RRF_K = 60

FusionMethod = Literal["rrf", "dbsf"]


@dataclass(frozen=True)
class HybridFusion:
    """How a hybrid query fuses its candidate lists, inside Qdrant on both adapters.

    Three lists: the dense side (chunk vectors), the BM25 side, and the sentence side: the union of the first two's
    candidates re-scored by their best-matching sentence (MaxSim over SENTENCE_VECTOR, the chunk vector included). A
    question usually paraphrases one sentence, which a 200-token chunk's single vector blurs; the sentence side
    lifted hybrid above BM25 alone where it had been below (bench/RESULTS.md, "The best-sentence list"). Re-scoring
    candidates only keeps its cost flat as the index grows (no scan of every sentence). An index without sentence
    vectors (built before they existed) fuses dense and BM25 alone.

    "dbsf" (default): distribution-based score fusion, each list's scores normalised by mean +- 3 sigma and
    summed, so a list whose best candidate stands out (a strong BM25 match) counts more than a flat list; it beat
    RRF on every English set here. "rrf": reciprocal rank fusion with k=60.
    Weights are whole numbers: a list of weight n is prefetched n times, which both Qdrant's DBSF and RRF sum
    (neither adapter offers DBSF weights, and Edge 0.9 applies RRF weights in another order than qdrant-client).
    Dense 1 : sentences 2 : BM25 3 by default: the English-only MiniLM is the weaker model on specialised text, and
    its sentence scores are the better half of it (bench/RESULTS.md, "Retrieval quality" and the weight sweeps under
    "The best-sentence list").
    A side is also left out per query (RetrievalService: dense and sentence sides off for a language the embedder
    lacks).
    """

    method: FusionMethod = "dbsf"
    candidates: int = 50  # per side
    dense_weight: int = 1
    sparse_weight: int = 3
    sentence_weight: int = 2

    def __post_init__(self) -> None:
        if self.method not in ("rrf", "dbsf"):
            raise ValueError(f"unknown fusion method {self.method!r}")
        if self.candidates < 1:
            raise ValueError("fusion candidates must be >= 1")
        weights = (self.dense_weight, self.sparse_weight, self.sentence_weight)
        if min(weights) < 0 or sum(weights) == 0:
            raise ValueError("fusion weights must be >= 0 and not all 0")

    @classmethod
    def from_settings(cls, index: IndexSettings) -> HybridFusion:
        return cls(index.fusion, index.candidates, index.dense_weight, index.sparse_weight, index.sentence_weight)

    def prefetch_sides(self, has_sparse: bool = True, has_sentences: bool = True) -> list[str]:
        """The lists to fuse, by vector name, each as often as its weight: the sparse side only if the query has
        terms, the sentence side only if the index holds sentence vectors."""
        return (
            [DENSE_VECTOR] * self.dense_weight
            + ([SENTENCE_VECTOR] * self.sentence_weight if has_sentences else [])
            + ([SPARSE_VECTOR] * self.sparse_weight if has_sparse else [])
        )
