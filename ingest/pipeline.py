"""One document through the write path: original -> blocks -> chunks -> vectors -> index, status in the registry."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
import uuid
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from ingest.chunk import Chunker
from ingest.partition import ParseError, partition_file
from kb.models import Document, DocumentStatus
from kb.ports import BlobStore, Embedder, Registry, VectorIndex
from kb.settings import IngestSettings

log = logging.getLogger(__name__)

# Room left in the embedding window for the section heading prefixed to each chunk, and the special tokens.
_HEADING_RESERVE_TOKENS = 48
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


class UploadRejected(ValueError):
    """The upload itself is unacceptable (too large, empty, ...): nothing was stored."""


def sanitize_filename(name: str) -> str:
    base = PurePath(name.replace("\\", "/")).name
    base = _UNSAFE_FILENAME.sub("_", base).strip(" .")
    return base[:255] or "unnamed"


@dataclass
class Submitted:
    document: Document
    duplicate: bool


class IngestionPipeline:
    def __init__(
        self,
        registry: Registry,
        blobs: BlobStore,
        embedder: Embedder,
        index: VectorIndex,
        settings: IngestSettings,
    ) -> None:
        self._registry = registry
        self._blobs = blobs
        self._embedder = embedder
        self._index = index
        self._settings = settings
        max_body = min(settings.chunk_tokens, embedder.max_tokens - _HEADING_RESERVE_TOKENS)
        self.chunker = Chunker(embedder, max_body, settings.chunk_overlap_tokens)  # type: ignore[arg-type]

    def submit(
        self,
        filename: str,
        data: bytes,
        *,
        groups: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Submitted:
        """Store the original and queue it; identical bytes already present return the existing document."""
        if not data:
            raise UploadRejected(f"{filename}: empty file")
        if len(data) > self._settings.max_upload_bytes:
            raise UploadRejected(
                f"{filename}: {len(data)} bytes exceeds the upload limit of {self._settings.max_upload_bytes}"
            )
        sha256 = hashlib.sha256(data).hexdigest()
        existing = self._registry.find_by_sha256(sha256)
        if existing is not None:
            return Submitted(existing, duplicate=True)
        safe_name = sanitize_filename(filename)
        document = Document(
            document_id=uuid.uuid4().hex,
            filename=safe_name,
            content_type=mimetypes.guess_type(safe_name)[0] or "application/octet-stream",
            sha256=sha256,
            size_bytes=len(data),
            groups=list(groups or []),
            metadata=dict(metadata or {}),
        )
        # Original first: a registry row never points at a missing file.
        self._blobs.put(document.document_id, data)
        document = self._registry.add_document(document)
        self._registry.enqueue_job(document.document_id)
        return Submitted(document, duplicate=False)

    def process(self, document_id: str) -> Document:
        """Parse, chunk, embed and index one document; a parse failure marks it failed with the reason."""
        document = self._registry.get_document(document_id)
        if document is None:
            raise LookupError(f"document {document_id} is not in the registry")
        self._registry.set_status(document_id, DocumentStatus.PROCESSING)
        try:
            blocks = partition_file(self._blobs.path(document_id), document.filename)
        except ParseError as exc:
            self._registry.set_status(document_id, DocumentStatus.FAILED, error=str(exc))
            return self._registry.get_document(document_id)  # type: ignore[return-value]
        pages = max((b.page for b in blocks if b.page is not None), default=None)
        chunks = self.chunker.chunk(
            blocks, document_id=document_id, filename=document.filename, groups=document.groups
        )
        vectors = self._embedder.embed_documents([c.embed_text or c.text for c in chunks])
        # Stable chunk ids make a resumed job overwrite rather than duplicate; stale chunks of a previous run go first.
        self._index.delete_document(document_id)
        self._index.upsert(chunks, vectors)
        self._registry.set_status(document_id, DocumentStatus.READY, pages=pages, chunks=len(chunks))
        return self._registry.get_document(document_id)  # type: ignore[return-value]

    def delete(self, document_id: str) -> bool:
        if self._registry.get_document(document_id) is None:
            return False
        self._index.delete_document(document_id)
        self._registry.delete_document(document_id)
        self._blobs.delete(document_id)
        return True
