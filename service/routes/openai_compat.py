"""OpenAI-compatible chat completions over the knowledge base (model "kb"), for Open WebUI, LibreChat and any
OpenAI SDK. The answer cites its sources as [n] in the text, lists them after it, and returns them structured in a
`citations` field (the SDKs keep unknown fields: `completion.model_extra["citations"]`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.exceptions import ClientException, NotFoundException, ServiceUnavailableException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import Body
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage
from msgspec import Struct

from service.answering import opened
from service.auth import Principal, requires, scoped_filter
from service.observability import record_answer
from service.routes.ask import answer_tokens, claim_conversation, collect, request_filter, visible_citations
from service.routes.search import SearchFilters
from service.schemas import EXAMPLES
from service.state import Services

MODEL = "kb"
CREATED = int(time.time())


class ChatMessage(Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(Struct):
    messages: list[ChatMessage]
    model: str = MODEL
    stream: bool = False
    # kb extensions (OpenAI SDKs send them with `extra_body`): restrict the sources.
    filters: SearchFilters | None = None
    document_ids: list[str] | None = None
    user: str | None = None


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return content or ""


def sources_text(citations: list[dict[str, Any]]) -> str:
    """The numbered source list appended to the answer, for chat front ends that show only the text."""
    if not citations:
        return ""
    lines = []
    for citation in citations:
        where = f", page {citation['page']}" if citation.get("page") is not None else ""
        lines.append(f"[{citation['n']}] {citation['filename']}{where}")
    return "\n\nSources:\n" + "\n".join(lines)


def _chunk(completion_id: str, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> str:
    return json.dumps({
        "id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra,
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
    "citations": EXAMPLES["ask"]["citations"],
}  # fmt: skip
MODELS_EXAMPLE = {"object": "list", "data": [{"id": "kb", "object": "model", "created": CREATED, "owned_by": "kb"}]}


@get(
    "/v1/models", tags=["openai"], summary="OpenAI-compatible model list (one model: kb)", guards=[requires("ask")],
    responses={200: ResponseSpec(data_container=dict[str, Any], examples=[Example(value=MODELS_EXAMPLE)],
                                 generate_examples=False, description="Success")},  # fmt: skip
)
async def models() -> dict[str, Any]:
    return MODELS_EXAMPLE


@post(
    "/v1/chat/completions", tags=["openai"], status_code=200, guards=[requires("ask")],
    summary="OpenAI-compatible chat completion answered from the knowledge base",
    description="The last user message is the question; earlier messages are the conversation. With `stream: true`, "
    "`chat.completion.chunk` events then `data: [DONE]`; the last content chunk carries `citations`.",
    responses={200: ResponseSpec(data_container=dict[str, Any], examples=[Example(value=COMPLETION_EXAMPLE)],
                                 generate_examples=False, description="Success")},  # fmt: skip
)
async def chat_completions(
    data: Annotated[ChatCompletionRequest, Body(examples=[Example(summary="a question", value=CHAT_EXAMPLE)])],
    request: Request[Principal, Any, Any],
    services: Services,
) -> Response[Any]:
    if data.model != MODEL:
        raise NotFoundException(f"model {data.model!r} does not exist: this server serves {MODEL!r}")
    turns = [(m.role, _text(m.content).strip()) for m in data.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user" or not turns[-1][1]:
        raise ClientException("messages must end with a non-empty user message")
    if services.answers is None:
        raise ServiceUnavailableException("the generator is starting or failed to start: see /readyz")
    principal = request.user
    registry = services.container.registry
    search_filter = scoped_filter(principal, request_filter(data.filters, data.document_ids))
    conversation_id = claim_conversation(registry, principal, None)
    history = [{"role": role, "content": text} for role, text in turns[:-1]]
    events = services.answers.stream(turns[-1][1], search_filter, conversation_id, history=history)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"

    if data.stream:
        events = await opened(events)  # a dependency down is a 503/504 problem, not a 200 stream that breaks

        async def chunks() -> AsyncIterator[ServerSentEventMessage]:
            try:
                yield ServerSentEventMessage(data=_chunk(completion_id, {"role": "assistant", "content": ""}))
                async for event in events:
                    if event.event == "token":
                        yield ServerSentEventMessage(data=_chunk(completion_id, {"content": event.data["text"]}))
                    elif event.event == "citations":
                        citations = visible_citations(event.data["citations"], principal, registry)
                        yield ServerSentEventMessage(data=_chunk(
                            completion_id, {"content": sources_text(citations)}, citations=citations))  # fmt: skip
                    elif event.event == "done":
                        record_answer("openai", event.data, answer_tokens(services, event.data["answer"]))
                    elif event.event == "error":  # as OpenAI and vLLM report an error once streaming has begun
                        error = {"message": event.data["detail"], "type": event.data["title"],
                                 "code": event.data["status"]}  # fmt: skip
                        yield ServerSentEventMessage(data=json.dumps({"error": error}, ensure_ascii=False))
                        return
                yield ServerSentEventMessage(data=_chunk(completion_id, {}, "stop"))
                yield ServerSentEventMessage(data="[DONE]")
            finally:
                await events.aclose()

        return ServerSentEvent(chunks())

    citations, done = await collect(events, principal, registry)
    completion_tokens = answer_tokens(services, done["answer"])
    record_answer("openai", done, completion_tokens)
    return Response({
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": done["answer"] + sources_text(citations)}}],
        "citations": citations,
    })  # fmt: skip
