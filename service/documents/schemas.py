"""What /v1/documents takes and returns (the handlers return these Structs, so the OpenAPI schema is what runs).
A document's fields are kb.models.Document's; `DocumentOut.of` is the one place that maps them."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

from kb.models import Document, Passage
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
    def of(cls, document: Document) -> DocumentOut:
        return msgspec.convert(document.to_dict(), cls)


class UploadedDocument(DocumentOut):
    duplicate: bool = False

    @classmethod
    def of(cls, document: Document, duplicate: bool = False) -> UploadedDocument:  # type: ignore[override]
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


class ChunkOut(Struct):
    """One chunk as a reader sees it: `index` is its place in the document (0, 1, …)."""

    chunk_id: str
    text: str
    page: int | None
    section: str | None
    index: int

    @classmethod
    def of(cls, passage: Passage) -> ChunkOut:
        return cls(passage.chunk_id, passage.text, passage.page, passage.section, passage.ordinal)


class CitationView(Struct):
    """A cited chunk with its neighbours in document order. A citation's `span` is a character range of
    `chunk.text`; `page_url` opens the original at the chunk's page (PDFs only)."""

    document_id: str
    filename: str
    media_type: str
    pages: int | None
    chunk: ChunkOut
    before: list[ChunkOut]
    after: list[ChunkOut]
    original_url: str
    page_url: str | None


_CHUNK_ID = "0d5c2d5e-5b7f-5c69-9a43-2f6f1f0f3c11"
CITATION_VIEW_EXAMPLE = {
    "document_id": DOCUMENT_ID, "filename": "kb-administrator-guide.pdf", "media_type": "application/pdf",
    "pages": 3,
    "chunk": {"chunk_id": _CHUNK_ID, "text": "Uploads are limited to 100 MB per file by default.", "page": 2,
              "section": "Upload limits", "index": 3},
    "before": [{"chunk_id": "5e1f…", "text": "Supported formats: PDF, Word, …", "page": 2,
                "section": "Formats", "index": 2}],
    "after": [{"chunk_id": "9a0b…", "text": "A larger file is refused with 413.", "page": 2,
               "section": "Upload limits", "index": 4}],
    "original_url": f"/v1/documents/{DOCUMENT_ID}/file", "page_url": f"/v1/documents/{DOCUMENT_ID}/file#page=2",
}  # fmt: skip
