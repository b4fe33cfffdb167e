"""Upload, list, inspect, delete documents and download their originals."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException, HTTPException, NotFoundException, PermissionDeniedException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Parameter
from litestar.response import Response
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from ingest.pipeline import UploadRejected, UploadTooLarge
from kb.models import Document
from service.auth import Principal, assignable_groups, requires
from service.documents.chunks import MAX_NEIGHBOURS, read_chunk
from service.documents.originals import PLAIN_TEXT_TYPES, content_disposition, text_with_charset
from service.documents.schemas import (
    CITATION_VIEW_EXAMPLE,
    DOCUMENT_EXAMPLE,
    DOCUMENTS_EXAMPLE,
    UPLOAD_EXAMPLE,
    ChunkOut,
    CitationView,
    DocumentList,
    DocumentOut,
    RejectedFile,
    UploadedDocument,
    UploadResponse,
)
from service.openapi import ok
from service.state import Services

# Reading documents (the list, a document) needs `search`, as the README's scope table says; a key that may only
# upload (`ingest`) still polls the status of one document (`kb ingest` through a server does). An original is also
# open to `ask`: an answer's citations must be checkable by whoever got the answer (within the key's groups).
READ = requires("search")
STATUS = requires("search", "ingest")
ORIGINAL = requires("search", "ask")
UPLOAD_DESCRIPTION = """multipart/form-data fields: `files` (one or more), `groups` (optional, comma-separated; the
caller must belong to each), `metadata` (optional JSON object, filterable in search), `document_id` (optional:
upload a new version of that document). Without `groups`, the documents get the configured default groups
(`KB_AUTH__DEFAULT_GROUPS`) if the caller belongs to all of them (or has every group, `*`), and otherwise every group
of the caller's own key: an upload never lands where its uploader cannot read it back. Example:

    curl -H "Authorization: Bearer $KB_API_KEY" -F files=@handbook.pdf -F groups=staff \\
         -F 'metadata={"team": "ops"}' http://127.0.0.1:8000/v1/documents
