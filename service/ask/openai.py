"""The OpenAI mapping: chat completions over the knowledge base (model "kb"), for Open WebUI, LibreChat and any OpenAI
SDK. The answer cites its sources as [n] in the text, lists them after it, and returns them structured in a
`citations` field (the SDKs keep unknown fields: `completion.model_extra["citations"]`), and `degraded: true` where
the fallback generator wrote it (kb/adapters/fallback_generator.py).

Errors on these routes come in OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`, so that an SDK
shows the reason (an exception handler scoped to the two routes; the rest of the API answers problem+json)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.spec import Example
from litestar.params import Body
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage
from msgspec import Struct

from kb.models import Citation
from kb.ports import Generator
from service.ask.access import count_answer, pipeline, question_for
from service.ask.events import Citations, Done, Failed, Token, collect
from service.ask.schemas import ANSWER_EXAMPLE
from service.ask.streaming import opened
from service.ask.structured import InvalidSchema, ResponseFormat, schema_of
from service.auth import Principal, requires
from service.openapi import ok
from service.problems import CLIENT_CLOSED_REQUEST, RETRY_AFTER_S, dependency_failure
from service.search.filters import SearchFilters
from service.state import Services

log = logging.getLogger("kb.errors")
MODEL = "kb"
CREATED = int(time.time())


# OpenAI's error types by status (what its API and vLLM's answer), and a code where OpenAI has a well-known one.
_ERROR_TYPES = {
    400: ("invalid_request_error", None), 401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_scope"), 404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"), 429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"), 502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"), 504: ("server_error", "timeout"),
}  # fmt: skip


class OpenAIError(HTTPException):
    """An error with OpenAI's `code` and `param` (e.g. 404 `model_not_found` on `model`)."""

    def __init__(self, detail: str, *, status_code: int, code: str | None = None, param: str | None = None) -> None:
        super().__init__(detail, status_code=status_code)
        self.code = code
        self.param = param


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    kind, default_code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "code": code or default_code, "param": param}}


