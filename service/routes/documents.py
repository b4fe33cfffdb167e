"""Upload, list, inspect, delete documents and download their originals."""

from __future__ import annotations

import json
from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException, HTTPException, NotFoundException
from litestar.response import Response
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from ingest.pipeline import UploadRejected, UploadTooLarge
from service.state import Services


def _groups(values: list[str]) -> list[str]:
    groups: list[str] = []
    for value in values:
        groups.extend(g.strip() for g in str(value).split(",") if g.strip())
    return groups


class DocumentController(Controller):
    path = "/v1/documents"
    tags = ["documents"]

    @post(status_code=HTTP_202_ACCEPTED, summary="Upload one or several files (multipart field `files`)")
    async def upload(self, request: Request, services: Services) -> dict[str, Any]:
        form = await request.form()
        files = [f for key in form for f in form.getall(key) if isinstance(f, UploadFile)]
        if not files:
            raise ClientException("no files in the upload: send them as multipart form field 'files'")
        groups = _groups(form.getall("groups")) if "groups" in form else []
        metadata: dict[str, Any] = {}
        if "metadata" in form:
            try:
                metadata = json.loads(form["metadata"])
            except ValueError as exc:
                raise ClientException(f"metadata must be a JSON object: {exc}") from exc
            if not isinstance(metadata, dict):
                raise ClientException("metadata must be a JSON object")
        document_id = form.get("document_id") or None
        if document_id and len(files) != 1:
            raise ClientException("a new version (document_id) takes exactly one file")
        accepted, rejected = [], []
        too_large = False
        for upload in files:
            data = await upload.read()
            try:
                submitted = services.pipeline.submit(
                    upload.filename, data, groups=groups, metadata=metadata, document_id=document_id
                )
            except UploadRejected as exc:
                too_large |= isinstance(exc, UploadTooLarge)
                rejected.append({"filename": upload.filename, "error": str(exc)})
                continue
            accepted.append({**submitted.document.to_dict(), "duplicate": submitted.duplicate})
        if not accepted:
            if too_large and len(rejected) == 1:
                raise HTTPException(rejected[0]["error"], status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE)
            raise ClientException("no file was accepted", extra={"rejected": rejected})
        services.worker.notify()
        return {"documents": accepted, "rejected": rejected}

    @get(summary="All documents with their status")
    async def list_documents(self, services: Services) -> dict[str, Any]:
        return {"documents": [d.to_dict() for d in services.container.registry.list_documents()]}

    @get("/{document_id:str}", summary="One document: status, error, pages, chunks")
    async def get_document(self, document_id: str, services: Services) -> dict[str, Any]:
        document = services.container.registry.get_document(document_id)
        if document is None:
            raise NotFoundException(f"no document {document_id}")
        return document.to_dict()

    @delete("/{document_id:str}", summary="Delete a document: chunks, registry row and original")
    async def delete_document(self, document_id: str, services: Services) -> None:
        if not services.pipeline.delete(document_id):
            raise NotFoundException(f"no document {document_id}")

    @get("/{document_id:str}/file", summary="The original file, for opening a citation")
    async def download(self, document_id: str, services: Services) -> Response[bytes]:
        document = services.container.registry.get_document(document_id)
        if document is None:
            raise NotFoundException(f"no document {document_id}")
        return Response(
            services.container.blobs.read(services.pipeline.original_key(document)),
            media_type=document.content_type,
            headers={"Content-Disposition": f"inline; filename*=UTF-8''{_quote(document.filename)}"},
        )


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
