"""VectorIndex on Qdrant Edge: an in-process shard on disk, the embedded default."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

from kb.index import plan
from kb.index.bm25 import Bm25Encoder, Bm25Terms
from kb.index.fusion import RRF_K, HybridFusion
from kb.index.schema import DENSE_VECTOR, PAYLOAD_INDEXES, SENTENCE_VECTOR, SPARSE_VECTOR, PayloadIndex
from kb.models import Chunk, Passage, SearchFilter
from kb.ports import SearchMode

log = logging.getLogger(__name__)

_PAYLOAD_SCHEMA: dict[PayloadIndex, PayloadSchemaType | KeywordIndexParams] = {
    "keyword": PayloadSchemaType.Keyword,
    "tenant": KeywordIndexParams(is_tenant=True),
    "integer": PayloadSchemaType.Integer,
    "datetime": PayloadSchemaType.Datetime,
}


def _condition(condition: plan.Condition) -> FieldCondition:
    match condition:
        case plan.Match(key, value):
            return FieldCondition(key=key, match=MatchValue(value))
        case plan.MatchAny(key, values):
            return FieldCondition(key=key, match=MatchAny(list(values)))
        case plan.NumberRange(key, gte, lte, lt):
            return FieldCondition(key=key, range=RangeFloat(gte=gte, lte=lte, lt=lt))
        case plan.DatetimeRange(key, gte, lt):
            return FieldCondition(key=key, range=RangeDateTime(gte=gte, lt=lt))
    raise TypeError(f"unknown condition {condition!r}")


def _filter(conditions: plan.Conditions) -> Filter:
    return Filter(
        must=[_condition(c) for c in conditions.must] or None,
        must_not=[_condition(c) for c in conditions.must_not] or None,
    )


def _search_request(search: plan.SearchPlan) -> QueryRequest:
    edge_filter = _filter(search.conditions)

    def query(using: str) -> Query:
        if using == DENSE_VECTOR:
            return Query.Nearest(search.dense, using=DENSE_VECTOR)
        if using == SPARSE_VECTOR:
            return Query.Nearest(search.sparse, using=SPARSE_VECTOR)  # type: ignore[arg-type]
        return Query.Nearest([search.dense], using=SENTENCE_VECTOR)

    if search.using is not None:
        return QueryRequest(
            limit=search.limit, query=query(search.using), filter=edge_filter, with_payload=True, with_vector=False
        )
    translated: dict[plan.Side, Prefetch] = {}

    def prefetch(side: plan.Side) -> Prefetch:
        # Each side once: a side fused n times (its weight) and re-scored by the sentence side is one Prefetch.
        if side not in translated:
            if side.rescores:
                translated[side] = Prefetch(
                    limit=side.limit,
                    query=query(side.using),
                    prefetches=[prefetch(s) for s in side.rescores],
                    filter=edge_filter,
                )
            else:
                translated[side] = Prefetch(limit=side.limit, query=query(side.using), filter=edge_filter)
        return translated[side]

    return QueryRequest(
        limit=search.limit,
        prefetches=[prefetch(side) for side in search.sides],
        # The stubs omit Fusion's variants.
        query=Fusion.Rrf(k=RRF_K) if search.fusion == "rrf" else Fusion.Dbsf(),  # type: ignore[arg-type]
        filter=edge_filter,
        with_payload=True,
        with_vector=False,
    )


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
        for field, kind in PAYLOAD_INDEXES.items():
            if field not in existing:
                self._shard.update(UpdateOperation.create_field_index(field, _PAYLOAD_SCHEMA[kind]))
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
        planned = plan.points(chunks, vectors, sentence_vectors, self._bm25, with_sentences=self.sentence_vectors)
        if not planned:
            return
        points = []
        for point in planned:
            named: dict[str, Any] = {DENSE_VECTOR: point.dense, SPARSE_VECTOR: point.sparse}
            if point.sentences is not None:
                named[SENTENCE_VECTOR] = point.sentences
            points.append(Point(point.id, named, point.payload))
        with self._write_lock:
            self._check_open()
            # The WAL makes this survive a killed process. Flushing (for a power cut) waits for `publish`, the one
            # write a reader depends on: a flush per batch cost ~45 ms each on this disk, a third of ingestion time.
            self._shard.update(UpdateOperation.upsert_points(points))

    def delete_document(self, document_id: str) -> None:
        with self._write_lock:
            self._check_open()
            self._shard.update(UpdateOperation.delete_points_by_filter(_filter(plan.whole_document(document_id))))
            self._shard.flush()

    def discard_staged(self, document_id: str) -> None:
        staged = _filter(plan.staged_chunks(document_id))
        with self._write_lock:
            self._check_open()
            self._shard.update(UpdateOperation.delete_points_by_filter(staged))

    def publish(self, document_id: str, version: int) -> None:
        swap = plan.publish(document_id, version)
        with self._write_lock:
            self._check_open()
            self._shard.update(UpdateOperation.delete_points_by_filter(_filter(swap.older)))
            self._shard.update(UpdateOperation.set_payload_by_filter(_filter(swap.new), dict(plan.LIVE_PAYLOAD)))
            self._shard.flush()

    def search(
        self,
        vector: Sequence[float],
        text: str,
        limit: int,
        filter: SearchFilter | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[Passage]:
        search = plan.search(
            vector,
            text,
            limit,
            filter,
            mode,
            fusion=self._fusion,
            encoder=self._bm25,
            sentence_vectors=self.sentence_vectors,
        )
        if search is None:
            return []
        request = _search_request(search)
        with self._write_lock:
            self._check_open()
            points = self._shard.query(request)
        return [Passage.from_payload(point.payload or {}, point.score) for point in points]

    def neighbours(self, passage: Passage, radius: int, filter: SearchFilter | None = None) -> list[Passage]:
        return self._scroll(plan.neighbours(passage, radius, filter))

    def document_chunks(
        self, document_id: str, filter: SearchFilter | None = None, limit: int = 1000
    ) -> list[Passage]:
        return self._scroll(plan.document_chunks(document_id, filter, limit))

    def _scroll(self, scroll: plan.ScrollPlan | None) -> list[Passage]:
        if scroll is None:
            return []
        request = ScrollRequest(
            limit=scroll.limit, filter=_filter(scroll.conditions), with_payload=True, with_vector=False
        )
        with self._write_lock:
            self._check_open()
            records, _next = self._shard.scroll(request)
        return plan.in_document_order(plan.passages(records, scroll.score))

    def count(self, filter: SearchFilter | None = None) -> int:
        conditions = plan.visible(filter)
        if conditions is None:
            return 0
        with self._write_lock:
            self._check_open()
            return self._shard.count(CountRequest(exact=True, filter=_filter(conditions)))

    def optimize(self) -> bool:
        """Build HNSW and payload indexes; Edge runs no optimizer in the background.

        Edge calls keep the GIL: this blocks every thread of the process, an event loop included, for
        as long as it runs (seconds on a large shard: bench/RESULTS.md, "Retrieval latency at scale", column
        "optimize s"). Run it outside serving, e.g. after a bulk ingest. Unoptimised search is a linear scan,
        still fast at tens of thousands of points.
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
