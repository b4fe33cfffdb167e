"""Every read and write of the vector index as a plan of plain dataclasses, built once for both adapters.

What to ask the index for is decided here: which chunks a filter lets through, which lists a search fuses and how
deep, what a point holds. kb.adapters.edge_index (qdrant_edge) and kb.adapters.qdrant_server_index
(qdrant_client.models) only translate a plan into their client's types and run it, so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kb.index.fusion import FusionMethod, HybridFusion
from kb.index.schema import DENSE_VECTOR, SENTENCE_VECTOR, SPARSE_VECTOR
from kb.models import Chunk, Passage, SearchFilter
from kb.ports import SearchMode


class SparseTerms(Protocol):
    """A sparse vector (qdrant_edge.SparseVector from kb.index.bm25)."""

    indices: list[int]
    values: list[float]


class Encoder(Protocol):
    """What the plans need of the BM25 encoder (kb.index.bm25.Bm25Encoder)."""

    def document(self, text: str) -> SparseTerms: ...

    def query(self, text: str) -> SparseTerms: ...


# Conditions on payload fields.


@dataclass(frozen=True)
class Match:
    """The field equals `value`."""

    key: str
    value: str | int


@dataclass(frozen=True)
class MatchAny:
    """The field (or one of its values, for a list) is one of `values`."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class NumberRange:
    key: str
    gte: float | None = None
    lte: float | None = None
    lt: float | None = None


@dataclass(frozen=True)
class DatetimeRange:
    """RFC 3339 bounds (SearchFilter.created_range)."""

    key: str
    gte: str | None = None
    lt: str | None = None


Condition = Match | MatchAny | NumberRange | DatetimeRange


@dataclass(frozen=True)
class Conditions:
    """A filter: every `must` condition holds and no `must_not` one does."""

    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()


# A new version's chunks are written "staged" and are invisible until `publish` swaps them in.
STAGED = Match("state", "staged")
LIVE_PAYLOAD = {"state": "live"}


def document(document_id: str) -> Match:
    return Match("document_id", document_id)


def visible(search_filter: SearchFilter | None, *extra: Condition) -> Conditions | None:
    """The chunks a read may return: `extra`, the filter's conditions, nothing staged. None when the filter can match
    no chunk: an empty list (e.g. a caller in no group) matches nothing, and the index is then not asked at all."""
    conditions: list[Condition] = list(extra)
    for key, values in (
        ("groups", search_filter.groups if search_filter else None),
        ("document_id", search_filter.document_ids if search_filter else None),
    ):
        if values is None:
            continue
        if not values:
            return None
        conditions.append(MatchAny(key, tuple(values)))
    if search_filter is not None:
        for key, values in search_filter.metadata_conditions():
            if not values:
                return None
            conditions.append(MatchAny(key, tuple(values)))
        gte, lt = search_filter.created_range()
        if gte or lt:
            conditions.append(DatetimeRange("created_at", gte=gte, lt=lt))
    return Conditions(must=tuple(conditions), must_not=(STAGED,))


# Writes.


def whole_document(document_id: str) -> Conditions:
    """Every chunk of the document, every version and state."""
    return Conditions(must=(document(document_id),))


def staged_chunks(document_id: str) -> Conditions:
    return Conditions(must=(document(document_id), STAGED))


@dataclass(frozen=True)
class Publish:
    """Swapping a document's version in: `older` (every other version) deleted, `new` set to LIVE_PAYLOAD."""

    older: Conditions
    new: Conditions


def publish(document_id: str, version: int) -> Publish:
    this_version = Match("version", version)
    return Publish(
        older=Conditions(must=(document(document_id),), must_not=(this_version,)),
        new=Conditions(must=(document(document_id), this_version)),
    )


@dataclass(frozen=True)
class IndexPoint:
    """One chunk as the index stores it, under its chunk id."""

    id: str
    dense: list[float]
    sparse: SparseTerms  # BM25 document terms
    sentences: list[list[float]] | None  # SENTENCE_VECTOR; None: the index has no sentence vectors
    payload: dict[str, Any]


def sentence_vectors_per_chunk(
    chunks: Sequence[object],
    vectors: Sequence[Sequence[float]],
    sentence_vectors: Sequence[Sequence[Sequence[float]]] | None,
) -> list[Sequence[Sequence[float]] | None]:
    """The arguments of VectorIndex.upsert checked to agree in length, and each chunk's sentence vectors (None: not
    given)."""
    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    if sentence_vectors is None:
        return [None] * len(chunks)
    if len(sentence_vectors) != len(chunks):
        raise ValueError(f"{len(chunks)} chunks but sentence vectors for {len(sentence_vectors)}")
    return list(sentence_vectors)


