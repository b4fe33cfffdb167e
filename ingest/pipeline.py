"""One document through the write path: original -> blocks -> chunks -> vectors -> index, state in the registry.

Versions: a changed upload of a known document (same `document_id`, or the same file name in the same collection)
becomes its next version. Its chunks are indexed "staged" and `VectorIndex.publish` swaps them in, so a search sees
the old version or the new one, never both or neither; the original of each version is kept until it is replaced.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from ingest.chunk import Chunker, sentences
from ingest.formats import sniff_content_type
from ingest.partition import Block, ParseError
from ingest.titles import document_title
from kb.languages import MULTILINGUAL, embedder_covers
from kb.models import Chunk, Document, DocumentStatus, Job
from kb.ports import BlobStore, Embedder, Registry, VectorIndex
from kb.settings import IngestSettings

log = logging.getLogger(__name__)

# Room left in the embedding window for the section heading prefixed to each chunk, and the special tokens.
_HEADING_RESERVE_TOKENS = 48
_EMBED_BATCH = 64
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")
# Invisible characters that change how a name reads without showing: C1 controls, the Arabic letter mark, bidi marks,
# embeddings, overrides and isolates (U+202E makes "cod.exe" look like "exe.doc"), zero-width and word-joining
# characters, the byte-order mark, soft hyphen, Mongolian vowel separator, interlinear annotation and tag characters.
_INVISIBLE_IN_FILENAME = re.compile(
    "[\x80-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\U000e0000-\U000e007f]+"
)

Progress = Callable[[dict[str, Any]], None]


class UploadRejected(ValueError):
    """The upload itself is unacceptable (empty, unknown document, ...): nothing was stored."""


class UploadTooLarge(UploadRejected):
    """Over the per-file upload limit: HTTP 413."""


class DocumentGone(LookupError):
    """The document was deleted while it was being ingested."""


class LeaseLost(RuntimeError):
    """The job's claim no longer holds its lease (the document was deleted, or the job was retaken after the lease
    ran out): this worker must stop and write nothing more."""


def sanitize_filename(name: str) -> str:
    base = PurePath(_INVISIBLE_IN_FILENAME.sub("", name).replace("\\", "/")).name
    base = _UNSAFE_FILENAME.sub("_", base).strip(" .")
    return base[:255] or "unnamed"


def sentences_to_embed(text: str, languages: Sequence[str] | None) -> list[str]:
    """The sentences of a chunk's embedded text that get their own vectors (ingest.chunk.sentences): none for a chunk
    in a language the embedder lacks (`languages`: EmbedderSettings.languages), as its queries never reach the dense
    side; none at all when `languages` is None (IngestSettings.sentence_vectors off)."""
    return sentences(text) if languages is not None and embedder_covers(list(languages), text) else []


def embed_chunks(
    embedder: Embedder, chunks: Sequence[Chunk], languages: Sequence[str] | None = None
) -> tuple[list[list[float]], list[list[list[float]]]]:
    """Each chunk's vector and its sentences' vectors (ingest.chunk.sentences), in one call to the embedder.

    `languages`: as in `sentences_to_embed`.
    """
    texts = [c.embed_text or c.text for c in chunks]
    per_chunk = [sentences_to_embed(text, languages) for text in texts]
    vectors = embedder.embed_documents(texts + [s for found in per_chunk for s in found])
    chunk_vectors, rest = vectors[: len(texts)], iter(vectors[len(texts) :])
    return chunk_vectors, [[next(rest) for _ in found] for found in per_chunk]


def blob_key(document_id: str, version: int) -> str:
    return f"{document_id}-v{version}"


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
        languages: Sequence[str] = (MULTILINGUAL,),
    ) -> None:
        """`languages`: what the embedder understands (EmbedderSettings.languages)."""
        self._registry = registry
        self._blobs = blobs
        self._embedder = embedder
        self._index = index
        self._settings = settings
        self._sentence_languages = list(languages) if settings.sentence_vectors else None
        # Publishing a version and deleting the document exclude each other (within this process).
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        max_body = min(settings.chunk_tokens, embedder.max_tokens - _HEADING_RESERVE_TOKENS)
        self.chunker = Chunker(embedder, max_body, settings.chunk_overlap_tokens)  # type: ignore[arg-type]

    def submit(
        self,
        filename: str,
        data: bytes,
        *,
        groups: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        document_id: str | None = None,
    ) -> Submitted:
        """Store the original and queue it. Identical bytes return the existing document; changed bytes of a known
        document (by id, or by name within its collection) queue its next version."""
        if not data:
            raise UploadRejected(f"{filename}: empty file")
        if len(data) > self._settings.max_upload_bytes:
            raise UploadTooLarge(
                f"{filename}: {len(data)} bytes exceeds the upload limit of {self._settings.max_upload_bytes}"
            )
        sha256 = hashlib.sha256(data).hexdigest()
        safe_name = sanitize_filename(filename)
        content_type = sniff_content_type(data, safe_name)
        metadata = dict(metadata or {})

        if document_id is not None:
            previous = self._registry.get_document(document_id)
            if previous is None:
                raise UploadRejected(f"no document {document_id} to replace")
        else:
            # Within the same audience only: another group's copy or namesake is not this upload's business.
            duplicate = self._registry.find_by_sha256(sha256, list(groups or []))
            if duplicate is not None:
                return Submitted(duplicate, duplicate=True)
            previous = self._registry.find_by_name(safe_name, str(metadata.get("collection", "")), list(groups or []))

        if previous is not None:
            if previous.sha256 == sha256:
                return Submitted(previous, duplicate=True)
            key = blob_key(previous.document_id, previous.version + 1)
            self._blobs.put(key, data)
            try:
                document = self._registry.new_version(
                    previous.document_id, sha256=sha256, size_bytes=len(data), content_type=content_type, enqueue=True
                )
            except BaseException:
                self._blobs.delete(key)  # the registry refused it (or is down): leave nothing behind
                raise
        else:
            document = Document(
                document_id=uuid.uuid4().hex,
                filename=safe_name,
                content_type=content_type,
                sha256=sha256,
                size_bytes=len(data),
                groups=list(groups or []),
                metadata=metadata,
            )
            # Original first: a registry row never points at a missing file; the row and its job in one
            # transaction; an original whose row could not be written is removed.
            key = blob_key(document.document_id, document.version)
            self._blobs.put(key, data)
            try:
                document = self._registry.add_document(document, enqueue=True)
            except BaseException:
                self._blobs.delete(key)
                raise
        return Submitted(document, duplicate=False)

    def original_key(self, document: Document) -> str:
        """The original of the version searches see (or of the only version, before it is ready)."""
        return blob_key(document.document_id, document.live_version or document.version)

    def index_blocks(
        self, document_id: str, blocks: Sequence[Block], progress: Progress | None = None, *, fence: Job | None = None
    ) -> Document:
        """Chunk, embed and index parsed blocks as the document's current version, then publish that version.

        `fence`: the worker's claim. Every registry write is made only while it holds its lease, which is checked
        after every batch and before publishing: LeaseLost once it does not (a deleted document's work stops at the
        next batch; `abandon` then removes what was staged)."""
        document = self._registry.get_document(document_id)
        if document is None:
            raise LookupError(f"document {document_id} is not in the registry")
        pages = max((b.page for b in blocks if b.page is not None), default=None)
        if pages is not None and pages > self._settings.max_pages:
            raise ParseError(f"too many pages: {pages} (the limit is {self._settings.max_pages})")
        chunks = self.chunker.chunk(
            blocks, document_id=document_id, filename=document.filename, groups=document.groups,
            version=document.version,
        )  # fmt: skip
        # BM25 reads the title with the file name (kb.index.plan.sparse_text): questions naming the document find it.
        title = document_title(blocks, document.filename)
        for chunk in chunks:
            chunk.staged = True
            chunk.title = title
            # What SearchFilter.metadata / created_after / created_before match on.
            chunk.metadata = dict(document.metadata)
            chunk.created_at = document.created_at
        state: dict[str, Any] = {"stage": "embedding", "pages_parsed": pages, "chunks_total": len(chunks),
                                 "chunks_embedded": 0}  # fmt: skip
        self._report(document_id, state, progress, fence)
        # Leftovers of an interrupted run of this document are dropped; stable ids would overwrite most anyway.
        self._index.discard_staged(document_id)
        for start in range(0, len(chunks), _EMBED_BATCH):
            batch = chunks[start : start + _EMBED_BATCH]
            self._index.upsert(batch, *embed_chunks(self._embedder, batch, self._sentence_languages))
            state["chunks_embedded"] = start + len(batch)
            self._report(document_id, state, progress, fence)
        with self._document_lock(document_id):
            current = self._registry.get_document(document_id)
            if current is None:
                # Deleted while it was being embedded: its staged chunks must not become searchable.
                self._index.delete_document(document_id)
                raise DocumentGone(document_id)
            if fence is not None and not self._registry.holds_lease(fence):
                raise LeaseLost(f"job {fence.job_id} of {document_id} lost its lease before publishing")
            self._index.publish(document_id, document.version)
            if not self._registry.set_live_version(document_id, document.version, fence=fence):
                # Deleted (or retaken) in the instant since the check: a deleted document's chunks go.
                self.abandon(document_id)
                raise LeaseLost(f"job {fence.job_id if fence else '?'} of {document_id} lost its lease while publishing")
            if current.version == document.version:
                self._registry.update_progress(document_id, {**state, "stage": "done"}, fence=fence)
                self._registry.set_status(
                    document_id, DocumentStatus.READY, pages=pages, chunks=len(chunks), fence=fence
                )
            # else a newer version was queued meanwhile: this one is live until that one is ready.
            for older in range(1, document.version):
                self._blobs.delete(blob_key(document_id, older))
        return self._registry.get_document(document_id)  # type: ignore[return-value]

    def _document_lock(self, document_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(document_id, threading.Lock())

    def _report(self, document_id: str, state: dict[str, Any], progress: Progress | None, fence: Job | None) -> None:
        if not self._registry.update_progress(document_id, dict(state), fence=fence):
            if self._registry.get_document(document_id) is None:
                self.abandon(document_id)  # what this run upserted after the delete
                raise DocumentGone(document_id)
            if fence is not None:
                raise LeaseLost(f"job {fence.job_id} of {document_id} lost its lease")
        if progress is not None:
            progress(state)

    def mark_failed(self, document_id: str, reason: str, *, fence: Job | None = None) -> bool:
        """A permanent failure: the reason is kept; the live version (if any) stays searchable. False (nothing
        written) when `fence` lost its lease."""
        if fence is not None and not self._registry.holds_lease(fence):
            return False
        self._index.discard_staged(document_id)
        return self._registry.set_status(document_id, DocumentStatus.FAILED, error=reason, fence=fence)

    def abandon(self, document_id: str) -> None:
        """After a job stopped for a lost lease: if its document was deleted meanwhile, remove whatever the job
        staged or published after the delete (the delete itself removed what was there then). A document that
        still exists was retaken by another claim, which owns its staged chunks: nothing is touched."""
        with self._document_lock(document_id):
            if self._registry.get_document(document_id) is None:
                self._index.delete_document(document_id)

    def delete(self, document_id: str) -> bool:
        with self._document_lock(document_id):
            document = self._registry.get_document(document_id)
            if document is None:
                return False
            self._index.delete_document(document_id)
            self._registry.delete_document(document_id)
            for version in range(1, document.version + 1):
                self._blobs.delete(blob_key(document_id, version))
        with self._locks_guard:
            self._locks.pop(document_id, None)
        return True
