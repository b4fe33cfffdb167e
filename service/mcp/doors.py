"""What the MCP tools call. `ServiceDoor`: the services of this process (the app's, for /mcp; the data directory's, for
`kb mcp` on a directory no server holds), within one caller: the same retrieval, access filter and ask pipeline the
HTTP routes call, the same scope checks their guards make. `ServerDoor`: a running `kb serve` through its API (for
`kb mcp` when a server holds the data directory, or with --url), which applies all of that itself.

Each returns the API's response types (SearchResponse, AskResponse, DocumentList), so a tool result is the same in
every case; a refusal is a `ToolError` with the reason the API would give (missing scope, bad filter, no such
conversation, the generator starting, a dependency down)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio
import httpx
import msgspec
from litestar.exceptions import ClientException, HTTPException, PermissionDeniedException
from mcp.server.mcpserver.exceptions import ToolError

from kb.ports import SearchMode
from service.ask.access import count_answer, pipeline, question_for
from service.ask.events import AnswerFailed, collect
from service.ask.pipeline import AskPipeline
from service.ask.schemas import AskResponse
from service.auth import Principal, scoped_filter
from service.cli_backends import HttpBackend, ServerUnavailable
from service.documents.schemas import DocumentList, DocumentOut
from service.problems import dependency_failure
from service.search.filters import SearchFilters, to_filter, visible
from service.search.schemas import PassageOut, SearchResponse
from service.state import Services

log = logging.getLogger(__name__)
T = TypeVar("T")


class Door(Protocol):
    """Where the tools' work is done, for one caller."""

    base_url: str  # links to the web page and the originals start with it ("" when unknown: relative links)

    async def search(self, query: str, top_k: int, filters: SearchFilters | None, mode: SearchMode | None
                     ) -> SearchResponse: ...  # fmt: skip

    async def ask(self, question: str, conversation_id: str | None, filters: SearchFilters | None) -> AskResponse: ...

    async def documents(self) -> DocumentList: ...


def _require(principal: Principal, scope: str) -> None:
    """What the routes' `requires(scope)` guard checks, with its words."""
    if not principal.can(scope):
        raise PermissionDeniedException(f"this key lacks the scope {scope}")


async def refusals_as_tool_errors(work: Awaitable[T]) -> T:
    """The API's refusals as tool errors (the model reads the reason and can act on it); a dependency that is down
    says which, as the API's 503 does. Anything else is a crash: the SDK answers a generic error, the log has it."""
    try:
        return await work
    except ToolError:
        raise
    except HTTPException as exc:
        raise ToolError(exc.detail) from exc
    except AnswerFailed as exc:
        raise ToolError(exc.failure.detail) from exc
    except Exception as exc:
        failure = dependency_failure(exc)
        if failure is None:
            log.exception("MCP tool failed")
            raise
        log.warning("dependency failure: %s", failure.detail)
        raise ToolError(failure.detail) from exc


class ServiceDoor:
    """The services of this process, for `principal`. `start_generator`: start the engine at the first question
    if it is not running (`kb mcp` on a data directory; the app starts its own at start-up)."""

    def __init__(self, services: Services, principal: Principal, base_url: str = "", *,
                 start_generator: Callable[[], Awaitable[AskPipeline]] | None = None) -> None:  # fmt: skip
        self.services = services
        self.principal = principal
        self.base_url = base_url
        self._start_generator = start_generator

    async def search(self, query: str, top_k: int, filters: SearchFilters | None, mode: SearchMode | None
                     ) -> SearchResponse:  # fmt: skip
        # POST /v1/search, step for step (service/search/routes.py).
        _require(self.principal, "search")
        if not query.strip():
            raise ClientException("query must not be empty")
        search_filter = scoped_filter(self.principal, to_filter(filters))
        try:
            result = await self.services.retrieval.search(query, top_k, search_filter, mode)
        except ValueError as exc:  # an unusable filter (e.g. a metadata key with odd characters)
            raise ClientException(str(exc)) from exc
        passages = visible(result.passages, search_filter)
        return SearchResponse([PassageOut.of(p) for p in passages], result.relevant and bool(passages),
                              round(result.latency_ms, 2))  # fmt: skip

    async def ask(self, question: str, conversation_id: str | None, filters: SearchFilters | None) -> AskResponse:
        # POST /v1/ask as JSON (service/ask/routes.py): the caller's groups and conversation through
        # `access.question_for`, the pipeline's answer, the answer counted under this door's name.
        _require(self.principal, "ask")
        if not question.strip():
            raise ClientException("question must not be empty")
        answers = await self._start_generator() if self._start_generator is not None else pipeline(self.services)
        asked = question_for(self.principal, self.services, question, filters=filters, conversation_id=conversation_id)
        answer = await collect(answers.stream(asked))
        count_answer("mcp", answer, self.services.container.generator)
        return AskResponse.of(answer)

    async def documents(self) -> DocumentList:
        # GET /v1/documents (service/documents/routes.py): scope search, the documents of the caller's groups.
        _require(self.principal, "search")
        documents = await asyncio.to_thread(self.services.container.registry.list_documents)
        return DocumentList([DocumentOut.of(d) for d in documents if self.principal.sees(d.groups)])


class _Api(HttpBackend):
    """The CLI's client of a server (waits for it to start, honours its rate limit), for any route and body."""

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._request(method, path, json=body) if body is not None else self._request(method, path)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = None
            raise ToolError(f"the server answered {response.status_code}: {detail or response.text[:300]}")
        return response.json()


class ServerDoor:
    """A running `kb serve`, through its API with `api_key`: the server checks the key, its scopes and groups, and
    counts it against the key's rate limit, as for any client. Connected at the first tool call (the server may still
    be starting; waiting for it must not hold up the MCP client's handshake)."""

    def __init__(self, url: str, api_key: str | None, public_url: str = "", *, say: Callable[[str], None]) -> None:
        self.url = url.rstrip("/")
        self.base_url = public_url or self.url
        self._api_key = api_key
        self._say = say
        self._api: _Api | None = None
        self._lock = anyio.Lock()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            async with self._lock:
                if self._api is None:
                    self._api = await anyio.to_thread.run_sync(lambda: _Api(self.url, self._api_key, say=self._say))
            api = self._api
            return await anyio.to_thread.run_sync(lambda: api.call(method, path, body))
        except ServerUnavailable as exc:  # not ready within KB_SERVER_START_TIMEOUT_S; the next call waits again
            raise ToolError(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise ToolError(f"cannot reach the kb server at {self.url}: {exc}") from exc

    async def search(self, query: str, top_k: int, filters: SearchFilters | None, mode: SearchMode | None
                     ) -> SearchResponse:  # fmt: skip
        body = {"query": query, "top_k": top_k, "filters": _builtins(filters), "mode": mode}
        return msgspec.convert(await self._call("POST", "/v1/search", body), SearchResponse)

    async def ask(self, question: str, conversation_id: str | None, filters: SearchFilters | None) -> AskResponse:
        body = {"question": question, "conversation_id": conversation_id, "filters": _builtins(filters)}
        return msgspec.convert(await self._call("POST", "/v1/ask", body), AskResponse)

    async def documents(self) -> DocumentList:
        return msgspec.convert(await self._call("GET", "/v1/documents"), DocumentList)

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


def _builtins(filters: SearchFilters | None) -> dict[str, Any] | None:
    return msgspec.to_builtins(filters) if filters is not None else None
