"""create_app(settings) -> Litestar. The lifespan opens the adapters, starts the generator and the ingest worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.middleware import DefineMiddleware
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.response import File
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore

from kb.container import Container
from kb.settings import Settings
from service.ask.openai import chat_completions, models
from service.ask.routes import ask, conversation, conversations, delete_conversation
from service.auth import (
    PUBLIC_PATHS,
    ApiKeyAuthMiddleware,
    ApiKeyService,
    FailedAuthLimitMiddleware,
    bearer_token,
    digest,
    requires,
)
from service.documents.routes import DocumentController
from service.feedback.routes import FeedbackController
from service.mcp.http import McpMount
from service.observability import INGEST_QUEUE_DEPTH, RequestContextMiddleware, before_send
from service.openapi import RedocViewer, SwaggerViewer
from service.problems import EXCEPTION_HANDLERS
from service.retention import keep_conversations
from service.routes.health import healthz, readyz
from service.routes.keys import KeyController
from service.routes.session import SESSION_COOKIE, SESSION_ROUTES, SessionRevocations, SessionTokens
from service.search.routes import search
from service.slack.routes import SLACK_EVENTS_PATH, slack_events
from service.state import Services

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
API_DESCRIPTION = """Ask a company's own documents, with citations a reader can check.

