"""VectorIndex on qdrant-client: a Qdrant server or cluster in production, local mode in tests."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

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

_UPSERT_BATCH = 256


class _MatchesNothing(Exception):
    """A filter with an empty list (e.g. a caller in no group) can match no chunk."""


# A new version's chunks are written "staged" and are invisible until `publish` swaps them in.
_STAGED = models.FieldCondition(key="state", match=models.MatchValue(value="staged"))


def _document_condition(document_id: str) -> models.FieldCondition:
    return models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))


def _client_filter(search_filter: SearchFilter | None, *extra: models.Condition) -> models.Filter:
    conditions: list[models.Condition] = list(extra)
    for key, values in (
        ("groups", search_filter.groups if search_filter else None),
        ("document_id", search_filter.document_ids if search_filter else None),
    ):
        if values is None:
            continue
        if not values:
            raise _MatchesNothing
        conditions.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(values))))
    if search_filter is not None:
        for key, values in search_filter.metadata_conditions():
            if not values:
                raise _MatchesNothing
            conditions.append(models.FieldCondition(key=key, match=models.MatchAny(any=values)))
        gte, lt = search_filter.created_range()
        if gte or lt:
            conditions.append(models.FieldCondition(key="created_at", range=models.DatetimeRange(gte=gte, lt=lt)))
    return models.Filter(must=conditions or None, must_not=[_STAGED])


def _latest_versions_only(points: Sequence[Any]) -> list[Passage]:
    """`publish` is two requests on a server; a search landing between them could see a document's old and new
    chunks together. Keeping only each document's newest version in the results makes the swap atomic to readers."""
    newest: dict[str, int] = {}
    for point in points:
        payload = point.payload or {}
        document_id, version = payload.get("document_id"), int(payload.get("version") or 1)
        newest[document_id] = max(version, newest.get(document_id, version))
    return [
        Passage.from_payload(point.payload or {}, getattr(point, "score", 0.0))  # scroll records have no score
        for point in points
        if int((point.payload or {}).get("version") or 1) == newest[(point.payload or {}).get("document_id")]
    ]


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
    ) -> None:
        self._client = client
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
        return cls(client, collection, dimension, candidates=candidates, fusion=fusion, terms=terms)

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
                self._client.create_collection(
                    self._collection,
                    vectors_config={
                        DENSE_VECTOR: models.VectorParams(size=self._dimension, distance=models.Distance.COSINE),
                        SENTENCE_VECTOR: models.VectorParams(
                            size=self._dimension,
                            distance=models.Distance.COSINE,
                            multivector_config=models.MultiVectorConfig(
                                comparator=models.MultiVectorComparator.MAX_SIM
                            ),
                            # Only re-scores candidates: no graph to build; float16 halves its memory.
                            hnsw_config=models.HnswConfigDiff(m=0),
                            datatype=models.Datatype.FLOAT16,
                        ),
                    },
                    sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                )
            if not self._local:  # local mode ignores payload indexes and warns about them
                self._client.create_payload_index(
                    self._collection, "document_id", field_schema=models.PayloadSchemaType.KEYWORD
                )
                self._client.create_payload_index(
                    self._collection,
                    "groups",
                    field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True),
                )
                self._client.create_payload_index(
                    self._collection, "version", field_schema=models.PayloadSchemaType.INTEGER
                )
                self._client.create_payload_index(self._collection, "state", field_schema=models.PayloadSchemaType.KEYWORD)
                self._client.create_payload_index(
                    self._collection, "ordinal", field_schema=models.PayloadSchemaType.INTEGER
                )
                self._client.create_payload_index(
                    self._collection, "created_at", field_schema=models.PayloadSchemaType.DATETIME
                )
            self._set_up = True

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
        per_chunk = sentence_vectors_per_chunk(chunks, vectors, sentence_vectors)
        points = []
        for chunk, vector, sentences in zip(chunks, vectors, per_chunk, strict=True):
            sparse = self._bm25.document(chunk.embed_text or chunk.text)
            dense = [float(x) for x in vector]
            named: dict[str, Any] = {
                DENSE_VECTOR: dense,
                SPARSE_VECTOR: models.SparseVector(indices=sparse.indices, values=sparse.values),
            }
            if self.sentence_vectors:
                named[SENTENCE_VECTOR] = sentence_multivector(dense, sentences)
            points.append(models.PointStruct(id=chunk.chunk_id, vector=named, payload=chunk.payload()))
        for start in range(0, len(points), _UPSERT_BATCH):
            with self._guard():
                self._client.upsert(self._collection, points=points[start : start + _UPSERT_BATCH], wait=True)

    def _delete(self, selector: models.Filter) -> None:
        with self._guard():
            self._client.delete(self._collection, points_selector=models.FilterSelector(filter=selector), wait=True)

    def delete_document(self, document_id: str) -> None:
        self._delete(models.Filter(must=[_document_condition(document_id)]))

    def discard_staged(self, document_id: str) -> None:
        self._delete(models.Filter(must=[_document_condition(document_id), _STAGED]))

    def publish(self, document_id: str, version: int) -> None:
        # On a server these are two requests: new version live first, then the old one deleted, so a search in
        # between never sees neither; `_latest_versions_only` keeps it from showing both. Local mode also holds
        # the lock across both, as Edge does.
        this_version = models.FieldCondition(key="version", match=models.MatchValue(value=version))
        older = models.Filter(must=[_document_condition(document_id)], must_not=[this_version])
        new = models.Filter(must=[_document_condition(document_id), this_version])
        with self._guard():
            self._client.set_payload(self._collection, payload={"state": "live"}, points=models.FilterSelector(filter=new), wait=True)
            self._client.delete(self._collection, points_selector=models.FilterSelector(filter=older), wait=True)

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
            query_filter = _client_filter(filter)
        except _MatchesNothing:
            return []
        dense = [float(x) for x in vector]
        encoded = self._bm25.query(text)
        # A query of stopwords only has no terms: nothing can match it on the sparse side.
        sparse = models.SparseVector(indices=encoded.indices, values=encoded.values) if encoded.indices else None

        prefetch: list[models.Prefetch] | None = None
        query: models.Query | list[float] | models.SparseVector
        using: str | None = None
        if mode == "dense":
            query, using = dense, DENSE_VECTOR
        elif mode == "sparse":
            if sparse is None:
                return []
            query, using = sparse, SPARSE_VECTOR
        elif mode == "hybrid":
            fusion = self._fusion
            depth = max(limit, fusion.candidates)
            dense_candidates = models.Prefetch(query=dense, using=DENSE_VECTOR, limit=depth, filter=query_filter)
            sparse_candidates = (
                models.Prefetch(query=sparse, using=SPARSE_VECTOR, limit=depth, filter=query_filter)
                if sparse is not None
                else None
            )
            by_side = {
                DENSE_VECTOR: dense_candidates,
                SPARSE_VECTOR: sparse_candidates,
                # The dense and BM25 candidates, re-scored by their best sentence.
                SENTENCE_VECTOR: models.Prefetch(
                    prefetch=[p for p in (dense_candidates, sparse_candidates) if p is not None],
                    query=[dense],
                    using=SENTENCE_VECTOR,
                    limit=depth,
                    filter=query_filter,
                ),
            }
            prefetch = [
                p
                for side in fusion.prefetch_sides(has_sparse=sparse is not None, has_sentences=self.sentence_vectors)
                if (p := by_side[side]) is not None
            ]
            if not prefetch:
                return []
            if fusion.method == "dbsf":
                query = models.FusionQuery(fusion=models.Fusion.DBSF)
            else:
                query = models.RrfQuery(rrf=models.Rrf(k=RRF_K))
        else:
            raise ValueError(f"unknown search mode {mode!r}")

        with self._guard():
            response = self._client.query_points(
                self._collection,
                query=query,
                using=using,
                prefetch=prefetch,
                query_filter=query_filter,
                limit=limit,
                with_payload=True,
                with_vectors=False,
            )
        return _latest_versions_only(response.points)

    def neighbours(self, passage: Passage, radius: int, filter: SearchFilter | None = None) -> list[Passage]:
        if radius < 0:
            raise ValueError("radius must be >= 0")
        try:
            scroll_filter = _client_filter(
                filter,
                _document_condition(passage.document_id),
                models.FieldCondition(
                    key="ordinal", range=models.Range(gte=passage.ordinal - radius, lte=passage.ordinal + radius)
                ),
            )
        except _MatchesNothing:
            return []
        with self._guard():
            records, _next = self._client.scroll(
                self._collection, scroll_filter=scroll_filter, limit=2 * radius + 1, with_payload=True,
                with_vectors=False,
            )
        found = [Passage.from_payload(record.payload or {}, passage.score) for record in records]
        return sorted(found, key=lambda p: p.ordinal)

    def document_chunks(
        self, document_id: str, filter: SearchFilter | None = None, limit: int = 1000
    ) -> list[Passage]:
        if limit <= 0:
            return []
        try:
            # Ordinals run 0..n-1 within a version: the range keeps the first `limit` without sorting the document.
            first_chunks = models.FieldCondition(key="ordinal", range=models.Range(lt=limit))
            scroll_filter = _client_filter(filter, _document_condition(document_id), first_chunks)
        except _MatchesNothing:
            return []
        with self._guard():
            # Twice the limit: between the two requests of `publish` both versions are visible for a moment.
            records, _next = self._client.scroll(
                self._collection, scroll_filter=scroll_filter, limit=2 * limit, with_payload=True, with_vectors=False
            )
        return sorted(_latest_versions_only(records), key=lambda p: p.ordinal)

    def count(self, filter: SearchFilter | None = None) -> int:
        try:
            count_filter = _client_filter(filter)
        except _MatchesNothing:
            return 0
        with self._guard():
            return self._client.count(self._collection, count_filter=count_filter, exact=True).count

    def close(self) -> None:
        with self._locked():
            self._client.close()
