"""Structured JSON logs with a request id on every line, and the service's own Prometheus metrics (kb_*)."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from structlog.tracebacks import ExceptionDictTransformer

from kb.settings import LoggingSettings

access_log = structlog.get_logger("kb.access")

# Anything shaped like one of our API keys is masked wherever it appears in a log line (a key pasted into a
# question, an exception message quoting a header...).
# kb_ keys, and web-page session tokens wherever they appear (a cookie header in an error's frame locals).
_SECRET = re.compile(
    r"kb_[A-Za-z0-9_\-]{16,}|(?<=kb_session=)[^;\s'\"]+"
    r"|[0-9a-f]{16}\.\d{9,11}\.[A-Za-z0-9_\-]{16}\.[A-Za-z0-9_\-]{43}"  # a session token on its own (service.routes.session)
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET.sub("kb_[redacted]", value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    return value


def redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    # uvicorn's `color_message` repeats the message with terminal colour codes.
    return {k: _redact(v) for k, v in event_dict.items() if k != "color_message"}


def configure_logging(settings: LoggingSettings) -> None:
    """Route stdlib logging (uvicorn, litestar, vLLM, our modules) and structlog through one renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
        # Frames without their locals: a frame holding the settings would log the registry URL's password.
        tracebacks = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        final = [tracebacks, redact_secrets, renderer]
    else:
        final = [redact_secrets, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # Their own handlers would print a second, unstructured copy; uvicorn's access log is replaced by ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def current_request_id() -> str | None:
    return structlog.contextvars.get_contextvars().get("request_id")


class RequestContextMiddleware:
    """Gives each HTTP request an id (the client's X-Request-ID if sane, else a new one) and binds it to every log
    line written while the request runs. The binding is not cleared at the end: Litestar turns exceptions into
    responses outside the middleware stack, and those lines (and `before_send`) must still see the id; each request
    runs in its own task, so nothing leaks into the next one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            supplied = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(
                request_id=supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
            )
            state = scope.setdefault("state", {})
            state["kb_started"] = time.perf_counter()
            try:
                await self.app(scope, receive, send)
            except BaseException:
                # Before the response started, Litestar turns the exception into a response (and `before_send` logs
                # it); after, nothing will be sent: a client gone while its stream was written.
                if "kb_status" in state and not state.get("kb_logged"):
                    _access_line(scope, disconnected=True)
                raise
            if not state.get("kb_logged"):
                # A streamed response (SSE) stops without its last message when the client disconnects.
                _access_line(scope, disconnected=True)
            return
        await self.app(scope, receive, send)


async def before_send(message: Message, scope: Scope) -> None:
    """App-level hook (it sees every response, error responses included): X-Request-ID on the response, and one
    access line at its end with the route, status, duration and key id; never the key, the query or document text."""
    if scope["type"] != "http":
        return
    state = scope.setdefault("state", {})
    if message["type"] == "http.response.start":
        request_id = current_request_id()
        if request_id is None:  # no route matched: the middleware never ran
            request_id = uuid.uuid4().hex
            structlog.contextvars.bind_contextvars(request_id=request_id)
        state["kb_status"] = message["status"]
        message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
    elif message["type"] == "http.response.body" and not message.get("more_body", False):
        _access_line(scope)


CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before any response


def _access_line(scope: Scope, **extra: Any) -> None:
    """The request's one access line (`disconnected: true` when the client left before the response's end: the
    status is then what had been sent, or 499 if nothing had)."""
    state = scope.setdefault("state", {})
    state["kb_logged"] = True
    started = state.get("kb_started")
    user = scope.get("user")
    status = state.get("kb_status")
    access_log.info(
        "request",
        method=scope.get("method"),
        path=scope.get("path"),
        status=status if status is not None or not extra.get("disconnected") else CLIENT_CLOSED_REQUEST,
        duration_ms=round((time.perf_counter() - started) * 1000, 2) if started else None,
        key_id=getattr(user, "key_id", None),
        **extra,
    )


from kb.metrics import (  # noqa: E402,F401 - re-exported: the routes record answers through this module
    ANSWER_DURATION,
    ANSWERS,
    GENERATED_TOKENS,
    INGEST_QUEUE_DEPTH,
    RETRIEVAL_LATENCY,
    TIME_TO_FIRST_TOKEN,
    record_answer,
)