def _error(status: int, message: str, *, code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> Response[dict[str, Any]]:  # fmt: skip
    return Response(error_body(status, message, code, param), status_code=status, headers=headers)


def openai_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Every HTTP error on the OpenAI routes (validation, key, scope, model, rate limit, generator down)."""
    if exc.status_code == 500 and exc.detail == "client disconnected prematurely":
        return Response({"detail": exc.detail}, status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it
    message, param = exc.detail, getattr(exc, "param", None)
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        problems = [e for e in exc.extra if isinstance(e, dict)]
        message = "invalid request: " + "; ".join(f"{e.get('key') or 'body'}: {e.get('message')}" for e in problems)
        param = next((str(e["key"]) for e in problems if e.get("key")), None)
    headers = dict(exc.headers or {})
    if exc.status_code == 503:  # the generator still starting: say when to try again, as for a dependency down
        headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    reset = next((v for k, v in headers.items() if k.lower() == "ratelimit-reset"), None)
    if exc.status_code == 429 and reset is not None:  # the SDKs back off by Retry-After, not RateLimit-Reset
        headers.setdefault("Retry-After", str(reset))
    return _error(exc.status_code, message, code=getattr(exc, "code", None), param=param, headers=headers)


def dependency_code(status: int, dependency: str | None) -> str | None:
    """The error code of a dependency's failure, streamed or not: `<dependency>_unavailable`, or `timeout` (504)."""
    if status == 504:
        return "timeout"
    return f"{dependency}_unavailable" if dependency else None


def openai_internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A dependency that is down is a 503/504 with Retry-After, as on every route; anything else a 500."""
    if isinstance(exc, RecursionError) and ("deserializing" in str(exc) or "decoding a JSON" in str(exc)):
        # JSON nested deeper than the decoder goes: the client's error (service.problems.recursion_error_handler)
        return _error(400, "invalid request: the JSON body is nested too deeply")
    failure = dependency_failure(exc)
    if failure is not None:
        log.warning("dependency failure: %s", failure.detail, extra={"path": request.url.path})
        return _error(failure.status, failure.detail, code=dependency_code(failure.status, failure.dependency),
                      headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return _error(500, "an unexpected error occurred; the service log has the details under this request id")


# On the two OpenAI routes only: the rest of the API keeps its problem details.
OPENAI_EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: openai_http_error,
    RecursionError: openai_internal_error,
    Exception: openai_internal_error,
}


class ChatMessage(Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(Struct):
    include_usage: bool = False


class ChatCompletionRequest(Struct):
    messages: list[ChatMessage]
    model: str = MODEL
    stream: bool = False
    stream_options: StreamOptions | None = None
    # kb extensions (OpenAI SDKs send them with `extra_body`): restrict the sources.
    filters: SearchFilters | None = None
    document_ids: list[str] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None  # json_schema: the answer is JSON valid against it


class AssistantMessage(Struct):
    content: str
    role: str = "assistant"


class Choice(Struct):
    message: AssistantMessage
    index: int = 0
    finish_reason: str = "stop"


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(Struct):
    id: str
    created: int
    choices: list[Choice]
    citations: list[Citation]  # kb's extension: the sources, structured
    usage: Usage
    object: str = "chat.completion"
    model: str = MODEL
    degraded: bool = False  # kb's extension: written (in part) by the fallback generator while the server failed


class ModelCard(Struct):
    id: str
    created: int
    object: str = "model"
    owned_by: str = "kb"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return content or ""


def sources_text(citations: Sequence[Citation]) -> str:
    """The numbered source list appended to the answer, for chat front ends that show only the text."""
    if not citations:
        return ""
    lines = []
    for citation in citations:
        where = f", page {citation.page}" if citation.page is not None else ""
        lines.append(f"[{citation.n}] {citation.filename}{where}")
    return "\n\nSources:\n" + "\n".join(lines)


def unsupported_text(sentences: Sequence[str]) -> str:
    """The sentences no cited source supports, said as such for chat front ends that show only the text."""
    if not sentences:
        return ""
    return "\n\nNot supported by the cited sources:\n" + "\n".join(f"- {s}" for s in sentences)


def _chunk(completion_id: str, delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> str:
    """A `chat.completion.chunk`; delta None: the chunk without choices (the usage chunk)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return json.dumps({
        "id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL,
        "choices": choices, **extra,
    }, ensure_ascii=False)  # fmt: skip


CHAT_EXAMPLE = {
    "model": "kb",
    "messages": [{"role": "user", "content": "How large may an upload be?"}],
    "stream": False,
}
COMPLETION_EXAMPLE = {
    "id": "chatcmpl-2b9f…", "object": "chat.completion", "created": 1764147600, "model": "kb",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant",
        "content": "Each uploaded file may be at most 100 MB by default [1].\n\nSources:\n[1] kb-administrator-guide.pdf, page 2",
    }}],
    "citations": ANSWER_EXAMPLE["citations"],
    "usage": {"prompt_tokens": 9, "completion_tokens": 31, "total_tokens": 40}, "degraded": False,
}  # fmt: skip
MODELS = ModelList([ModelCard(MODEL, CREATED)])


def usage_of(generator: Generator | None, prompt: Sequence[str], completion: str) -> Usage:
    """Tokens in the model's tokenizer: `prompt`, the client's messages; `completion`, the text the client got."""

    def count(text: str) -> int:
        return generator.count_tokens(text) if generator is not None and text else 0

    prompt_tokens, completion_tokens = count("\n".join(prompt)), count(completion)
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


@get(
    "/v1/models", tags=["openai"], summary="OpenAI-compatible model list (one model: kb)", guards=[requires("ask")],
    responses=ok(ModelList, msgspec.to_builtins(MODELS)), exception_handlers=OPENAI_EXCEPTION_HANDLERS,
)  # fmt: skip
async def models() -> ModelList:
    return MODELS


