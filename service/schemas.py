"""Response shapes and examples for the OpenAPI description at /schema (the handlers return plain dicts of these)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from msgspec import Meta, Struct

DOCUMENT_ID = "3f2a9c1e0b7d4e5f8a6b2c1d0e9f8a7b"
MAX_TOP_K = 100
# Passages per search: 0, negative or absurd values are refused with 400 (not silently clamped).
TopK = Annotated[int, Meta(ge=1, le=MAX_TOP_K, description=f"number of passages, 1 to {MAX_TOP_K}")]


class DocumentOut(Struct):
    document_id: str
    filename: str
    content_type: str
    sha256: str
    size_bytes: int
    status: str
    error: str | None
    pages: int | None
    chunks: int | None
    groups: list[str]
    metadata: dict[str, Any]
    version: int
    live_version: int | None
    progress: dict[str, Any]
    created_at: str | None
    updated_at: str | None


class UploadedDocument(DocumentOut):
    duplicate: bool = False


class RejectedFile(Struct):
    filename: str
    error: str


class UploadResponse(Struct):
    documents: list[UploadedDocument]
    rejected: list[RejectedFile]


class DocumentList(Struct):
    documents: list[DocumentOut]


class PassageOut(Struct):
    chunk_id: str
    document_id: str
    filename: str
    page: int | None
    page_end: int | None
    section: str | None
    text: str
    score: float


class SearchResponse(Struct):
    passages: list[PassageOut]
    relevant: bool
    latency_ms: float


class CitationOut(Struct):
    n: int
    document_id: str
    filename: str
    page: int | None
    section: str | None
    snippet: str
    chunk_id: str
    span: list[int] | None
    supported: bool
    inferred: bool
    score: float | None


class AskResponse(Struct):
    answer: str
    citations: list[CitationOut]
    grounded: bool
    timings_ms: dict[str, float]
    conversation_id: str | None


class KeyOut(Struct):
    key_id: str
    name: str
    prefix: str
    scopes: list[str]
    groups: list[str]
    created_at: str | None
    revoked_at: str | None
    last_used_at: str | None
    expires_at: str | None  # None: never


class CreatedKey(KeyOut):
    key: str  # shown once


class KeyList(Struct):
    keys: list[KeyOut]


_DOCUMENT = {
    "document_id": DOCUMENT_ID, "filename": "kb-administrator-guide.pdf", "content_type": "application/pdf",
    "sha256": "9b1e…", "size_bytes": 48213, "status": "ready", "error": None, "pages": 3, "chunks": 7,
    "groups": ["staff"], "metadata": {"team": "ops"}, "version": 1, "live_version": 1,
    "progress": {"stage": "done", "chunks_indexed": 7}, "created_at": "2026-11-26T09:00:00+00:00",
    "updated_at": "2026-11-26T09:00:04+00:00",
}  # fmt: skip
_PASSAGE = {
    "chunk_id": "0d5c2d5e-5b7f-5c69-9a43-2f6f1f0f3c11", "document_id": DOCUMENT_ID,
    "filename": "kb-administrator-guide.pdf", "page": 2, "page_end": 2, "section": "Upload limits",
    "text": "Uploads are limited to 100 MB per file by default (KB_INGEST__MAX_UPLOAD_BYTES).", "score": 0.83,
}  # fmt: skip
_CITATION = {
    "n": 1, "document_id": DOCUMENT_ID, "filename": "kb-administrator-guide.pdf", "page": 2,
    "section": "Upload limits", "snippet": "Uploads are limited to 100 MB per file by default",
    "chunk_id": _PASSAGE["chunk_id"], "span": [0, 50], "supported": True, "inferred": False, "score": 0.83,
}  # fmt: skip
_ANSWER = {
    "answer": "Each uploaded file may be at most 100 MB by default [1].", "citations": [_CITATION],
    "grounded": True, "timings_ms": {"retrieval": 18.2, "first_token": 212.0, "total": 1650.0},
    "conversation_id": "c1f0e2d3a4b5c6d7e8f9a0b1c2d3e4f5",
}  # fmt: skip
_KEY = {
    "key_id": "5e1f0c9a7b3d2e4f", "name": "support bot", "prefix": "kb_Zx81fQ2", "scopes": ["search", "ask"],
    "groups": ["staff"], "created_at": "2026-11-26T09:00:00+00:00", "revoked_at": None, "last_used_at": None,
    "expires_at": None,
}  # fmt: skip


def ok(container: type, value: Any, description: str = "Success") -> dict[int, ResponseSpec]:
    """The success response of a route with its schema and one example."""
    status = 202 if container is UploadResponse else 201 if container is CreatedKey else 200
    return {
        status: ResponseSpec(
            data_container=container,
            description=description,
            examples=[Example(summary="example", value=value)],
            generate_examples=False,
        )
    }


EXAMPLES: dict[str, Any] = {
    "document": _DOCUMENT,
    "upload": {"documents": [{**_DOCUMENT, "status": "queued", "pages": None, "chunks": None, "duplicate": False}],
               "rejected": [{"filename": "huge.iso", "error": "file is 4.2 GB: the limit is 100 MB"}]},
    "documents": {"documents": [_DOCUMENT]},
    "search": {"passages": [_PASSAGE], "relevant": True, "latency_ms": 12.4},
    "ask": _ANSWER,
    "conversation": {"conversation_id": _ANSWER["conversation_id"], "messages": [
        {"role": "user", "content": "How large may an upload be?", "sources": []},
        {"role": "assistant", "content": _ANSWER["answer"], "sources": [
            {"document_id": DOCUMENT_ID, "filename": "kb-administrator-guide.pdf", "page": 2,
             "chunk_id": _PASSAGE["chunk_id"]}]}]},
    "key": _KEY,
    "created_key": {**_KEY, "key": "kb_Zx81fQ2…(shown once)"},
    "keys": {"keys": [_KEY]},
}


class ConversationMessage(Struct):
    role: str
    content: str
    sources: list[dict[str, Any]]


class ConversationOut(Struct):
    conversation_id: str
    messages: list[ConversationMessage]
