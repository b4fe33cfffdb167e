"""What a chunk's point holds, the same in every adapter: named vectors and the payload fields that are indexed."""

from __future__ import annotations

from typing import Literal

DENSE_VECTOR = "dense"  # the chunk's embedding (cosine)
SPARSE_VECTOR = "bm25"  # BM25 terms (kb.index.bm25), IDF applied by the index
# A multivector (MaxSim) per chunk: the chunk's own dense vector and one per sentence of it (ingest.chunk.sentences).
# No HNSW graph: it only re-scores the dense and BM25 candidates of a hybrid query (kb.index.fusion.HybridFusion).
SENTENCE_VECTOR = "sentences"

PayloadIndex = Literal["keyword", "tenant", "integer", "datetime"]
# Payload fields the filters use, by kind; "tenant": a keyword Qdrant lays out per value (the access groups).
PAYLOAD_INDEXES: dict[str, PayloadIndex] = {
    "document_id": "keyword",
    "groups": "tenant",
    "version": "integer",
    "state": "keyword",
    "ordinal": "integer",  # neighbouring chunks
    "created_at": "datetime",
}
