"""Errors as RFC 9457 problem details (application/problem+json): status, title, detail, instance, request id.

Hand-written rather than Litestar's ProblemDetailsPlugin (2.25): the plugin puts an HTTPException's detail into
`title` (RFC 9457 wants the status phrase there), and its conversion hook sees only the exception, so it cannot add
the request id, the instance path, Retry-After for a dependency that is down, or 499 for a client that left."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_500_INTERNAL_SERVER_ERROR

from service.observability import CLIENT_CLOSED_REQUEST, current_request_id

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


# Litestar's InternalServerException when the client left while its body was being read: no server fault.
_CLIENT_GONE = "client disconnected prematurely"


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    extra: dict[str, Any] | None = None
    detail = exc.detail
    if exc.status_code == HTTP_500_INTERNAL_SERVER_ERROR and detail == _CLIENT_GONE:
        # Nobody reads this response; its status is what the access line records: nginx's 499, not a 500.
        return Response({"detail": detail}, status_code=CLIENT_CLOSED_REQUEST, media_type=MEDIA_TYPE)
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


# A dependency that is down (registry, index, generator) answers 503 (504: it did not answer in time), with the
# reason and Retry-After, wherever in the request it failed: one classification for every route and middleware.
RETRY_AFTER_S = 5
_FAILED = {502: "failed", 503: "is unavailable", 504: "did not answer in time"}


@dataclass(frozen=True)
class DependencyFailure:
    dependency: str  # registry | index | generator
    status: int
    reason: str

    @property
    def detail(self) -> str:
        return f"the {self.dependency} {_FAILED[self.status]}: {self.reason}"

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _classify(exc: BaseException) -> DependencyFailure | None:
    import httpx

    from kb.outages import store_down
    from kb.ports import GeneratorServerError, GeneratorTimeout, GeneratorUnavailable

    kind, module = type(exc).__name__, type(exc).__module__
    store = store_down(exc)
    if store == "index":
        return DependencyFailure("index", 503, _reason(getattr(exc, "source", None) or exc))
    if store is not None:
        return DependencyFailure(store, 503, _reason(exc))
    if isinstance(exc, GeneratorTimeout):
        return DependencyFailure("generator", 504, _reason(exc))
    if isinstance(exc, GeneratorUnavailable):
        return DependencyFailure("generator", 503, _reason(exc))
    if isinstance(exc, GeneratorServerError):
        return DependencyFailure("generator", 502, _reason(exc))
    # Raw httpx errors in this process come from the generator's client (qdrant-client wraps its own).
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return DependencyFailure("generator", 504, f"no answer within the request timeout ({kind})")
    if isinstance(exc, httpx.TransportError):
        try:
            where = f" at {exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        except RuntimeError:  # an error without its request
            where = ""
        return DependencyFailure("generator", 503, f"cannot reach the server{where}: {_reason(exc)}")
    if kind in ("EngineDeadError", "EngineGenerateError") and module.startswith("vllm"):
        return DependencyFailure("generator", 503, _reason(exc))
    return None


def classify_failure(exc: BaseException) -> DependencyFailure | None:
    """The dependency that `exc` (or the error it was raised from) says is down; None for any other error."""
    from kb.outages import causes

    return next((failure for cause in causes(exc) if (failure := _classify(cause)) is not None), None)


def dependency_failure(exc: BaseException) -> DependencyFailure | None:
    """As classify_failure, for a door that met the error while serving a request: /readyz then asks that dependency
    again on its next call instead of repeating an answer from before the failure (service.routes.health)."""
    failure = classify_failure(exc)
    if failure is not None:
        from service.routes.health import forget_answers

        forget_answers(failure.dependency)
    return failure


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    failure = dependency_failure(exc)
    if failure is not None:
        log.warning("dependency failure: %s", failure.detail, extra={"path": request.url.path})
        return problem(request, failure.status, failure.detail, headers={"Retry-After": str(RETRY_AFTER_S)},
                       extra={"dependency": failure.dependency})  # fmt: skip
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return problem(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "an unexpected error occurred; the service log has the details under this request id",
    )


def recursion_error_handler(request: Request[Any, Any, Any], exc: RecursionError) -> Response[dict[str, Any]]:
    """JSON nested deeper than the decoder goes (e.g. 100,000 `[`: msgspec says "... while deserializing an object",
    the json module "... while decoding a JSON array") is the client's error: 400, not 500. Any other RecursionError
    is ours."""
    if "deserializing" in str(exc) or "decoding a JSON" in str(exc):
        return problem(request, HTTP_400_BAD_REQUEST, "invalid request: the JSON body is nested too deeply")
    return internal_error_handler(request, exc)


EXCEPTION_HANDLERS = {
    HTTPException: http_exception_handler,
    RecursionError: recursion_error_handler,
    Exception: internal_error_handler,
}
