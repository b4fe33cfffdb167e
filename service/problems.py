"""Errors as RFC 9457 problem details (application/problem+json): status, title, detail, instance, request id."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from service.observability import current_request_id

log = logging.getLogger("kb.errors")
MEDIA_TYPE = "application/problem+json"


def problem(
    request: Request[Any, Any, Any],
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",  # RFC 9457 §4.2.1: the title is then the status phrase
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    extra: dict[str, Any] | None = None
    detail = exc.detail
    if isinstance(exc, ValidationException):
        # Litestar puts the failing fields in `extra`: [{"message", "key", "source"}].
        extra = {"errors": exc.extra} if exc.extra else None
        if detail.startswith("Validation failed for"):
            messages = [f"{e.get('key') or e.get('source', 'body')}: {e.get('message')}" for e in exc.extra or []
                        if isinstance(e, dict)]  # fmt: skip
            detail = "invalid request: " + ("; ".join(messages) if messages else detail)
    elif isinstance(exc.extra, dict):
        extra = exc.extra
    elif exc.extra:
        extra = {"errors": exc.extra}
    return problem(request, exc.status_code, detail, headers=exc.headers, extra=extra)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return problem(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "an unexpected error occurred; the service log has the details under this request id",
    )


EXCEPTION_HANDLERS = {HTTPException: http_exception_handler, Exception: internal_error_handler}