def sentence_multivector(
    vector: Sequence[float], sentence_vectors: Sequence[Sequence[float]] | None
) -> list[list[float]]:
    """A chunk's SENTENCE_VECTOR: its own vector first (so a chunk of one sentence needs no other), then its
    sentences'."""
    return [[float(x) for x in vector], *([float(x) for x in v] for v in sentence_vectors or ())]


# A file name's extension: a few letters and digits after its last dot, with a letter ("pdf", "docx", "mp4").
_EXTENSION = re.compile(r"\.(?=[A-Za-z0-9]{0,4}[A-Za-z])[A-Za-z0-9]{1,5}$")
# Where a file name's words part: separators, and camelCase ("AnnualReport", "XMLParser" -> "XML Parser").
_NAME_SEPARATORS = re.compile(r"[\s_.\-]+|(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NAME_WORD = re.compile(r"[^\W_]+")


def name_words(filename: str) -> list[str]:
    """The words of a file name that can name its document: the stem split at `_ - .`, spaces and camelCase.
    Words without a letter are dropped: in file names they are mostly counters, dates and ids ("scan_0003",
    "20190331", "v2" keeps its letter), which would match any question quoting a number; a year the document is about
    is in its text anyway."""
    stem = _EXTENSION.sub("", filename.strip())
    words = []
    for part in _NAME_SEPARATORS.split(stem):
        words.extend(w for w in _NAME_WORD.findall(part) if not w.isdigit())
    return words


def document_name(chunk: Chunk) -> str:
    """What names the chunk's document: its file name's words, then its title (Chunk.title) unless the title only
    repeats them."""
    words = name_words(chunk.filename)
    title = (chunk.title or "").strip()
    if title and not {w.lower() for w in _NAME_WORD.findall(title)} <= {w.lower() for w in words}:
        words.append(title)
    return " ".join(words)


def sparse_text(chunk: Chunk, name_repeats: int) -> str:
    """What BM25 encodes for a chunk: its document's name `name_repeats` times (`document_name`), then the embedded
    text (section heading included, as the dense side sees it). The name lets a question that names a document
    ("For Norwell Industries, what ...") find the document's chunks, which seldom repeat its name themselves; the
    dense vector is not given it (a name shifts every chunk's vector towards the same point)."""
    body = chunk.embed_text or chunk.text
    name = document_name(chunk) if name_repeats > 0 else ""
    return "\n".join([*([name] * name_repeats), body]) if name else body


def points(
    chunks: Sequence[Chunk],
    vectors: Sequence[Sequence[float]],
    sentence_vectors: Sequence[Sequence[Sequence[float]]] | None,
    encoder: Encoder,
    *,
    with_sentences: bool,
    name_repeats: int | None = None,
) -> list[IndexPoint]:
    """The points of VectorIndex.upsert; BM25 encodes `sparse_text` (the document's name and the embedded text).
    `with_sentences`: the index holds sentence vectors (one written before they existed does not). `name_repeats`:
    None reads the encoder's setting (Bm25Encoder.terms, IndexSettings.name_weight); an encoder without one
    encodes the embedded text alone."""
    if name_repeats is None:
        name_repeats = getattr(getattr(encoder, "terms", None), "name_repeats", 0)
    per_chunk = sentence_vectors_per_chunk(chunks, vectors, sentence_vectors)
    built = []
    for chunk, vector, sentences in zip(chunks, vectors, per_chunk, strict=True):
        dense = [float(x) for x in vector]
        built.append(
            IndexPoint(
                id=chunk.chunk_id,
                dense=dense,
                sparse=encoder.document(sparse_text(chunk, name_repeats)),
                sentences=sentence_multivector(dense, sentences) if with_sentences else None,
                payload=chunk.payload(),
            )
        )
    return built


# Reads.


@dataclass(frozen=True)
class Side:
    """One list of candidates: the `limit` nearest to the query by vector `using`, inside the search's conditions.
    `rescores`: the lists whose candidates this one re-scores instead of searching the whole index (the sentence
    side)."""

    using: str
    limit: int
    rescores: tuple[Side, ...] = ()


@dataclass(frozen=True)
class SearchPlan:
    """Either a plain search by one vector (`using`) or a fusion of `sides`, each listed as often as its weight. The
    query of a side follows from its vector: `dense` for DENSE_VECTOR, `sparse` for SPARSE_VECTOR, [`dense`] (a
    multivector of one) for SENTENCE_VECTOR."""

    conditions: Conditions
    limit: int
    dense: list[float]
    sparse: SparseTerms | None  # the query's BM25 terms; None: stopwords only, nothing can match on that side
    using: str | None = None
    sides: tuple[Side, ...] = ()
    fusion: FusionMethod | None = None


def search(
    vector: Sequence[float],
    text: str,
    limit: int,
    search_filter: SearchFilter | None,
    mode: SearchMode,
    *,
    fusion: HybridFusion,
    encoder: Encoder,
    sentence_vectors: bool,
) -> SearchPlan | None:
    """The plan of VectorIndex.search; None when nothing can be found (no limit, a filter matching nothing, a
    BM25 search of stopwords, a fusion left with no side)."""
    if limit <= 0:
        return None
    conditions = visible(search_filter)
    if conditions is None:
        return None
    dense = [float(x) for x in vector]
    terms = encoder.query(text)
    sparse = terms if terms.indices else None
    if mode == "dense":
        return SearchPlan(conditions, limit, dense, sparse, using=DENSE_VECTOR)
    if mode == "sparse":
        return SearchPlan(conditions, limit, dense, sparse, using=SPARSE_VECTOR) if sparse is not None else None
    if mode != "hybrid":
        raise ValueError(f"unknown search mode {mode!r}")
    depth = max(limit, fusion.candidates)
    dense_side = Side(DENSE_VECTOR, depth)
    sparse_side = Side(SPARSE_VECTOR, depth) if sparse is not None else None
    by_vector = {
        DENSE_VECTOR: dense_side,
        SPARSE_VECTOR: sparse_side,
        # The dense and BM25 candidates, re-scored by their best sentence.
        SENTENCE_VECTOR: Side(
            SENTENCE_VECTOR, depth, rescores=tuple(s for s in (dense_side, sparse_side) if s is not None)
        ),
    }
    sides = tuple(
        side
        for name in fusion.prefetch_sides(has_sparse=sparse is not None, has_sentences=sentence_vectors)
        if (side := by_vector[name]) is not None
    )
    if not sides:
        return None
    return SearchPlan(conditions, limit, dense, sparse, sides=sides, fusion=fusion.method)


@dataclass(frozen=True)
class ScrollPlan:
    """Chunks read by filter alone, in no order; each becomes a passage scored `score` (a scroll scores nothing)."""

    conditions: Conditions
    limit: int
    score: float


def neighbours(passage: Passage, radius: int, search_filter: SearchFilter | None) -> ScrollPlan | None:
    """The plan of VectorIndex.neighbours; None when the filter matches nothing."""
    if radius < 0:
        raise ValueError("radius must be >= 0")
    conditions = visible(
        search_filter,
        document(passage.document_id),
        NumberRange("ordinal", gte=passage.ordinal - radius, lte=passage.ordinal + radius),
    )
    return ScrollPlan(conditions, 2 * radius + 1, passage.score) if conditions is not None else None


def document_chunks(document_id: str, search_filter: SearchFilter | None, limit: int) -> ScrollPlan | None:
    """The plan of VectorIndex.document_chunks; None when there is nothing to read."""
    if limit <= 0:
        return None
    # Ordinals run 0..n-1 within a version: the range keeps the first `limit` without sorting the document.
    conditions = visible(search_filter, document(document_id), NumberRange("ordinal", lt=limit))
    return ScrollPlan(conditions, limit, 0.0) if conditions is not None else None


def in_document_order(passages: Sequence[Passage]) -> list[Passage]:
    return sorted(passages, key=lambda p: p.ordinal)


def passages(records: Sequence[Any], score: float) -> list[Passage]:
    """Scroll records as passages, each scored `score`."""
    return [Passage.from_payload(record.payload or {}, score) for record in records]


def latest_versions_only(points: Sequence[Any]) -> list[Passage]:
    """Points as passages, keeping only each document's newest version among them.

    An index whose `publish` is not atomic (two requests on a Qdrant server) could show a search landing between
    them a document's old and new chunks together; this makes the swap atomic to readers."""
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
