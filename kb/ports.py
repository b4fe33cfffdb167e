"""The seams of the system. Each Protocol has one adapter per real backend in kb/adapters/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from kb.models import ApiKey, Chunk, Document, DocumentStatus, Feedback, FeedbackRating, Job, Passage, SearchFilter

SearchMode = Literal["dense", "sparse", "hybrid"]


@runtime_checkable
class Embedder(Protocol):
    """Texts to unit-length vectors of `dimension` floats (so a dot product is their cosine); the same text to the
    same vector (up to float rounding) whatever else is in its batch; no texts, no vectors."""

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int:
        """Longest input (in the model's own tokens, special tokens included) embedded without truncation."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


@runtime_checkable
class VectorIndex(Protocol):
    """Chunks with a dense vector and sentence vectors (given) and a BM25 sparse vector (computed by the index adapter).

    Searches and counts never see staged chunks."""

    def upsert(
        self,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
        sentence_vectors: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        """`sentence_vectors`: per chunk, the vectors of its sentences (ingest.chunk.sentences; none for a chunk of
        one sentence). A chunk's sentence side is its own vector and these; None: its own vector alone."""
        ...

    def delete_document(self, document_id: str) -> None: ...

    def discard_staged(self, document_id: str) -> None:
        """Drop staged (unpublished) chunks of a document, e.g. those of an interrupted run."""
        ...

    def publish(self, document_id: str, version: int) -> None:
        """Make `version`'s staged chunks the document's only visible ones, in one step for searches."""
        ...

    def search(
        self,
        vector: Sequence[float],
        text: str,
        limit: int,
        filter: SearchFilter | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[Passage]: ...

    def neighbours(self, passage: Passage, radius: int, filter: SearchFilter | None = None) -> list[Passage]:
        """The live chunks of `passage`'s document whose ordinal is within `radius` of its own (the passage
        included), in ordinal order, inside `filter` (the caller's ACL); each carries the passage's score."""
        ...

    def document_chunks(
        self, document_id: str, filter: SearchFilter | None = None, limit: int = 1000
    ) -> list[Passage]:
        """The live chunks of one document inside `filter` (the caller's ACL), in ordinal order: the whole
        document, or its first `limit` chunks; each with score 0."""
        ...

    def count(self, filter: SearchFilter | None = None) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class Reranker(Protocol):
    """Reorders retrieved passages by a finer relevance model (a cross-encoder) that reads query and passage together."""

    def rerank(self, query: str, passages: Sequence[Passage], top_k: int) -> list[Passage]:
        """The `top_k` most relevant of `passages`, best first, each with the reranker's score."""
        ...


class GeneratorServerError(RuntimeError):
    """A generator's server reported an error inside the stream, or answered something that is not a completion
    stream. These errors are part of the Generator contract: the service maps them to 502/503/504 problems."""


class GeneratorUnavailable(GeneratorServerError):
    """The server answered 5xx (or 429): overloaded, starting or failing over; worth another attempt."""


class GeneratorTimeout(GeneratorServerError):
    """No first token within the request timeout, however many attempts that took."""


@runtime_checkable
class Generator(Protocol):
    """Streams the answer to a chat; cancelling the iterator aborts the request in the engine."""

    async def start(self) -> None:
        """Load what answering needs (a second call does nothing)."""
        ...

    def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None, *,
        json_schema: dict[str, Any] | None = None, session: str | None = None,
    ) -> AsyncIterator[str]:  # fmt: skip
        """The answer's text as it is generated, in non-empty pieces, at most `max_tokens` tokens (None: the
        settings' max_answer_tokens). With `json_schema` (checked by the caller: service.ask.structured), decoding
        is constrained to JSON of that schema (vLLM's structured outputs) and no stop string cuts it. `session`: an
        opaque, stable id of the conversation the answer belongs to; an adapter for a server sends it (a header) so
        that a router in front of several servers keeps a conversation on the one holding its prompt's prefix cache."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's own tokenizer, special tokens not added (an estimate from its length
        where the adapter has no tokenizer)."""
        ...

    def count_tokens_many(self, texts: Sequence[str], separator: str | None = None) -> list[int]:
        """count_tokens of each text, in one call (the packer sizes every candidate source at once). With a
        `separator`: the tokens each text adds to a prompt in which it stands between two `separator`s (sources
        joined by it, and it after the last), so that a prompt's sources cost the sum of their counts, whichever
        sources it holds and in whichever order."""
        ...

    @property
    def max_model_len(self) -> int: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None:
        """Release the engine or connection: then ready() is False and stream() raises RuntimeError."""
        ...


@runtime_checkable
class BlobStore(Protocol):
    """Each document's original bytes, by document id, where every process of every tier (API replicas, ingestion
    workers on other machines) reaches them. An id that could name anything outside the store (`../x`, `a/b`) is
    refused with ValueError; reading an id never stored raises FileNotFoundError; deleting one is a no-op. A put is
    atomic: a reader sees the old bytes or the new ones, never part of them. Safe to share between threads."""

    def put(self, document_id: str, data: bytes) -> None: ...

    def read(self, document_id: str) -> bytes: ...

    def local_file(self, document_id: str) -> AbstractContextManager[Path]:
        """A file on this machine holding the bytes, for a tool that opens files itself (the parser process), valid
        until the context exits: the store's own file, or a temporary copy removed on exit. Never write to it."""
        ...

    def delete(self, document_id: str) -> None: ...

    def check(self) -> None:
        """Raises (naming the store: its directory, or its bucket and endpoint) when the store cannot be used."""
        ...


@runtime_checkable
class DocumentStore(Protocol):
    """The documents: their metadata, versions, status and ingestion progress (durable)."""

    def add_document(self, document: Document, *, enqueue: bool = False) -> Document:
        """`enqueue`: with its ingestion job, in one transaction."""
        ...

    def get_document(self, document_id: str) -> Document | None: ...

    def find_by_sha256(self, sha256: str, groups: list[str] | None = None) -> Document | None: ...

    def find_by_name(self, filename: str, collection: str = "", groups: list[str] | None = None) -> Document | None: ...

    def new_version(
        self, document_id: str, *, sha256: str, size_bytes: int, content_type: str, enqueue: bool = False
    ) -> Document: ...

    # `fence`: the worker's claim (Job). With it, the write happens only while that claim still holds its lease, in
    # the same statement, and the result says whether it did; without it (uploads, deletes, admin), always.
    def set_live_version(self, document_id: str, version: int, *, fence: Job | None = None) -> bool: ...

    def update_progress(self, document_id: str, progress: dict[str, Any], *, fence: Job | None = None) -> bool: ...

    def list_documents(self) -> list[Document]: ...

    def set_status(
        self,
        document_id: str,
        status: DocumentStatus,
        *,
        error: str | None = None,
        pages: int | None = None,
        chunks: int | None = None,
        fence: Job | None = None,
    ) -> bool: ...

    def delete_document(self, document_id: str) -> None:
        """The document and its jobs: a worker still holding one of them loses its lease (its writes are refused)."""
        ...


@runtime_checkable
class JobQueue(Protocol):
    """The documents' ingestion jobs (durable), each taken by one worker at a time under a lease."""

    def enqueue_job(self, document_id: str) -> None: ...

    def claim_next_job(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Lease the oldest queued job, or a running one whose lease expired (its worker died), under a new lease
        token. Job ids are never reused, not even after their document is deleted."""
        ...

    def holds_lease(self, job: Job) -> bool:
        """Whether `job`'s claim still holds its lease (not finished, not retaken, not deleted)."""
        ...

    def finish_job(self, job: Job, *, error: str | None = None) -> bool: ...

    def retry_job(self, job: Job, *, error: str, delay_s: float) -> bool: ...

    def give_back_job(self, job: Job, *, delay_s: float = 0.0) -> bool:
        """A claim handed back, the attempt not counted: one the worker never started on (it is stopping: at once), or
        one a store's outage interrupted (after `delay_s`)."""
        ...

    def extend_lease(self, job: Job, lease_seconds: float) -> bool: ...

    def release_leases(self) -> int: ...

    def pending_jobs(self) -> int: ...


@runtime_checkable
class ConversationStore(Protocol):
    """The turns of each conversation and who it belongs to (durable)."""

    def add_message(
        self, conversation_id: str, role: str, content: str, sources: list[dict[str, Any]] | None = None,
        owner: str | None = None,
    ) -> bool:
        """Append a message; True once written. With `owner`, only while the conversation is claimed by `owner` (in
        the same statement): a conversation deleted meanwhile keeps nothing more. Without, as is (a Slack thread)."""
        ...

    def conversation(
        self, conversation_id: str, limit: int = 20, sources: Literal["all", "last"] = "all"
    ) -> list[dict[str, Any]]:
        """The last `limit` messages, oldest first: {"role", "content", "sources"}. `sources="last"`: only the newest
        assistant message's sources are read (a follow-up needs no others; each answer's are ~95 KB at 32k), the
        other messages' come back empty."""
        ...

    def claim_conversation(self, conversation_id: str, owner: str) -> bool:
        """True if the conversation is new (now `owner`'s) or already `owner`'s; False if another owns it, or if it
        has messages and no owner (a Slack thread's: no key may read it through the API)."""
        ...

    def conversation_owner(self, conversation_id: str) -> str | None: ...

    def list_conversations(self, owner: str, limit: int = 50) -> list[dict[str, Any]]:
        """`owner`'s conversations that hold at least one message, the most recently continued first, at most
        `limit`: {"conversation_id", "title" (the first question, at most 80 characters), "updated_at" (the last
        message's time, timezone-aware UTC), "turns" (questions asked)}."""
        ...

    def delete_conversation(self, conversation_id: str, owner: str) -> bool:
        """The conversation and its messages, if it belongs to `owner`; False (nothing deleted) otherwise."""
        ...

    def forget_conversations(self, before: datetime) -> int:
        """Delete every conversation last continued before `before` (its newest message; with none, its claim), with
        its messages; how many conversations went. Retention (KB_CONVERSATIONS__RETENTION_DAYS)."""
        ...


@runtime_checkable
class FeedbackStore(Protocol):
    """Feedback on answers (durable), from every door (the web page, the API, the Slack bot)."""

    def add_feedback(self, feedback: Feedback) -> Feedback:
        """Stored as given, with `created_at` now (UTC) unless set; returned as stored. A feedback_id is taken once."""
        ...

    def get_feedback(self, feedback_id: str) -> Feedback | None: ...

    def list_feedback(
        self,
        *,
        rating: FeedbackRating | None = None,
        before: datetime | None = None,
        limit: int = 50,
        within_groups: Sequence[str] | None = None,
    ) -> list[Feedback]:
        """Newest first, at most `limit`, created strictly before `before` (a page's cursor), of one `rating`;
        `within_groups`: only feedback whose groups are all among them (None: all)."""
        ...

    def delete_feedback(self, feedback_id: str) -> bool: ...


@runtime_checkable
class KeyStore(Protocol):
    """API keys (by the digest of the secret, never the secret) and signed-out web-page sessions (durable)."""

    def add_api_key(self, key: ApiKey, digest: str) -> ApiKey: ...

    def api_key_by_digest(self, digest: str) -> ApiKey | None: ...

    def api_key_by_id(self, key_id: str) -> ApiKey | None: ...

    def list_api_keys(self) -> list[ApiKey]: ...

    def revoke_api_key(self, key_id: str) -> bool: ...

    def touch_api_key(self, key_id: str) -> None: ...

    def revoke_session(self, nonce: str, expires_at: datetime) -> None:
        """A signed-out web-page session token (by its nonce) is refused until its own expiry."""
        ...

    def session_revoked(self, nonce: str) -> bool: ...


@runtime_checkable
class EventLog(Protocol):
    """Ids of events already taken in hand (durable, shared by every process on the registry): a delivery retried,
    by Slack (X-Slack-Retry-Num) or to another replica, is handled once."""

    def claim_event(self, event_id: str) -> bool:
        """True the first time `event_id` is claimed, False ever after (until forgotten), atomically: of any number
        of processes claiming it at once, exactly one gets True."""
        ...

    def forget_events(self, before: datetime) -> int:
        """Drop the claims made before `before` (retries stop coming long before); how many were dropped."""
        ...


@runtime_checkable
class Registry(DocumentStore, JobQueue, ConversationStore, KeyStore, FeedbackStore, EventLog, Protocol):
    """All six stores in one: the jobs reference the documents (a document is added with its job, and deleting it
    ends its jobs' leases, in one transaction), so one database holds them all (kb.adapters.sql_registry), and
    the container opens it once. A consumer that needs one concern takes the smaller port."""

    def close(self) -> None: ...
