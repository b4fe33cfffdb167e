"""Domain models shared by the write path (ingest/) and the read path (service/)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal


class DocumentStatus(str, enum.Enum):
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Document:
    document_id: str
    filename: str
    content_type: str
    sha256: str
    size_bytes: int
    status: DocumentStatus = DocumentStatus.QUEUED
    error: str | None = None
    pages: int | None = None
    chunks: int | None = None
    groups: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = 1  # the latest version submitted (the one `status` is about)
    live_version: int | None = None  # the version searches see; None until a version is ready
    progress: dict[str, Any] = field(default_factory=dict)  # stage, pages_parsed, chunks_embedded, chunks_total
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "filename": self.filename,
            "content_type": self.content_type,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "status": self.status.value,
            "error": self.error,
            "pages": self.pages,
            "chunks": self.chunks,
            "groups": list(self.groups),
            "metadata": dict(self.metadata),
            "version": self.version,
            "live_version": self.live_version,
            "progress": dict(self.progress),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass
class Chunk:
    """A retrievable unit of a document, as stored in the vector index."""

    chunk_id: str  # stable: uuid5 of (document_id, ordinal)
    document_id: str
    ordinal: int
    text: str  # what the reader sees and the model reads
    filename: str
    page: int | None = None
    page_end: int | None = None
    section: str | None = None
    # (character offset in text, page) wherever the page changes, so a citation can name the page of its snippet.
    page_starts: list[tuple[int, int]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    embed_text: str | None = None  # what is embedded (section heading prefixed); defaults to text
    version: int = 1
    staged: bool = False  # invisible to searches until the index publishes this version
    # The document's metadata (filterable as SearchFilter.metadata) and creation time (SearchFilter.created_*).
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    # The document's title (its own where the file names one, else its first heading; None: the file name stands for
    # it): BM25 reads it with the file name, so a question naming a document finds that document's chunks.
    title: str | None = None
    # Every page the chunk lies on is a table of contents, glossary or exhibit index: retrieval ranks it lower.
    boilerplate: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "document_id": self.document_id,
            "ordinal": self.ordinal,
            "text": self.text,
            "filename": self.filename,
            "page": self.page,
            "page_end": self.page_end,
            "section": self.section,
            "page_starts": [list(p) for p in self.page_starts],
            "groups": list(self.groups),
            "version": self.version,
            # A keyword, not a bool: Qdrant Edge 0.9's MatchValue(True) does not match a boolean payload.
            "state": "staged" if self.staged else "live",
            "metadata": dict(self.metadata),
            # RFC 3339 in UTC, the form Qdrant's datetime index and range filter read.
            "created_at": _rfc3339(self.created_at) if self.created_at else None,
            "title": self.title,
            "boilerplate": self.boilerplate,
        }


@dataclass
class Passage:
    """A chunk returned by retrieval, with its score."""

    chunk_id: str
    document_id: str
    filename: str
    text: str
    score: float
    page: int | None = None
    page_end: int | None = None
    section: str | None = None
    ordinal: int = 0
    page_starts: list[tuple[int, int]] = field(default_factory=list)
    # Context expansion: the passage's neighbouring chunks, itself included, in document order (empty: not expanded).
    context: list[Passage] = field(default_factory=list)
    # The document's access groups: checked again before a passage leaves the service (the index filters first).
    groups: list[str] = field(default_factory=list)
    boilerplate: bool = False  # Chunk.boilerplate

    def visible_to(self, groups: list[str] | None) -> bool:
        """None: an unrestricted caller (admin, or auth switched off)."""
        return groups is None or bool(set(self.groups) & set(groups))

    def page_at(self, offset: int) -> int | None:
        """The page on which the character at `offset` of the text lies."""
        page = self.page
        for start, start_page in self.page_starts:
            if start > offset:
                break
            page = start_page
        return page

    @classmethod
    def from_payload(cls, payload: dict[str, Any], score: float) -> "Passage":
        return cls(
            chunk_id=payload["chunk_id"],
            document_id=payload["document_id"],
            filename=payload["filename"],
            text=payload["text"],
            score=float(score),
            page=payload.get("page"),
            page_end=payload.get("page_end"),
            section=payload.get("section"),
            ordinal=int(payload.get("ordinal") or 0),
            page_starts=[(int(o), int(p)) for o, p in payload.get("page_starts") or []],
            groups=list(payload.get("groups") or []),
            boilerplate=bool(payload.get("boilerplate")),
        )


@dataclass
class Citation:
    n: int
    document_id: str
    filename: str
    page: int | None
    snippet: str
    chunk_id: str
    section: str | None = None
    score: float | None = None
    inferred: bool = False  # the model did not mark it; the service matched the sentence to this source
    # Character span of the snippet in the chunk's text, so a page can highlight it.
    span: tuple[int, int] | None = None
    # Whether the sentences citing this source share enough content with it; False flags a doubtful citation.
    supported: bool = True


@dataclass
class Answer:
    answer: str
    citations: list[Citation]
    grounded: bool  # True only when the sources support the answer's claims
    timings_ms: dict[str, float] = field(default_factory=dict)
    conversation_id: str | None = None
    mode: str = "generate"  # generate | extract (quoted from the sources) | none (no information)
    unsupported: list[str] = field(default_factory=list)  # sentences no cited source supports
    degraded: bool = False  # written (in part) by the fallback generator while the generator server failed
    data: Any = None  # a structured answer: `answer` parsed (JSON valid against the question's schema)


@dataclass
class Job:
    """A claimed ingestion job. `lease` is the claim's own token, new at every claim: the registry accepts the
    worker's writes (progress, status, finishing) only while the job still holds this lease, so a worker whose lease
    ran out or whose document was deleted writes nothing (fencing)."""

    job_id: int
    document_id: str
    attempts: int
    lease: str = ""


@dataclass
class SearchFilter:
    """Restrictions applied inside the vector query, never after it."""

    groups: list[str] | None = None  # caller may see chunks whose groups intersect these
    document_ids: list[str] | None = None
    # Each key must match: a value exactly, or a list for any of its values (an empty list matches nothing).
    metadata: dict[str, str | list[str]] | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive

    def metadata_conditions(self) -> list[tuple[str, list[str]]]:
        """(payload key, accepted values) per metadata field; a key is checked like a document field name."""
        conditions = []
        for key, value in (self.metadata or {}).items():
            if not key or not all(ch.isalnum() or ch in "_-" for ch in key):
                raise ValueError(f"metadata filter key {key!r}: use letters, digits, '_' and '-' only")
            conditions.append((f"metadata.{key}", [value] if isinstance(value, str) else [str(v) for v in value]))
        return conditions

    def created_range(self) -> tuple[str | None, str | None]:
        """(gte, lt) as RFC 3339 strings for the payload field "created_at"."""
        return (
            _rfc3339(self.created_after) if self.created_after else None,
            _rfc3339(self.created_before) if self.created_before else None,
        )


def _rfc3339(moment: datetime) -> str:
    """UTC with a "Z"; a naive datetime is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


SCOPES = ("search", "ask", "ingest", "admin", "metrics")
ALL_GROUPS = "*"  # a key holding this group sees every document


@dataclass
class ApiKey:
    """An API key as stored: its SHA-256 digest, never the key itself."""

    key_id: str
    name: str
    prefix: str  # the first characters of the key, to recognise it in `kb keys list`
    scopes: list[str]
    groups: list[str]
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None  # None: never

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(timezone.utc)

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not self.expired

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "groups": list(self.groups),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


FeedbackRating = Literal["up", "down"]
FeedbackSource = Literal["web", "slack", "api"]


@dataclass(frozen=True)
class Feedback:
    """A reader's 👍/👎 on an answer, kept with what was asked, answered and cited, so bad answers can be found."""

    feedback_id: str
    principal_id: str  # who gave it: a key's id, or `user:<name>` (the proxy)
    rating: FeedbackRating
    question: str
    answer: str
    comment: str | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)  # the answer's sources, as the reader saw them
    conversation_id: str | None = None
    source: FeedbackSource = "api"  # the door it came through
    groups: list[str] = field(default_factory=list)  # the giver's groups: who may read it (see list_feedback)
    created_at: datetime | None = None  # set by the store (timezone-aware UTC)
