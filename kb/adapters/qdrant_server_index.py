"""VectorIndex on qdrant-client: a Qdrant server or cluster in production, local mode in tests."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from kb.index import plan
from kb.index.bm25 import Bm25Encoder, Bm25Terms
from kb.index.fusion import RRF_K, HybridFusion
from kb.index.schema import DENSE_VECTOR, PAYLOAD_INDEXES, SENTENCE_VECTOR, SPARSE_VECTOR, PayloadIndex
from kb.models import Chunk, Passage, SearchFilter
from kb.ports import SearchMode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterLayout:
    """How a collection kb creates on a Qdrant server is spread over a cluster (KB_INDEX__SHARDS, ...): fixed when the
    collection is created (its shard count cannot change later without re-creating it, so leave room to grow)."""

    shards: int = 1
    replication_factor: int = 1
    write_consistency_factor: int = 1
    # "memory": Qdrant's defaults, every vector and the payload in RAM. "disk" (deploy/README.md, layout B): an int8
    # copy of the chunk vectors and their HNSW graph stay in RAM; the float32 originals (read to rescore), the
    # sentence vectors, the BM25 index and the payload go on disk, held in the page cache as far as RAM allows.
    storage: str = "memory"

_UPSERT_BATCH = 256

_PAYLOAD_SCHEMA: dict[PayloadIndex, models.PayloadSchemaType | models.KeywordIndexParams] = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "tenant": models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
    "integer": models.PayloadSchemaType.INTEGER,
    "datetime": models.PayloadSchemaType.DATETIME,
}


def _condition(condition: plan.Condition) -> models.FieldCondition:
    match condition:
        case plan.Match(key, value):
            return models.FieldCondition(key=key, match=models.MatchValue(value=value))
        case plan.MatchAny(key, values):
            return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))
        case plan.NumberRange(key, gte, lte, lt):
            return models.FieldCondition(key=key, range=models.Range(gte=gte, lte=lte, lt=lt))
        case plan.DatetimeRange(key, gte, lt):
            return models.FieldCondition(key=key, range=models.DatetimeRange(gte=gte, lt=lt))
    raise TypeError(f"unknown condition {condition!r}")


def _filter(conditions: plan.Conditions) -> models.Filter:
    return models.Filter(
        must=[_condition(c) for c in conditions.must] or None,
        must_not=[_condition(c) for c in conditions.must_not] or None,
    )


def _sparse(terms: plan.SparseTerms) -> models.SparseVector:
    return models.SparseVector(indices=terms.indices, values=terms.values)


def _query(search: plan.SearchPlan, using: str) -> list[float] | list[list[float]] | models.SparseVector:
    if using == DENSE_VECTOR:
        return search.dense
    if using == SPARSE_VECTOR:
        assert search.sparse is not None  # the plan has no BM25 side without terms
        return _sparse(search.sparse)
    return [search.dense]


def _prefetches(search: plan.SearchPlan, query_filter: models.Filter) -> list[models.Prefetch]:
    translated: dict[plan.Side, models.Prefetch] = {}

    def prefetch(side: plan.Side) -> models.Prefetch:
        # Each side once: a side fused n times (its weight) and re-scored by the sentence side is one Prefetch.
        if side not in translated:
            translated[side] = models.Prefetch(
                prefetch=[prefetch(s) for s in side.rescores] or None,
                query=_query(search, side.using),
                using=side.using,
                limit=side.limit,
                filter=query_filter,
            )
        return translated[side]

    return [prefetch(side) for side in search.sides]


def _is_local_mode(client: QdrantClient) -> bool:
    options = client.init_options
    return options.get("location") == ":memory:" or options.get("path") is not None


class QdrantServerIndex:
    """Collection with named dense vector "dense" (cosine), multivector "sentences" (MaxSim) and sparse "bm25" (IDF),
    as EdgeVectorIndex. A collection created before sentence vectors existed is used without them."""

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        dimension: int,
        *,
        candidates: int = 50,
        fusion: HybridFusion | None = None,
        terms: Bm25Terms | None = None,
        layout: ClusterLayout | None = None,
    ) -> None:
        self._client = client
        self._layout = layout or ClusterLayout()
        self._collection = collection
        self._dimension = dimension
        self._fusion = fusion or HybridFusion(candidates=candidates)
        self._bm25 = Bm25Encoder(terms)
        self._local = _is_local_mode(client)
        # Local mode is plain Python over numpy arrays and SQLite, not safe for a search running while
        # a worker thread upserts; a server client is (httpx), and must not be serialised.
        self._lock: threading.Lock | None = threading.Lock() if self._local else None
        self.sentence_vectors = True
        self._set_up = False
        try:
            self._ensure_collection()
        except (ResponseHandlingException, UnexpectedResponse) as exc:
            if isinstance(exc, UnexpectedResponse) and (exc.status_code or 0) < 500:
                raise
            # A server not reachable yet (restarting, failing over) does not stop the service from starting: every
            # call checks the collection again until it succeeds, and fails (503, /readyz) meanwhile.
            log.warning("Qdrant is not reachable (%s): the collection is checked on first use", exc)

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str | None,
        collection: str,
        dimension: int,
        *,
        candidates: int = 50,
        fusion: HybridFusion | None = None,
        terms: Bm25Terms | None = None,
        layout: ClusterLayout | None = None,
    ) -> QdrantServerIndex:
        """`url`: "http(s)://host:6333" for a server, ":memory:" or "path:/dir" for local mode."""
        if url == ":memory:":
            client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
        elif url.startswith("path:"):
            # The lock in this class makes sharing the SQLite connection between threads safe.
            client = QdrantClient(path=url.removeprefix("path:"), force_disable_check_same_thread=True)
        elif url.startswith(("http://", "https://")):
            client = QdrantClient(url=url, api_key=api_key)
        else:
            raise ValueError(f"unsupported Qdrant url {url!r}: use http(s)://..., :memory: or path:/dir")
        return cls(client, collection, dimension, candidates=candidates, fusion=fusion, terms=terms, layout=layout)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if not self._set_up:
            self._ensure_collection()
        with self._locked():
            yield

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock is None:
            yield
        else:
            with self._lock:
                yield

    def _ensure_collection(self) -> None:
        with self._locked():
            if self._client.collection_exists(self._collection):
                self._check_dimension()
            else:
                self._create_collection()
            if not self._local:  # local mode ignores payload indexes and warns about them
                for field, kind in PAYLOAD_INDEXES.items():
                    self._client.create_payload_index(self._collection, field, field_schema=_PAYLOAD_SCHEMA[kind])
            self._set_up = True

    def _create_collection(self) -> None:
        # Local mode has no shards or replicas: the layout is for a server (a cluster).
        layout = {} if self._local else {
            "shard_number": self._layout.shards,
            "replication_factor": self._layout.replication_factor,
            "write_consistency_factor": self._layout.write_consistency_factor,
        }  # fmt: skip
        # Where the data lives (ClusterLayout.storage), for a server: local mode keeps everything in its own arrays.
        on_disk = self._layout.storage == "disk" and not self._local
        dense: dict[str, Any] = {}
        if on_disk:
            dense = {
                "on_disk": True,  # the float32 originals, read only to rescore the quantised search's candidates
                "hnsw_config": models.HnswConfigDiff(on_disk=False),  # the graph is walked at random: RAM
                "quantization_config": models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True)),  # fmt: skip
            }
            layout["on_disk_payload"] = True  # the filtered fields have payload indexes, which stay in RAM
        try:
            self._client.create_collection(
                self._collection,
                vectors_config={
                    DENSE_VECTOR: models.VectorParams(size=self._dimension, distance=models.Distance.COSINE, **dense),
                    SENTENCE_VECTOR: models.VectorParams(
                        size=self._dimension,
                        distance=models.Distance.COSINE,
                        multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM),
                        # Only re-scores candidates: no graph to build; float16 halves its memory.
                        hnsw_config=models.HnswConfigDiff(m=0),
                        datatype=models.Datatype.FLOAT16,
                        on_disk=on_disk or None,  # ~800 rows read per query: random reads, not a scan
                    ),
                },
                sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(
                    modifier=models.Modifier.IDF,
                    index=models.SparseIndexParams(on_disk=True) if on_disk else None,  # read per query term
                )},  # fmt: skip
                **layout,
            )
        except UnexpectedResponse as exc:
            # Replicas and workers starting together (or `kb migrate` beside them) race to create it: the one that
            # loses finds it made, with the same settings.
            if exc.status_code != 409 and not self._client.collection_exists(self._collection):
                raise
            self._check_dimension()

    def _check_dimension(self) -> None:
        vectors = self._client.get_collection(self._collection).config.params.vectors
        params = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
        if params is None or params.size != self._dimension:
            found = params.size if params is not None else "no dense vector"
            raise ValueError(
                f"collection {self._collection!r} holds {found} dimensions, the embedder gives {self._dimension}"
            )
        if SENTENCE_VECTOR not in vectors:
            self.sentence_vectors = False
            log.warning(
                "collection %r has no sentence vectors (created by an earlier version): hybrid search fuses chunk "
                "vectors and BM25 alone until it is rebuilt (a new collection, documents uploaded again)",
                self._collection,
            )

    def upsert(
        self,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
        sentence_vectors: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        points = []
        for point in plan.points(chunks, vectors, sentence_vectors, self._bm25, with_sentences=self.sentence_vectors):
            named: dict[str, Any] = {DENSE_VECTOR: point.dense, SPARSE_VECTOR: _sparse(point.sparse)}
            if point.sentences is not None:
                named[SENTENCE_VECTOR] = point.sentences
            points.append(models.PointStruct(id=point.id, vector=named, payload=point.payload))
        for start in range(0, len(points), _UPSERT_BATCH):
            with self._guard():
                self._client.upsert(self._collection, points=points[start : start + _UPSERT_BATCH], wait=True)

    def _delete(self, selector: models.Filter) -> None:
        with self._guard():
            self._client.delete(self._collection, points_selector=models.FilterSelector(filter=selector), wait=True)

    def delete_document(self, document_id: str) -> None:
        self._delete(_filter(plan.whole_document(document_id)))

    def discard_staged(self, document_id: str) -> None:
        self._delete(_filter(plan.staged_chunks(document_id)))

    def publish(self, document_id: str, version: int) -> None:
        # On a server these are two requests: new version live first, then the old one deleted, so a search in
        # between never sees neither; `latest_versions_only` keeps it from showing both. Local mode also holds
        # the lock across both, as Edge does.
        swap = plan.publish(document_id, version)
        new, older = models.FilterSelector(filter=_filter(swap.new)), models.FilterSelector(filter=_filter(swap.older))
        with self._guard():
            self._client.set_payload(self._collection, payload=dict(plan.LIVE_PAYLOAD), points=new, wait=True)
            self._client.delete(self._collection, points_selector=older, wait=True)

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
        query_filter = _filter(search.conditions)
        query: models.Query | list[float] | list[list[float]] | models.SparseVector
        if search.using is not None:
            query, prefetch = _query(search, search.using), None
        else:
            prefetch = _prefetches(search, query_filter)
            if search.fusion == "dbsf":
                query = models.FusionQuery(fusion=models.Fusion.DBSF)
            else:
                query = models.RrfQuery(rrf=models.Rrf(k=RRF_K))
        with self._guard():
            response = self._client.query_points(
                self._collection,
                query=query,
                using=search.using,
                prefetch=prefetch,
                query_filter=query_filter,
                limit=search.limit,
                with_payload=True,
                with_vectors=False,
            )
        return plan.latest_versions_only(response.points)

    def neighbours(self, passage: Passage, radius: int, filter: SearchFilter | None = None) -> list[Passage]:
        scroll = plan.neighbours(passage, radius, filter)
        if scroll is None:
            return []
        with self._guard():
            records, _next = self._client.scroll(
                self._collection, scroll_filter=_filter(scroll.conditions), limit=scroll.limit, with_payload=True,
                with_vectors=False,
            )
        return plan.in_document_order(plan.passages(records, scroll.score))

    def document_chunks(
        self, document_id: str, filter: SearchFilter | None = None, limit: int = 1000
    ) -> list[Passage]:
        scroll = plan.document_chunks(document_id, filter, limit)
        if scroll is None:
            return []
        with self._guard():
            # Twice the limit: between the two requests of `publish` both versions are visible for a moment.
            records, _next = self._client.scroll(
                self._collection, scroll_filter=_filter(scroll.conditions), limit=2 * scroll.limit,
                with_payload=True, with_vectors=False,
            )
        return plan.in_document_order(plan.latest_versions_only(records))

    def count(self, filter: SearchFilter | None = None) -> int:
        conditions = plan.visible(filter)
        if conditions is None:
            return 0
        with self._guard():
            return self._client.count(self._collection, count_filter=_filter(conditions), exact=True).count

    def close(self) -> None:
        with self._locked():
            self._client.close()