"""


def visible_document(services: Services, principal: Principal, document_id: str) -> Document:
    """The document if the caller may see it; otherwise 404, the same as for a document that does not exist."""
    document = services.container.registry.get_document(document_id)
    if document is None or not principal.sees(document.groups):
        raise NotFoundException(f"no document {document_id}")
    return document


def writable_document(services: Services, principal: Principal, document_id: str) -> Document:
    """The document if the caller may replace or delete it: it must belong to every group the document is shared
    with (a key of one group must not rewrite what another group's readers see); 404 if it cannot see it at all."""
    document = visible_document(services, principal, document_id)
    foreign = sorted(set(document.groups) - set(principal.groups)) if not principal.unrestricted else []
    if foreign:
        raise PermissionDeniedException(
            f"this key may not change a document shared with groups it does not belong to: {', '.join(foreign)}"
        )
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (metadata values must be finite)")


def _groups(values: list[str]) -> list[str]:
    groups: list[str] = []
    for value in values:
        groups.extend(g.strip() for g in str(value).split(",") if g.strip())
    return groups


class DocumentController(Controller):
    path = "/v1/documents"
    tags = ["documents"]  # noqa: RUF012 - Litestar reads it as a class attribute

    @post(
        status_code=HTTP_202_ACCEPTED, summary="Upload one or several files (multipart field `files`)",
        description=UPLOAD_DESCRIPTION, guards=[requires("ingest")], responses=ok(UploadResponse, UPLOAD_EXAMPLE, status=202),
    )  # fmt: skip
    async def upload(self, request: Request[Principal, Any, Any], services: Services) -> UploadResponse:
        try:
            form = await request.form()
        except UnicodeDecodeError as exc:
            # A part without a file name is a text field to Litestar, which decodes it as UTF-8.
            raise ClientException(f"a form field is not UTF-8 text (a file part needs a filename): {exc}") from exc
        files = [f for key in form for f in form.getall(key) if isinstance(f, UploadFile)]
        if not files:
            raise ClientException("no files in the upload: send them as multipart form field 'files'")
        groups = assignable_groups(
            request.user,
            _groups(form.getall("groups")) if "groups" in form else [],
            services.container.settings.auth.default_groups,
        )
        metadata: dict[str, Any] = {}
        if "metadata" in form:
            try:
                metadata = json.loads(form["metadata"], parse_constant=_no_constant)
            except ValueError as exc:
                raise ClientException(f"metadata must be a JSON object: {exc}") from exc
            if not isinstance(metadata, dict):
                raise ClientException("metadata must be a JSON object")
        document_id = form.get("document_id") or None
        if document_id and len(files) != 1:
            raise ClientException("a new version (document_id) takes exactly one file")
        if document_id:
            writable_document(services, request.user, document_id)
        accepted: list[UploadedDocument] = []
        rejected: list[RejectedFile] = []
        too_large = False
        for upload in files:
            data = await upload.read()
            try:
                submitted = services.pipeline.submit(
                    upload.filename, data, groups=groups, metadata=metadata, document_id=document_id
                )
            except UploadRejected as exc:
                too_large |= isinstance(exc, UploadTooLarge)
                rejected.append(RejectedFile(upload.filename, str(exc)))
                continue
            accepted.append(UploadedDocument.of(submitted.document, duplicate=submitted.duplicate))
        if not accepted:
            if too_large and len(rejected) == 1:
                raise HTTPException(rejected[0].error, status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE)
            raise ClientException(
                "no file was accepted", extra={"rejected": [msgspec.to_builtins(r) for r in rejected]}
            )
        services.worker.notify()
        return UploadResponse(accepted, rejected)

    @get(
        summary="The documents the caller may see, with their status", guards=[READ],
        responses=ok(DocumentList, DOCUMENTS_EXAMPLE),
    )  # fmt: skip
    async def list_documents(self, request: Request[Principal, Any, Any], services: Services) -> DocumentList:
        documents = services.container.registry.list_documents()
        return DocumentList([DocumentOut.of(d) for d in documents if request.user.sees(d.groups)])

    @get(
        "/{document_id:str}", summary="One document: status, error, pages, chunks (scope search or ingest)",
        guards=[STATUS],
        responses=ok(DocumentOut, DOCUMENT_EXAMPLE),
    )  # fmt: skip
    async def get_document(
        self, document_id: str, request: Request[Principal, Any, Any], services: Services
    ) -> DocumentOut:
        return DocumentOut.of(visible_document(services, request.user, document_id))

    @delete(
        "/{document_id:str}", summary="Delete a document: chunks, registry row and original",
        guards=[requires("ingest")],
    )  # fmt: skip
    async def delete_document(
        self, document_id: str, request: Request[Principal, Any, Any], services: Services
    ) -> None:
        writable_document(services, request.user, document_id)
        if not services.pipeline.delete(document_id):
            raise NotFoundException(f"no document {document_id}")

    @get(
        "/{document_id:str}/file", summary="The original file, for opening a citation", guards=[ORIGINAL],
        media_type="application/octet-stream",
        responses={200: ResponseSpec(
            data_container=bytes, media_type="application/octet-stream", description="The original bytes",
            examples=[Example(summary="a PDF", value="%PDF-1.7 …")], generate_examples=False,
        )},
    )  # fmt: skip
    async def download(
        self, document_id: str, request: Request[Principal, Any, Any], services: Services
    ) -> Response[bytes]:
        # An original is whatever its uploader sent (HTML, SVG with scripts...): it must never run in kb's origin,
        # where the web page's session lives. So: no sniffing, a sandbox without scripts or fetches, and a download
        # rather than a page, except for a real PDF (type and magic bytes), which the browser's PDF viewer shows
        # outside kb's origin, so that a citation opens at its page.
        document = visible_document(services, request.user, document_id)
        data = services.container.blobs.read(services.pipeline.original_key(document))
        is_pdf = document.content_type == "application/pdf" and data.startswith(b"%PDF")
        disposition = "inline" if is_pdf else "attachment"
        charset: str | None = None
        if document.content_type in PLAIN_TEXT_TYPES:
            data, charset = await asyncio.to_thread(text_with_charset, data)
        return Response(
            data,
            media_type=document.content_type,
            encoding=charset or "utf-8",  # the charset Litestar names in a text/* Content-Type
            headers={
                "Content-Disposition": content_disposition(disposition, document.filename),
                "Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-store",
            },
        )

    @get(
        "/{document_id:str}/chunks/{chunk_id:str}", guards=[ORIGINAL],
        summary="A cited chunk with its neighbours in document order, for opening a citation (scope search or ask)",
        description="`neighbours` (0 to 5, default 1) chunks before and after the cited one, each within the "
        "caller's groups. A citation's `span` is a character range of `chunk.text`. 404 for a document the caller "
        "cannot see, as for one that does not exist, and for a chunk of a version since replaced.",
        responses=ok(CitationView, CITATION_VIEW_EXAMPLE),
    )  # fmt: skip
    async def citation_view(
        self,
        document_id: str,
        chunk_id: str,
        request: Request[Principal, Any, Any],
        services: Services,
        neighbours: Annotated[int, Parameter(ge=0, le=MAX_NEIGHBOURS, description="chunks on each side")] = 1,
    ) -> CitationView:
        document = visible_document(services, request.user, document_id)
        view = await asyncio.to_thread(
            read_chunk, services.container.index, request.user, document, chunk_id, neighbours
        )
        if view is None:
            raise NotFoundException(f"no chunk {chunk_id} in document {document_id}")
        original = f"/v1/documents/{document.document_id}/file"
        page = view.chunk.page if document.content_type == "application/pdf" else None
        return CitationView(
            document_id=document.document_id,
            filename=document.filename,
            media_type=document.content_type,
            pages=document.pages,
            chunk=ChunkOut.of(view.chunk),
            before=[ChunkOut.of(p) for p in view.before],
            after=[ChunkOut.of(p) for p in view.after],
            original_url=original,
            page_url=f"{original}#page={page}" if page is not None else None,
        )
