"""`kb mcp`: the MCP tools over stdio, for a client that starts kb itself (Claude Desktop, an IDE). Where the work is
done is decided as for every `kb` command (service/cli_backends.py): the server at --url / KB_URL; else the data
directory itself, when no process holds it; else the `kb serve` that holds it, through its API.

Who the caller is:
- through a server: the key in --key / KB_API_KEY (else the local admin key the server wrote into the data directory,
  as the CLI does); the server checks it at every call, with its scopes, groups and rate limit;
- on the data directory itself: the key in --key / KB_API_KEY, checked against the directory's own keys at start and
  again at every call (a revoked or expired key is refused within seconds), with its scopes and groups; without a key,
  the directory's local admin (every scope, every group), as every `kb` command that opens a data directory is:
  whoever can read the directory can read all of it anyway.

The SDK's stdio transport moves fd 1 to stderr while it serves, so nothing a library or the engine prints can corrupt
the protocol on stdout; kb's own log lines go to stderr too, where MCP clients keep a server's log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from kb.settings import Settings
from service.ask.pipeline import AskPipeline
from service.auth import LOCAL_ADMIN, ApiKeyService, Principal
from service.cli_backends import local_api_key
from service.datadir import DataDirLock
from service.mcp.doors import Door, ServerDoor, ServiceDoor
from service.mcp.tools import build_server
from service.state import Services

Say = Callable[[str], None]


class McpStartError(RuntimeError):
    """`kb mcp` cannot serve (the key is refused, the data directory is held by another command)."""


def caller(keys: ApiKeyService, key: str | None) -> Principal:
    """Who a `kb mcp` on a data directory answers as: the key's Principal, or the local admin without a key (or with
    keys switched off, as the API does). McpStartError: a key the directory does not accept."""
    if not keys.enabled or not key:
        return LOCAL_ADMIN
    principal, refused = keys.verify(key)
    if principal is None:
        raise McpStartError(f"--key / KB_API_KEY: {refused} (in this data directory's keys)")
    return principal


class LocalDoors:
    """The data directory opened in this process: a ServiceDoor per tool call, for the key checked again (a key
    revoked meanwhile is refused), and the engine started at the first question (not at start: a client that only
    searches never waits for it)."""

    def __init__(self, services: Services, key: str | None, public_url: str) -> None:
        self._services = services
        self._key = key
        self._public_url = public_url
        self._engine_lock = asyncio.Lock()

    def door(self) -> Door:
        try:
            principal = caller(self._services.keys, self._key)
        except McpStartError as exc:
            raise ToolError(str(exc)) from exc
        return ServiceDoor(self._services, principal, self._public_url, start_generator=self._answers)

    async def _answers(self) -> AskPipeline:
        async with self._engine_lock:
            if self._services.answers is None:
                try:
                    await self._services.start_generator()
                except Exception as exc:  # noqa: BLE001 - the caller reads why; the next question tries again
                    raise ToolError(f"the generator failed to start: {exc}") from exc
        assert self._services.answers is not None
        return self._services.answers


class RemoteDoors:
    def __init__(self, door: ServerDoor) -> None:
        self._door = door

    def door(self) -> Door:
        return self._door


def _local(settings: Settings, key: str | None) -> Callable[[MCPServer[Any]], Any]:
    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[LocalDoors]:
        from kb.container import Container

        container = await asyncio.to_thread(Container.open, settings)
        try:
            services = await Services.open(container, with_generator=False)
            yield LocalDoors(services, key, settings.public_url)
        finally:
            await container.aclose()

    return lifespan


def _remote(url: str, key: str | None, settings: Settings, say: Say) -> Callable[[MCPServer[Any]], Any]:
    @asynccontextmanager
    async def lifespan(_: MCPServer[Any]) -> AsyncIterator[RemoteDoors]:
        door = ServerDoor(url, key, settings.public_url, say=say)
        try:
            yield RemoteDoors(door)
        finally:
            door.close()

    return lifespan


def _door_of(ctx: Context) -> Door:
    return ctx.request_context.lifespan_context.door()


def run_stdio(settings: Settings, *, key: str | None, url: str | None, say: Say) -> None:
    """Serves MCP on stdin/stdout until the client closes stdin. McpStartError: it cannot start (said why)."""
    if url:
        say(f"kb mcp: the server at {url}")
        anyio.run(build_server(_door_of, lifespan=_remote(url, key, settings, say)).run_stdio_async)
        return
    lock = DataDirLock(settings.resolved_data_dir)
    if lock.try_acquire():
        try:
            from kb.container import build_registry

            registry = build_registry(settings)
            try:
                principal = caller(ApiKeyService(registry, settings.auth), key)
            finally:
                registry.close()
            who = ("the local admin (no key: every scope, every group)" if principal is LOCAL_ADMIN
                   else f"the key {principal.name!r} ({principal.key_id})")  # fmt: skip
            say(f"kb mcp: the data directory {settings.resolved_data_dir}, as {who}")
            anyio.run(build_server(_door_of, lifespan=_local(settings, key)).run_stdio_async)
        finally:
            lock.release()
        return
    server_url = lock.server_url()
    if server_url is None:
        raise McpStartError(lock.busy_message())
    say(f"kb mcp: the server at {server_url}, which holds {settings.resolved_data_dir}")
    key = key or local_api_key(settings)
    anyio.run(build_server(_door_of, lifespan=_remote(server_url, key, settings, say)).run_stdio_async)
