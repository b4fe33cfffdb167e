"""VectorIndex on Qdrant Edge: an in-process shard on disk, the embedded default."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeShard,
    EdgeSparseVectorParams,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    Fusion,
    HnswIndexConfig,
    KeywordIndexParams,
    MatchAny,
    MatchValue,
    Modifier,
    MultiVectorComparator,
    MultiVectorConfig,
    PayloadSchemaType,
    Point,
    Prefetch,
    Query,
    QueryRequest,
    RangeDateTime,
    RangeFloat,
    ScrollRequest,
    UpdateOperation,
    VectorStorageDatatype,
)

if TYPE_CHECKING:
    from qdrant_edge import ConditionType

from kb.adapters.bm25 import (
    DENSE_VECTOR,
    RRF_K,
    SENTENCE_VECTOR,
    SPARSE_VECTOR,
    Bm25Encoder,
    Bm25Terms,
    HybridFusion,
    sentence_multivector,
    sentence_vectors_per_chunk,
)
from kb.models import Chunk, Passage, SearchFilter
from kb.ports import SearchMode

log = logging.getLogger(__name__)

_PAYLOAD_INDEXES: dict[str, PayloadSchemaType | KeywordIndexParams] = {
    "document_id": PayloadSchemaType.Keyword,
    "groups": KeywordIndexParams(is_tenant=True),
    "version": PayloadSchemaType.Integer,
    "state": PayloadSchemaType.Keyword,
    "ordinal": PayloadSchemaType.Integer,  # neighbouring chunks
    "created_at": PayloadSchemaType.Datetime,
}


class _MatchesNothing(Exception):
    """A filter with an empty list (e.g. a caller in no group) can match no chunk."""


# A new version's chunks are written "staged" and are invisible until `publish` swaps them in.
_NOT_STAGED = FieldCondition(key="state", match=MatchValue("staged"))


def _document_filter(document_id: str, *conditions: ConditionType) -> Filter:
    return Filter(must=[FieldCondition(key="document_id", match=MatchValue(document_id)), *conditions])


def _edge_filter(search_filter: SearchFilter | None, *extra: ConditionType) -> Filter:
    conditions: list[ConditionType] = list(extra)
    for key, values in (
        ("groups", search_filter.groups if search_filter else None),
        ("document_id", search_filter.document_ids if search_filter else None),
    ):
        if values is None:
            continue
        if not values:
            raise _MatchesNothing
        conditions.append(FieldCondition(key=key, match=MatchAny(list(values))))
    if search_filter is not None:
        for key, values in search_filter.metadata_conditions():
            if not values:
                raise _MatchesNothing
            conditions.append(FieldCondition(key=key, match=MatchAny(values)))
        gte, lt = search_filter.created_range()
        if gte or lt:
            conditions.append(FieldCondition(key="created_at", range=RangeDateTime(gte=gte, lt=lt)))
    return Filter(must=conditions or None, must_not=[_NOT_STAGED])


def _config(dimension: int, *, sentences: bool) -> EdgeConfig:
    vectors = {DENSE_VECTOR: EdgeVectorParams(size=dimension, distance=Distance.Cosine)}
    if sentences:
        vectors[SENTENCE_VECTOR] = EdgeVectorParams(
            size=dimension,
            distance=Distance.Cosine,
            multivector_config=MultiVectorConfig(MultiVectorComparator.MaxSim),
            # Only re-scores candidates: no graph to build. Half the memory; scores differ from float32 by ~1e-3.
            hnsw_config=HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10000),
            datatype=VectorStorageDatatype.Float16,
        )
    return EdgeConfig(vectors=vectors, sparse_vectors={SPARSE_VECTOR: EdgeSparseVectorParams(modifier=Modifier.Idf)})


class EdgeVectorIndex:
    """Named dense vector "dense" (cosine), multivector "sentences" (MaxSim) and sparse "bm25" (IDF) in one Edge
    shard at `path`. A shard written before sentence vectors existed opens without them (`sentence_vectors` False).

    The shard is safe to share between threads, but every call (reads too) takes one lock: `publish` is two
    operations (drop the old version, unstage the new one) and no search may run between them. This costs no
    parallelism: Edge holds the GIL during every call, so two searches never run in parallel anyway.
    """

    def __init__(
        self,
        path: Path,
        dimension: int,
        *,
        candidates: int = 50,
        fusion: HybridFusion | None = None,
        terms: Bm25Terms | None = None,
    ) -> None:
        self._path = Path(path)
        self._dimension = dimension
        self._fusion = fusion or HybridFusion(candidates=candidates)
        self._bm25 = Bm25Encoder(terms)
        self._write_lock = threading.Lock()
        self._closed = False
        self.sentence_vectors = True
        if self._path.is_dir() and any(self._path.iterdir()):
            # Passing the config makes Edge refuse a shard built for another dimension (another embedder).
            try:
                self._shard = EdgeShard.load(str(self._path), _config(dimension, sentences=True))
            except Exception as error:
                try:
                    self._shard = EdgeShard.load(str(self._path), _config(dimension, sentences=False))
                except Exception:
                    raise error from None
                self.sentence_vectors = False
                log.warning(
                    "vector index %s has no sentence vectors (written by an earlier version): hybrid search fuses "
                    "chunk vectors and BM25 alone until it is rebuilt (a new data directory, documents uploaded again)",
                    self._path,
                )
        else:
            self._path.mkdir(parents=True, exist_ok=True)
            self._shard = EdgeShard.create(str(self._path), _config(dimension, sentences=True))
        self._ensure_payload_indexes()

    def _ensure_payload_indexes(self) -> None:
        existing = self._shard.info().payload_schema
        for field, schema in _PAYLOAD_INDEXES.items():
            if field not in existing:
                self._shard.update(UpdateOperation.create_field_index(field, schema))
        self._shard.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"vector index at {self._path} is closed")

    def upsert(
        self,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
        sentence_vectors: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        per_chunk = sentence_vectors_per_chunk(chunks, vectors, sentence_vectors)
        if not chunks:
            return
        points = []
        for chunk, vector, sentences in zip(chunks, vectors, per_chunk, strict=True):
            dense = [float(x) for x in vector]
            named: dict[str, Any] = {
                DENSE_VECTOR: dense,
                SPARSE_VECTOR: self._bm25.document(chunk.embed_text or chunk.text),
            }
            if self.sentence_vectors:
                named[SENTENCE_VECTOR] = sentence_multivector(dense, sentences)
            points.append(Point(chunk.chunk_id, named, chunk.payload()))
        with self._write_lock:
            self._check_open()
            # The WAL makes this survive a killed process. Flushing (for a power cut) waits for `publish`, the one
            # write a reader depends on: a flush per batch cost ~45 ms each on this disk, a third of ingestion time.
            self._shard.update(UpdateOperation.upsert_points(points))

    def delete_document(self, document_id: str) -> None:
        with self._write_lock:
            self._check_open()
            self._shard.update(UpdateOperation.delete_points_by_filter(_document_filter(document_id)))
            self._shard.flush()

    def discard_staged(self, document_id: str) -> None:
        staged = _document_filter(document_id, FieldCondition(key="state", match=MatchValue("staged")))
        with self._write_lock:
            self._check_open()
            self._shard.update(UpdateOperation.delete_points_by_filter(staged))

    def publish(self, document_id: str, version: int) -> None:
        older = Filter(
            must=[FieldCondition(key="document_id", match=MatchValue(document_id))],
            must_not=[FieldCondition(key="version", match=MatchValue(version))],
        )
        new = _document_filter(document_id, FieldCondition(key="version", match=MatchValue(version)))
        with self._write_lock:
            self._check_open()
            self._shard.update(UpdateOperation.delete_points_by_filter(older))
            self._shard.update(UpdateOperation.set_payload_by_filter(new, {"state": "live"}))
            self._shard.flush()

    def search(
        self,
        vector: Sequence[float],
        text: str,
        limit: int,
        filter: SearchFilter | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[Passage]:
        if limit <= 0:
            return []
        try:
            edge_filter = _edge_filter(filter)
        except _MatchesNothing:
            return []
        query_vector = [float(x) for x in vector]
        dense = Query.Nearest(query_vector, using=DENSE_VECTOR)
        sparse_vector = self._bm25.query(text)
        # A query of stopwords only has no terms: nothing can match it on the sparse side.
        sparse = Query.Nearest(sparse_vector, using=SPARSE_VECTOR) if sparse_vector.indices else None

        if mode == "dense":
            request = QueryRequest(limit=limit, query=dense, filter=edge_filter, with_payload=True, with_vector=False)
        elif mode == "sparse":
            if sparse is None:
                return []
            request = QueryRequest(limit=limit, query=sparse, filter=edge_filter, with_payload=True, with_vector=False)
        elif mode == "hybrid":
            fusion = self._fusion
            depth = max(limit, fusion.candidates)
            dense_candidates = Prefetch(limit=depth, query=dense, filter=edge_filter)
            sparse_candidates = Prefetch(limit=depth, query=sparse, filter=edge_filter) if sparse is not None else None
            pool = [p for p in (dense_candidates, sparse_candidates) if p is not None]
            by_side = {
                DENSE_VECTOR: dense_candidates,
                SPARSE_VECTOR: sparse_candidates,
                # The dense and BM25 candidates, re-scored by their best sentence.
                SENTENCE_VECTOR: Prefetch(
                    limit=depth,
                    query=Query.Nearest([query_vector], using=SENTENCE_VECTOR),
                    prefetches=pool,
                    filter=edge_filter,
                ),
            }
            prefetches = [
                by_side[side]
                for side in fusion.prefetch_sides(has_sparse=sparse is not None, has_sentences=self.sentence_vectors)
            ]
            if not prefetches:
                return []
            request = QueryRequest(
                limit=limit,
                prefetches=prefetches,
                # The stubs omit Fusion's variants.
                query=Fusion.Rrf(k=RRF_K) if fusion.method == "rrf" else Fusion.Dbsf(),  # type: ignore[arg-type]
                filter=edge_filter,
                with_payload=True,
                with_vector=False,
            )
        else:
            raise ValueError(f"unknown search mode {mode!r}")
        with self._write_lock:
            self._check_open()
            points = self._shard.query(request)
        return [Passage.from_payload(point.payload or {}, point.score) for point in points]

    def neighbours(self, passage: Passage, radius: int, filter: SearchFilter | None = None) -> list[Passage]:
        if radius < 0:
            raise ValueError("radius must be >= 0")
        try:
            edge_filter = _edge_filter(
                filter,
                FieldCondition(key="document_id", match=MatchValue(passage.document_id)),
                FieldCondition(
                    key="ordinal", range=RangeFloat(gte=passage.ordinal - radius, lte=passage.ordinal + radius)
                ),
            )
        except _MatchesNothing:
            return []
        request = ScrollRequest(limit=2 * radius + 1, filter=edge_filter, with_payload=True, with_vector=False)
        with self._write_lock:
            self._check_open()
            records, _next = self._shard.scroll(request)
        found = [Passage.from_payload(record.payload or {}, passage.score) for record in records]
        return sorted(found, key=lambda p: p.ordinal)

    def document_chunks(
        self, document_id: str, filter: SearchFilter | None = None, limit: int = 1000
    ) -> list[Passage]:
        if limit <= 0:
            return []
        try:
            # Ordinals run 0..n-1 within a version: the range keeps the first `limit` without sorting the document.
            edge_filter = _edge_filter(
                filter,
                FieldCondition(key="document_id", match=MatchValue(document_id)),
                FieldCondition(key="ordinal", range=RangeFloat(lt=limit)),
            )
        except _MatchesNothing:
            return []
        request = ScrollRequest(limit=limit, filter=edge_filter, with_payload=True, with_vector=False)
        with self._write_lock:
            self._check_open()
            records, _next = self._shard.scroll(request)
        return sorted((Passage.from_payload(r.payload or {}, 0.0) for r in records), key=lambda p: p.ordinal)

    def count(self, filter: SearchFilter | None = None) -> int:
        try:
            edge_filter = _edge_filter(filter)
        except _MatchesNothing:
            return 0
        with self._write_lock:
            self._check_open()
            return self._shard.count(CountRequest(exact=True, filter=edge_filter))

    def optimize(self) -> bool:
        """Build HNSW and payload indexes; Edge runs no optimizer in the background.

        Edge calls keep the GIL: this blocks every thread of the process, an event loop included, for
        as long as it runs (~8-14 s for 20k 384-d points on 2 cores). Run it outside serving, e.g. after
        a bulk ingest. Unoptimised search is a linear scan, still ~1.5 ms at 20k points.
        """
        with self._write_lock:
            self._check_open()
            return self._shard.optimize()

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._shard.flush()
            self._shard.close()
