"""The OpenAI mapping: chat completions over the knowledge base (model "kb"), for Open WebUI, LibreChat and any OpenAI
SDK. The answer cites its sources as [n] in the text, lists them after it, and returns them structured in a
`citations` field (the SDKs keep unknown fields: `completion.model_extra["citations"]`)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.openapi.spec import Example
from litestar.params import Body
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage
from msgspec import Struct

from kb.models import Citation
from service.ask.access import count_answer, pipeline, question_for
from service.ask.events import Citations, Done, Failed, Token, collect
from service.ask.schemas import ANSWER_EXAMPLE
from service.ask.streaming import opened
from service.auth import Principal, requires
from service.openapi import ok
from service.search.filters import SearchFilters
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


class AssistantMessage(Struct):
    content: str
    role: str = "assistant"


class Choice(Struct):
    message: AssistantMessage
    index: int = 0
    finish_reason: str = "stop"


class ChatCompletion(Struct):
    id: str
    created: int
    choices: list[Choice]
    citations: list[Citation]  # kb's extension: the sources, structured
    object: str = "chat.completion"
    model: str = MODEL


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
    "citations": ANSWER_EXAMPLE["citations"],
}  # fmt: skip
MODELS = ModelList([ModelCard(MODEL, CREATED)])


@get(
    "/v1/models", tags=["openai"], summary="OpenAI-compatible model list (one model: kb)", guards=[requires("ask")],
    responses=ok(ModelList, msgspec.to_builtins(MODELS)),
)  # fmt: skip
async def models() -> ModelList:
    return MODELS


@post(
    "/v1/chat/completions", tags=["openai"], status_code=200, guards=[requires("ask")],
    summary="OpenAI-compatible chat completion answered from the knowledge base",
    description="The last user message is the question; earlier messages are the conversation. With `stream: true`, "
    "`chat.completion.chunk` events then `data: [DONE]`; the last content chunk carries `citations` (and lists any "
    "sentence no cited source supports).",
    responses=ok(ChatCompletion, COMPLETION_EXAMPLE),
)  # fmt: skip
async def chat_completions(
    data: Annotated[ChatCompletionRequest, Body(examples=[Example(summary="a question", value=CHAT_EXAMPLE)])],
    request: Request[Principal, Any, Any],
    services: Services,
) -> Response[Any]:  # a ChatCompletion, or its chunks as Server-Sent Events
    if data.model != MODEL:
        raise NotFoundException(f"model {data.model!r} does not exist: this server serves {MODEL!r}")
    turns = [(m.role, _text(m.content).strip()) for m in data.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user" or not turns[-1][1]:
        raise ClientException("messages must end with a non-empty user message")
    answers = pipeline(services)
    # The client holds the conversation: each request starts a new stored one, with the client's turns as history.
    question = question_for(request.user, services, turns[-1][1], filters=data.filters, document_ids=data.document_ids,
                            history=[{"role": role, "content": text} for role, text in turns[:-1]])  # fmt: skip
    generator = services.container.generator
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"

    if not data.stream:
        answer = await collect(answers.stream(question))
        count_answer("openai", answer, generator)
        message = AssistantMessage(answer.answer + unsupported_text(answer.unsupported) + sources_text(answer.citations))
        return Response(ChatCompletion(completion_id, int(time.time()), [Choice(message)], answer.citations))

    events = await opened(answers.stream(question))  # a dependency down is a 503/504 problem, not a broken 200

    async def chunks() -> AsyncIterator[ServerSentEventMessage]:
        cited: list[Citation] = []
        try:
            yield ServerSentEventMessage(data=_chunk(completion_id, {"role": "assistant", "content": ""}))
            async for event in events:
                match event:
                    case Token(text=text):
                        yield ServerSentEventMessage(data=_chunk(completion_id, {"content": text}))
                    case Citations(citations=citations):
                        cited = citations
                    case Done():
                        content = unsupported_text(event.unsupported) + sources_text(cited)
                        yield ServerSentEventMessage(data=_chunk(completion_id, {"content": content},
                                                                 citations=msgspec.to_builtins(cited)))  # fmt: skip
                        count_answer("openai", event, generator)
                    case Failed():  # as OpenAI and vLLM report an error once streaming has begun
                        error = {"message": event.detail, "type": event.title, "code": event.status}
                        yield ServerSentEventMessage(data=json.dumps({"error": error}, ensure_ascii=False))
                        return
            yield ServerSentEventMessage(data=_chunk(completion_id, {}, "stop"))
            yield ServerSentEventMessage(data="[DONE]")
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return ServerSentEvent(chunks())
