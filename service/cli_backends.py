"""What the CLI talks to: the data directory itself (when no server owns it) or the server that does."""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec
from tenacity import RetryError, Retrying, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

from kb.settings import Settings
from service.ask.schemas import AskResponse
from service.datadir import DataDirLock
from service.documents.schemas import DocumentOut, UploadedDocument
from service.search.schemas import PassageOut, SearchResponse

TERMINAL = {"ready", "failed"}
OnUpdate = Callable[[dict[str, Any]], None]


class CliBackend(Protocol):
    def submit(self, path: Path, groups: list[str]) -> dict[str, Any]: ...

    def wait(self, document_ids: list[str], on_update: OnUpdate) -> list[dict[str, Any]]: ...

    def documents(self) -> list[dict[str, Any]]: ...

    def search(self, query: str, top_k: int) -> dict[str, Any]: ...

    def ask(self, question: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


def wire(value: Any) -> Any:
    """A response Struct as the JSON the HTTP API sends: `kb --json` prints the same shapes in either mode."""
    return msgspec.json.decode(msgspec.json.encode(value))


class LocalBackend:
    """Opens the data directory in this process, which holds its lock. Answers in the HTTP API's response types."""

    def __init__(self, settings: Settings, lock: DataDirLock, *, with_generator: bool) -> None:
        from kb.container import Container
        from service.state import Services

        self._lock = lock
        self._loop = asyncio.new_event_loop()
        self._container = Container.open(settings)
        self._services = self._loop.run_until_complete(
            Services.open(self._container, with_generator=with_generator)
        )

    def submit(self, path: Path, groups: list[str]) -> dict[str, Any]:
        groups = groups or self._container.settings.auth.default_groups
        submitted = self._services.pipeline.submit(path.name, path.read_bytes(), groups=groups)
        return wire(UploadedDocument.of(submitted.document, duplicate=submitted.duplicate))

    def wait(self, document_ids: list[str], on_update: OnUpdate) -> list[dict[str, Any]]:
        registry = self._container.registry

        def done(document_id: str) -> None:
            document = registry.get_document(document_id)
            if document is not None:
                on_update(wire(DocumentOut.of(document)))

        # Jobs left unfinished by an earlier run are taken too: the queue is shared and durable.
        self._services.worker.drain(done)
        return [wire(DocumentOut.of(d)) for d in (registry.get_document(i) for i in document_ids) if d is not None]

    def documents(self) -> list[dict[str, Any]]:
        return [wire(DocumentOut.of(d)) for d in self._container.registry.list_documents()]

    def search(self, query: str, top_k: int) -> dict[str, Any]:
        result = self._services.retrieval.search_sync(query, top_k)
        return wire(SearchResponse([PassageOut.of(p) for p in result.passages], result.relevant,
                                   round(result.latency_ms, 2)))  # fmt: skip

    def ask(self, question: str) -> dict[str, Any]:
        if self._services.answers is None:
            raise RuntimeError("opened without a generator")
        answer = self._loop.run_until_complete(self._services.answers.ask(question))
        return wire(AskResponse.of(answer))

    def close(self) -> None:
        try:
            self._services.worker.stop()
            self._loop.run_until_complete(self._container.aclose())
            self._loop.close()
        finally:
            self._lock.release()


class HttpBackend:
    """Hands the work to the `kb serve` that owns the data directory."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 300.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)
        until_ready = Retrying(
            retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(lambda ready: not ready),
            stop=stop_after_delay(180), wait=wait_fixed(0.5),
        )
        try:
            until_ready(lambda: self._client.get("/readyz").status_code == 200)
        except RetryError:
            raise RuntimeError(f"the server at {base_url} owns the data directory but is not ready") from None

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}")
        return response.json()

    def submit(self, path: Path, groups: list[str]) -> dict[str, Any]:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as fh:
            data = {"groups": ",".join(groups)} if groups else None
            body = self._json(self._client.post("/v1/documents", files={"files": (path.name, fh, content_type)}, data=data))
        if body["rejected"] and not body["documents"]:
            raise RuntimeError(body["rejected"][0]["error"])
        return body["documents"][0]

    def wait(self, document_ids: list[str], on_update: OnUpdate) -> list[dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}

        def finished() -> bool:
            for document_id in document_ids:
                if latest.get(document_id, {}).get("status") in TERMINAL:
                    continue
                document = self._json(self._client.get(f"/v1/documents/{document_id}"))
                if latest.get(document_id) != document:
                    on_update(document)
                latest[document_id] = document
            return all(d.get("status") in TERMINAL for d in latest.values()) and len(latest) == len(document_ids)

        # No deadline: ingestion takes as long as its documents need, and the progress shows it is moving.
        Retrying(retry=retry_if_result(lambda done: not done), wait=wait_fixed(0.5))(finished)
        return [latest[i] for i in document_ids]

    def documents(self) -> list[dict[str, Any]]:
        return self._json(self._client.get("/v1/documents"))["documents"]

    def search(self, query: str, top_k: int) -> dict[str, Any]:
        return self._json(self._client.post("/v1/search", json={"query": query, "top_k": top_k}))

    def ask(self, question: str) -> dict[str, Any]:
        return self._json(self._client.post("/v1/ask", json={"question": question}))

    def close(self) -> None:
        self._client.close()


def open_backend(settings: Settings, *, with_generator: bool) -> CliBackend:
    lock = DataDirLock(settings.resolved_data_dir)
    if lock.try_acquire():
        try:
            return LocalBackend(settings, lock, with_generator=with_generator)
        except BaseException:
            lock.release()
            raise
    url = lock.server_url()
    if url is None:
        raise SystemExit(f"error: {lock.busy_message()}")
    return HttpBackend(url, local_api_key(settings))


def local_api_key(settings: Settings) -> str | None:
    """KB_API_KEY, else the local admin key the server wrote into the data directory (whoever can read that
    directory can read the whole knowledge base anyway)."""
    key = os.environ.get("KB_API_KEY")
    if key:
        return key
    try:
        return settings.admin_key_path.read_text().strip() or None
    except OSError:
        return None
