"""What both VectorIndex adapters share: vector names, fusion constant and the BM25 sparse encoder.

Both adapters encode with the same qdrant_edge.Bm25 configuration, so an index written by one is
searched the same way by the other and results stay congruent between embedded and server modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qdrant_edge import Bm25, Bm25Config, Language, SparseVector, StopwordsSet, TokenizerType

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"
# The constant of the original RRF paper; set explicitly because qdrant-client's default (2) and
# Edge's (no default) differ.
RRF_K = 60

FusionMethod = Literal["rrf", "dbsf"]


@dataclass(frozen=True)
class HybridFusion:
    """How a hybrid query fuses its dense and BM25 candidate lists, inside Qdrant on both adapters.

    "dbsf" (default): distribution-based score fusion, each side's scores normalised by mean +- 3 sigma and
    summed, so a side whose best candidate stands out (a strong BM25 match) counts more than a flat list; it beat
    RRF on every English set here (bench/RESULTS.md). "rrf": reciprocal rank fusion with k=60.
    No per-side weights: Qdrant has none for DBSF, and Edge 0.9 applies RRF weights to its prefetches in reverse
    order with another formula than qdrant-client, so weighted RRF would not be congruent between the adapters.
    A side is left out per query instead (RetrievalService: dense side off for a language the embedder lacks).
    """

    method: FusionMethod = "dbsf"
    candidates: int = 50  # per side

    def __post_init__(self) -> None:
        if self.method not in ("rrf", "dbsf"):
            raise ValueError(f"unknown fusion method {self.method!r}")
        if self.candidates < 1:
            raise ValueError("fusion candidates must be >= 1")


def bm25_config() -> Bm25Config:
    # The multilingual tokenizer segments Chinese into words (检察院 -> 检察 + 院) where the default
    # word tokenizer keeps a whole run of Han characters as one token, so a sub-term never matched.
    # English keeps its snowball stemmer; stopwords cover both languages (的, 了, the, of, ...).
    return Bm25Config(
        tokenizer=TokenizerType.Multilingual,
        language="english",
        stopwords=StopwordsSet(languages={Language.English, Language.Chinese}),
    )


class Bm25Encoder:
    """Term-frequency vectors for documents, unit weights for queries; the index applies IDF."""

    def __init__(self) -> None:
        self._model = Bm25(bm25_config())

    def document(self, text: str) -> SparseVector:
        return self._model.embed_document(text)

    def query(self, text: str) -> SparseVector:
        return self._model.embed_query(text)
