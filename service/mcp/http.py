"""Streamable HTTP at /mcp, mounted in the Litestar app as an ASGI route: a request reaches the MCP SDK only after the
app's own middleware (request id and access line, metrics, the rate limit per key and the failed-key limit per
address, the API key or session or trusted proxy: no key is a 401 problem like anywhere else) and leaves through its
security headers. Each tool call then runs as the request's caller (`scope["user"]`, the Principal the auth middleware
set) on the app's services.

Stateless: every POST is a whole exchange (no MCP session to keep, hijack or lose on another replica), answered as a
Server-Sent Events stream, so that an answer that takes a minute on a CPU is not cut by a client's read timeout.

Against DNS rebinding and cross-site pages: a request that carries an `Origin` (only browsers do) must come from one of
`KB_MCP__ALLOWED_ORIGINS` or KB_PUBLIC_URL's origin, else 403. The SDK's Host check (its DNS-rebinding protection)
answers only `KB_MCP__ALLOWED_HOSTS` when set; unset, any Host is answered, because every request needs a key that a
rebinding page never has, except with KB_AUTH__ENABLED=false, where only loopback names are (the SDK's own default for
a local server). A body over `KB_MCP__MAX_REQUEST_BYTES` is refused (413) before it is read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

from litestar import Litestar, asgi
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.handlers.asgi_handlers import ASGIRouteHandler
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.types import Receive, Scope, Send
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings

from kb.settings import Settings
from service.mcp.doors import Door, ServiceDoor
from service.mcp.tools import build_server

MCP_PATH = "/mcp"
LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]


def allowed_origins(settings: Settings) -> list[str]:
    origins = list(settings.mcp.allowed_origins)
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return origins


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's Host and Origin check: on for `KB_MCP__ALLOWED_HOSTS` (loopback names when keys are off), else
    off (the Content-Type check stays)."""
    hosts = settings.mcp.allowed_hosts or ([] if settings.auth.enabled else LOOPBACK_HOSTS)
    return TransportSecuritySettings(enable_dns_rebinding_protection=bool(hosts), allowed_hosts=hosts,
                                     allowed_origins=allowed_origins(settings))  # fmt: skip


def _origin_allowed(origin: str, allowed: list[str]) -> bool:
    """As the SDK matches: exactly, or `scheme://host:*` for any port."""
    return origin in allowed or any(a.endswith(":*") and origin.startswith(a[:-1]) for a in allowed)


class McpMount:
    """The MCP server of one app: `handler` is its route, `lifespan` runs the SDK's session manager."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._origins = allowed_origins(settings)
        self.server = build_server(self._door)
        # Builds the SDK's session manager (its Starlette app is not used: Litestar routes /mcp to the manager).
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH, stateless_http=True, json_response=False,
            max_request_body_size=settings.mcp.max_request_bytes, transport_security=transport_security(settings),
        )  # fmt: skip
        self._manager = self.server.session_manager

        async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            await self._handle(scope, receive, send)

        self.handler: ASGIRouteHandler = asgi(MCP_PATH, copy_scope=True, name="mcp")(mcp_endpoint)

    @asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        async with self._manager.run():
            yield

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        origin = headers.get("origin")
        if origin is not None and not _origin_allowed(origin, self._origins):
            raise PermissionDeniedException(
                f"requests from web pages at {origin} may not call /mcp (KB_MCP__ALLOWED_ORIGINS lists those that may)"
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self._settings.mcp.max_request_bytes:
            raise HTTPException(
                f"the request body is {int(length)} bytes: /mcp takes at most {self._settings.mcp.max_request_bytes}",
                status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        await self._manager.handle_request(scope, receive, send)  # type: ignore[arg-type]

    def _door(self, ctx: Context) -> Door:
        """The caller of this tool call: the request the call came in (the SDK hands it on), its Principal set by the
        app's auth middleware, the app's services."""
        request: Any = ctx.request_context.request
        scope = request.scope
        base_url = self._settings.public_url or str(request.base_url)
        return ServiceDoor(scope["litestar_app"].state.services, scope["user"], base_url)