Every route but `/healthz` and `/readyz` needs an API key: `Authorization: Bearer <key>` (create one with
`kb keys create --scopes search,ask --groups staff`). A key sees only documents whose groups intersect its own.
Errors are RFC 9457 problem details (`application/problem+json`)."""


def _services(state: State) -> Services:
    return state.services


@get("/", include_in_schema=False)
async def index_page() -> File:
    return File(WEB_DIR / "index.html", content_disposition_type="inline", media_type="text/html")


# The page's own assets, by name: no path from the request ever reaches the file system (a NUL byte or `..` in it
# is simply an unknown name: 404).
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
STATIC_FILES = {p.name: p for p in (WEB_DIR / "static").iterdir() if p.suffix in STATIC_TYPES}


@get("/static/{name:str}", include_in_schema=False, opt={"exclude_from_auth": True})
async def static_file(name: str) -> File:
    path = STATIC_FILES.get(name)
    if path is None:
        raise NotFoundException(f"no static file {name}")
    return File(path, content_disposition_type="inline", media_type=STATIC_TYPES[path.suffix])


# Scripts and styles only from kb's own files (service/web/static), no inline code, no frames, no plugins: an XSS in
# the page finds nothing to run, and nothing can frame it. Everything else (JSON, errors, originals) runs nothing.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
_SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                     (b"x-frame-options", b"DENY"))  # fmt: skip


async def security_headers(message: Any, scope: Any) -> None:
    """App-level hook (every response, errors included): the CSP (the page's for `/`, the strictest elsewhere,
    unless the route set its own, like the originals' sandbox), nosniff, no referrer, no framing."""
    if scope["type"] != "http" or message["type"] != "http.response.start":
        return
    headers = list(message.get("headers", []))
    present = {bytes(name).lower() for name, _ in headers}
    csp = PAGE_CSP if scope.get("path") == "/" else API_CSP
    for name, value in (*_SECURITY_HEADERS, (b"content-security-policy", csp.encode())):
        if name not in present:
            headers.append((name, value))
    message["headers"] = headers


class MetricsController(PrometheusController):
    """Prometheus text format; needs a key with the `metrics` scope (Prometheus: `authorization: {credentials: …}`)."""

    path = "/metrics"
    guards = [requires("metrics")]
    include_in_schema = False


async def _start_slack(app: Litestar, services: Services, settings: Settings) -> Any:
    """The Slack bot, when configured (app.state.slack, for POST /slack/events); Socket Mode too when
    KB_SLACK__APP_TOKEN is set. Returns what to stop at shutdown (None: the bot is off)."""
    if not settings.slack.enabled:
        return None
    from service.slack.bot import SlackBot

    bot = SlackBot(services, settings)
    app.state.slack = bot
    runner = None
    if settings.slack.socket_mode:
        try:
            from service.slack.socket_mode import SocketModeRunner
        except ImportError:
            log.error("KB_SLACK__APP_TOKEN is set, but this kb has no Socket Mode (service.slack.socket_mode)")
        else:
            runner = SocketModeRunner(bot.app, settings)
            try:
                await runner.start()
            except Exception:
                # Slack unreachable or the app token refused: kb serves the rest; the log says why.
                log.exception("Slack Socket Mode did not start")
                runner = None
    return bot, runner


async def _stop_slack(started: Any) -> None:
    if started is None:
        return
    bot, runner = started
    try:
        if runner is not None:
            await runner.stop()
    finally:
        await bot.aclose()


async def _start_generator(services: Services) -> None:
    try:
        await services.start_generator()
    except asyncio.CancelledError:
        raise
    except Exception:
        # /readyz reports the generator as not started; the log says why.
        log.exception("the generator failed to start")


def rate_limit_identifier(request: Request[Any, Any, Any]) -> str:
    """Per key (its digest: the key itself is never a store key) when the key is valid; per address for requests
    without one or with a key that is refused (random keys would otherwise each get a fresh count)."""
    secret = bearer_token(request.headers)
    keys: ApiKeyService | None = getattr(request.app.state, "api_keys", None)
    if secret and keys is not None and keys.enabled and keys.authenticate(secret) is not None:
        return f"key:{digest(secret)[:32]}"
    if secret is None and SESSION_COOKIE in request.cookies:
        # The web page: a genuine session counts against its key, like the key itself would; anonymous requests from
        # the same address (every browser behind one proxy) cannot use up a signed-in user's allowance.
        sessions: SessionTokens | None = getattr(request.app.state, "sessions", None)
        verified = sessions.verify(request.cookies[SESSION_COOKIE]) if sessions is not None else None
        if verified is not None:
            return f"session-key:{verified[0]}"
    if secret is None and keys is not None and keys.enabled and (user := keys.proxy.user_of(request.scope)):
        return f"proxy-user:{user}"  # each user behind the company proxy has an allowance, not the proxy's address
    return f"addr:{get_remote_address(request)}"


WINDOW_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def _rate_limit_store(settings: Settings) -> Store:
    if settings.rate_limit.redis_url:
        from litestar.stores.redis import RedisStore

        return RedisStore.with_client(url=settings.rate_limit.redis_url, namespace="kb_rate_limit")
    return MemoryStore()


def create_app(settings: Settings | None = None, *, with_generator: bool | None = None) -> Litestar:
    settings = settings or Settings()
    if with_generator is None:
        with_generator = settings.generator.enabled
    # MCP over streamable HTTP at /mcp (service/mcp/http.py), behind the same middleware as every route.
    mcp = McpMount(settings) if settings.mcp.enabled else None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        container = await asyncio.to_thread(Container.open, settings)
        generator_task: asyncio.Task[None] | None = None
        try:
            services = await Services.open(container, with_generator=False)
            app.state.services = services
            app.state.api_keys = services.keys
            app.state.sessions = await asyncio.to_thread(SessionTokens.from_settings, settings)
            app.state.session_revocations = SessionRevocations(container.registry)
            if settings.auth.enabled:
                await asyncio.to_thread(services.keys.ensure_bootstrap_key, settings.admin_key_path)
            INGEST_QUEUE_DEPTH.set_function(container.registry.pending_jobs)
            services.start_workers()
            # Warm start: one embedding and one index query (and, in _start_generator, one generation) before
            # /readyz turns ready; the first question pays for none of the loading.
            warm_task = asyncio.create_task(container.warm_up_retrieval())
            if with_generator:
                # The engine takes seconds to start: serve /healthz, search and uploads meanwhile; /readyz says when.
                generator_task = asyncio.create_task(_start_generator(services))
            slack = await _start_slack(app, services, settings)
            retention = (
                asyncio.create_task(keep_conversations(container.registry, settings.conversations.retention_days))
                if settings.conversations.retention_days > 0 else None
            )  # fmt: skip
            try:
                yield
            finally:
                if retention is not None:
                    retention.cancel()
                try:
                    await _stop_slack(slack)
                finally:
                    if generator_task is not None and not generator_task.done():
                        generator_task.cancel()
                    if not warm_task.done():
                        warm_task.cancel()
                    await asyncio.to_thread(services.stop_workers)
        finally:
            await container.aclose()

    middleware: list[Any] = [RequestContextMiddleware]
    prometheus = PrometheusConfig(app_name="kb", prefix="kb", group_path=True, exclude=["^/metrics$"])
    middleware.append(prometheus.middleware)
    stores: dict[str, Store] = {}
    if settings.rate_limit.enabled:
        rate_limit = RateLimitConfig(
            rate_limit=(settings.rate_limit.window, settings.rate_limit.requests),
            identifier_for_request=rate_limit_identifier,
            # Slack's requests are signed, not keyed, and all come from Slack's few addresses: kb's per-address limit
            # would throttle every workspace's users together (the bot limits each Slack user: asks_per_minute).
            exclude=["^/healthz$", "^/readyz$", "^/metrics$", f"^{SLACK_EVENTS_PATH}$"],
        )
        stores[rate_limit.store] = _rate_limit_store(settings)
        middleware.append(rate_limit.middleware)
        middleware.append(DefineMiddleware(
            FailedAuthLimitMiddleware, limit=settings.rate_limit.failed_auth_requests,
            window_s=WINDOW_SECONDS[settings.rate_limit.window], store=rate_limit.store,
        ))  # fmt: skip
    middleware.append(DefineMiddleware(ApiKeyAuthMiddleware, exclude=PUBLIC_PATHS))

    return Litestar(
        route_handlers=[
            DocumentController, search, ask, conversation, chat_completions, models, KeyController,
            healthz, readyz, index_page, static_file, MetricsController, *SESSION_ROUTES,
            conversations, delete_conversation, FeedbackController, slack_events, *([mcp.handler] if mcp else []),
        ],  # fmt: skip
        dependencies={"services": Provide(_services, sync_to_thread=False)},
        lifespan=[lifespan, *([mcp.lifespan] if mcp else [])],
        middleware=middleware,
        stores=stores,
        before_send=[before_send, security_headers],
        # Litestar's default logging config would replace the root handler (service.observability owns logging;
        # unexpected errors are logged by service.problems).
        logging_config=None,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        # Several files per request; each file is checked against max_upload_bytes with a precise message.
        request_max_body_size=settings.ingest.max_upload_bytes * 4 + 1024 * 1024,
        openapi_config=OpenAPIConfig(
            title="kb",
            version="0.1.0",
            description=API_DESCRIPTION,
            path="/schema",
            # The description (JSON at /schema and /schema/openapi.json, YAML at /schema/openapi.yaml) and its HTML
            # viewers at /schema/redoc and /schema/swagger, served with their assets from kb itself (no CDN: they work
            # offline, and no foreign script runs in kb's origin, where the web page's session lives).
            render_plugins=[JsonRenderPlugin(), YamlRenderPlugin(), RedocViewer(), SwaggerViewer()],
            components=Components(
                security_schemes={"ApiKey": SecurityScheme(type="http", scheme="bearer", description="kb API key")}
            ),
            security=[{"ApiKey": []}],
        ),
    )