@post(
    "/v1/chat/completions", tags=["openai"], status_code=200, guards=[requires("ask")],
    summary="OpenAI-compatible chat completion answered from the knowledge base",
    description="The last user message is the question; earlier messages are the conversation. With `stream: true`, "
    "`chat.completion.chunk` events then `data: [DONE]`; the last content chunk carries `citations` and `degraded` "
    "(and lists any sentence no cited source supports); with `stream_options: {\"include_usage\": true}` a last "
    "chunk carries `usage`. Errors in OpenAI's shape: `{\"error\": {\"message\", \"type\", \"code\", \"param\"}}`.",
    responses=ok(ChatCompletion, COMPLETION_EXAMPLE), exception_handlers=OPENAI_EXCEPTION_HANDLERS,
)  # fmt: skip
async def chat_completions(
    data: Annotated[ChatCompletionRequest, Body(examples=[Example(summary="a question", value=CHAT_EXAMPLE)])],
    request: Request[Principal, Any, Any],
    services: Services,
) -> Response[Any]:  # a ChatCompletion, or its chunks as Server-Sent Events
    if data.model != MODEL:
        raise OpenAIError(f"The model {data.model!r} does not exist: this server serves {MODEL!r}", status_code=404,
                          code="model_not_found", param="model")  # fmt: skip
    turns = [(m.role, _text(m.content).strip()) for m in data.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user" or not turns[-1][1]:
        raise OpenAIError("messages must end with a non-empty user message", status_code=400, param="messages")
    try:
        schema = schema_of(data.response_format)
    except InvalidSchema as exc:
        raise OpenAIError(str(exc), status_code=422, code="invalid_schema", param="response_format") from exc
    answers = pipeline(services)
    # The client holds the conversation: each request starts a new stored one, with the client's turns as history.
    question = question_for(request.user, services, turns[-1][1], filters=data.filters, document_ids=data.document_ids,
                            history=[{"role": role, "content": text} for role, text in turns[:-1]],
                            json_schema=schema)  # fmt: skip
    generator = services.container.generator
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    prompt = [_text(m.content) for m in data.messages]

    if not data.stream:
        answer = await collect(answers.stream(question))
        count_answer("openai", answer, generator)
        # A structured answer's content is its JSON alone (a client parses it); its sources are in `citations`.
        message = AssistantMessage(answer.answer if schema is not None else
                                   answer.answer + unsupported_text(answer.unsupported) + sources_text(answer.citations))
        usage = usage_of(generator, prompt, message.content)
        return Response(ChatCompletion(completion_id, int(time.time()), [Choice(message)], answer.citations, usage,
                                       degraded=answer.degraded))  # fmt: skip

    events = await opened(answers.stream(question))  # a dependency down is a 503/504 problem, not a broken 200
    include_usage = data.stream_options is not None and data.stream_options.include_usage
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    async def chunks() -> AsyncIterator[ServerSentEventMessage]:
        cited: list[Citation] = []
        sent: list[str] = []
        try:
            yield ServerSentEventMessage(data=_chunk(completion_id, {"role": "assistant", "content": ""}, **extra))
            async for event in events:
                match event:
                    case Token(text=text):
                        sent.append(text)
                        yield ServerSentEventMessage(data=_chunk(completion_id, {"content": text}, **extra))
                    case Citations(citations=citations):
                        cited = citations
                    case Done():
                        content = "" if schema is not None else unsupported_text(event.unsupported) + sources_text(cited)
                        sent.append(content)
                        yield ServerSentEventMessage(data=_chunk(completion_id, {"content": content}, **extra,
                                                                 citations=msgspec.to_builtins(cited),
                                                                 degraded=event.degraded))  # fmt: skip
                        count_answer("openai", event, generator)
                    case Failed():  # as OpenAI and vLLM report an error once streaming has begun
                        body = error_body(event.status, event.detail, dependency_code(event.status, event.dependency))
                        yield ServerSentEventMessage(data=json.dumps(body, ensure_ascii=False))
                        return
            yield ServerSentEventMessage(data=_chunk(completion_id, {}, "stop", **extra))
            if include_usage:  # OpenAI's last chunk: no choices, the usage of the whole completion
                usage = msgspec.to_builtins(usage_of(generator, prompt, "".join(sent)))
                yield ServerSentEventMessage(data=_chunk(completion_id, None, usage=usage))
            yield ServerSentEventMessage(data="[DONE]")
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return ServerSentEvent(chunks())
