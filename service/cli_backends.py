"""What the CLI talks to: the data directory itself (when no server owns it) or the server that does."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import msgspec

from kb.settings import Settings
from service.ask.schemas import AskResponse
from service.datadir import DataDirLock
from service.documents.schemas import DocumentOut, UploadedDocument
from service.search.schemas import PassageOut, SearchResponse

TERMINAL = {"ready", "failed"}
OnUpdate = Callable[[dict[str, Any]], None]


class CliBackend(Protocol):
    def where(self) -> str: ...

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

    def __init__(self, settings: Settings, lock: DataDirLock) -> None:
        from kb.container import Container
        from service.state import Services

        self._lock = lock
        self._loop = asyncio.new_event_loop()
        self._container = Container.open(settings)
        # The engine starts at the first question, not before: a knowledge base with nothing to answer from is
        # reported without a minute's wait.
        self._services = self._loop.run_until_complete(Services.open(self._container, with_generator=False))

    def where(self) -> str:
        return str(self._lock.data_dir)

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
            self._loop.run_until_complete(self._services.start_generator())
        assert self._services.answers is not None
        answer = self._loop.run_until_complete(self._services.answers.ask(question))
        return wire(AskResponse.of(answer))

    def close(self) -> None:
        try:
            self._services.worker.stop()
            self._loop.run_until_complete(self._container.aclose())
            self._loop.close()
        finally:
            self._lock.release()


class ServerUnavailable(RuntimeError):
    """The server did not become ready in time."""


class ServerError(RuntimeError):
    """The server refused a request (its status and reason in the message)."""


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# How long a command waits for a server that is starting (an engine on a CPU takes a minute or two).
SERVER_START_TIMEOUT_S = float(os.environ.get("KB_SERVER_START_TIMEOUT_S") or 180)
# Status checks use at most this share of the key's rate limit, and stop short of its last requests: the web page and
# the other clients of the same key keep working while a folder is ingested.
POLL_SHARE = 0.5
MAX_RATE_LIMIT_RETRIES = 30


class HttpBackend:
    """Hands the work to a `kb serve`: the one that owns the data directory, or the one at KB_URL / --url."""

    def __init__(
        self, base_url: str, api_key: str | None = None, *, need_generator: bool = False, say: Say = _quiet,
        start_timeout_s: float | None = None, timeout: float = 300.0,
    ) -> None:  # fmt: skip
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        self._say = say
        self._poll_interval_s = 1.0
        self._pause_until = 0.0
        self._wait_until_ready(need_generator, SERVER_START_TIMEOUT_S if start_timeout_s is None else start_timeout_s)

    def where(self) -> str:
        return f"the server at {self.base_url}"

    def _not_ready(self, need_generator: bool) -> str | None:
        """None when the server can do the work; else why not, in words."""
        try:
            response = self._client.get("/readyz", timeout=5.0)
        except httpx.TransportError:
            return "not answering yet"
        if response.status_code == 200:
            return None
        try:
            checks = response.json().get("checks") or {}
        except ValueError:
            checks = {}
        if response.status_code == 503 and checks:
            failing = {name: reason for name, reason in checks.items() if reason != "ok"}
            if not need_generator:
                failing.pop("generator", None)  # ingest, search and listings need no engine
            return "; ".join(f"{name}: {reason}" for name, reason in failing.items()) or None
        return f"/readyz answered {response.status_code}"

    def _wait_until_ready(self, need_generator: bool, timeout_s: float) -> None:
        started = time.monotonic()
        said_at: float | None = None
        while (reason := self._not_ready(need_generator)) is not None:
            waited = time.monotonic() - started
            if waited >= timeout_s:
                raise ServerUnavailable(
                    f"the server at {self.base_url} was not ready after {waited:.0f} s ({reason}); check that "
                    "`kb serve` is running there and read its log"
                )
            if said_at is None:
                self._say(f"waiting for the server at {self.base_url} to start ({reason})…")
                said_at = waited
            elif waited - said_at >= 10:
                self._say(f"still waiting for the server at {self.base_url}: {waited:.0f} s ({reason})")
                said_at = waited
            time.sleep(0.5)
        if said_at is not None:
            self._say(f"the server at {self.base_url} is ready")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; on 429 waits as long as the server says (Retry-After, else RateLimit-Reset) and tries again."""
        for _ in range(MAX_RATE_LIMIT_RETRIES):
            response = self._client.request(method, path, **kwargs)
            self._note_rate_limit(response)
            if response.status_code != 429:
                return response
            delay = _retry_after(response)
            self._say(f"the server's rate limit for this key is reached: waiting {delay:.0f} s")
            time.sleep(delay)
        return response

    def _note_rate_limit(self, response: httpx.Response) -> None:
        """Paces the status checks from the RateLimit-* headers: an interval that spends at most POLL_SHARE of the
        limit, and a pause until the window resets when only the last few requests are left."""
        try:
            limit = int(response.headers["RateLimit-Limit"])
            window_s = float(response.headers.get("RateLimit-Policy", "").partition("w=")[2].strip() or 60)
            remaining = int(response.headers["RateLimit-Remaining"])
            reset_s = float(response.headers.get("RateLimit-Reset") or window_s)
        except (KeyError, ValueError):
            return
        if limit <= 0:
            return
        self._poll_interval_s = max(1.0, window_s / (limit * POLL_SHARE))
        if remaining <= max(2, limit // 10):
            self._pause_until = max(self._pause_until, time.monotonic() + max(reset_s, 1.0))

    def _pace(self) -> None:
        pause = self._pause_until - time.monotonic()
        if pause > 0:
            if pause > 2:
                self._say(f"pausing status checks for {pause:.0f} s to stay within the key's rate limit")
            time.sleep(pause)
        self._pause_until = 0.0

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ServerError(
                f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
            )
        return response.json()

    def submit(self, path: Path, groups: list[str]) -> dict[str, Any]:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = {"groups": ",".join(groups)} if groups else None
        content = path.read_bytes()  # read once: a request refused with 429 is sent again
        response = self._request(
            "POST", "/v1/documents", files={"files": (path.name, content, content_type)}, data=data
        )
        body = self._json(response)
        if body["rejected"] and not body["documents"]:
            raise RuntimeError(body["rejected"][0]["error"])
        return body["documents"][0]

    def wait(self, document_ids: list[str], on_update: OnUpdate) -> list[dict[str, Any]]:
        """One listing per interval for all the documents still pending (never one request per document)."""
        latest: dict[str, dict[str, Any]] = {}
        pending = set(document_ids)
        # No deadline: ingestion takes as long as its documents need, and the progress shows it is moving.
        while pending:
            self._pace()
            listed = {d["document_id"]: d for d in self.documents()}
            for document_id in sorted(pending):
                document = listed.get(document_id)
                if document is None:  # deleted meanwhile (or no longer visible to this key)
                    document = {**latest.get(document_id, {"document_id": document_id, "filename": ""}),
                                "status": "failed", "error": "no longer listed by the server (deleted?)"}  # fmt: skip
                if latest.get(document_id) != document:
                    on_update(document)
                latest[document_id] = document
                if document.get("status") in TERMINAL:
                    pending.discard(document_id)
            if pending:
                time.sleep(self._poll_interval_s)
        return [latest[i] for i in document_ids]

    def documents(self) -> list[dict[str, Any]]:
        return self._json(self._request("GET", "/v1/documents"))["documents"]

    def search(self, query: str, top_k: int) -> dict[str, Any]:
        return self._json(self._request("POST", "/v1/search", json={"query": query, "top_k": top_k}))

    def ask(self, question: str) -> dict[str, Any]:
        return self._json(self._request("POST", "/v1/ask", json={"question": question}))

    def close(self) -> None:
        self._client.close()


def _retry_after(response: httpx.Response) -> float:
    for header in ("Retry-After", "RateLimit-Reset"):
        try:
            return min(max(float(response.headers[header]), 1.0), 300.0)
        except (KeyError, ValueError):
            continue
    return 5.0


def open_backend(settings: Settings, *, with_generator: bool, url: str | None = None, say: Say = _quiet) -> CliBackend:
    """The server at `url` if given; else the data directory itself, or the server that owns it."""
    if url:
        return HttpBackend(url, os.environ.get("KB_API_KEY") or None, need_generator=with_generator, say=say)
    lock = DataDirLock(settings.resolved_data_dir)
    if lock.try_acquire():
        try:
            return LocalBackend(settings, lock)
        except BaseException:
            lock.release()
            raise
    server_url = lock.server_url()
    if server_url is None:
        raise SystemExit(f"error: {lock.busy_message()}")
    return HttpBackend(server_url, local_api_key(settings), need_generator=with_generator, say=say)


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
