"""What /v1/documents takes and returns (the handlers return these Structs, so the OpenAPI schema is what runs).
A document's fields are kb.models.Document's; `DocumentOut.of` is the one place that maps them."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from kb.models import Document
from service.search.schemas import DOCUMENT_ID


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

    @classmethod
    def of(cls, document: Document) -> "DocumentOut":
        return msgspec.convert(document.to_dict(), cls)


class UploadedDocument(DocumentOut):
    duplicate: bool = False

    @classmethod
    def of(cls, document: Document, duplicate: bool = False) -> "UploadedDocument":  # type: ignore[override]
        return msgspec.convert({**document.to_dict(), "duplicate": duplicate}, cls)


class RejectedFile(Struct):
    filename: str
    error: str


class UploadResponse(Struct):
    documents: list[UploadedDocument]
    rejected: list[RejectedFile]


class DocumentList(Struct):
    documents: list[DocumentOut]


_DOCUMENT = {
    "document_id": DOCUMENT_ID, "filename": "kb-administrator-guide.pdf", "content_type": "application/pdf",
    "sha256": "9b1e…", "size_bytes": 48213, "status": "ready", "error": None, "pages": 3, "chunks": 7,
    "groups": ["staff"], "metadata": {"team": "ops"}, "version": 1, "live_version": 1,
    "progress": {"stage": "done", "chunks_indexed": 7}, "created_at": "2026-11-26T09:00:00+00:00",
    "updated_at": "2026-11-26T09:00:04+00:00",
}  # fmt: skip
UPLOAD_EXAMPLE = {
    "documents": [{**_DOCUMENT, "status": "queued", "pages": None, "chunks": None, "duplicate": False}],
    "rejected": [{"filename": "huge.iso", "error": "file is 4.2 GB: the limit is 100 MB"}],
}
DOCUMENT_EXAMPLE = _DOCUMENT
DOCUMENTS_EXAMPLE = {"documents": [_DOCUMENT]}
