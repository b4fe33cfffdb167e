"""POST /v1/ask (JSON, or Server-Sent Events named by the event types) and GET /v1/conversations/{id}: the HTTP door
onto the ask pipeline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import Body
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

from service.ask.access import count_answer, pipeline, question_for
from service.ask.events import Done, collect, event_name, payload
from service.ask.schemas import (
    ANSWER_EXAMPLE,
    ASK_EXAMPLES,
    CONVERSATION_EXAMPLE,
    AskRequest,
    AskResponse,
    ConversationMessage,
    ConversationOut,
    SourceRef,
)
from service.ask.streaming import opened
from service.auth import Principal, requires
from service.openapi import ok
from service.state import Services


@post(
    "/v1/ask", tags=["ask"], status_code=200, summary="Answer a question with citations",
    description="JSON by default; with `stream: true`, Server-Sent Events: `token` (text deltas), then `citations`, "
    "then `done` (the final answer text, timings, conversation id).",
    guards=[requires("ask")], responses=ok(AskResponse, ANSWER_EXAMPLE),
)  # fmt: skip
async def ask(
    data: Annotated[AskRequest, Body(examples=ASK_EXAMPLES)], request: Request[Principal, Any, Any],
    services: Services,
) -> Response[Any]:  # fmt: skip
    if not data.question.strip():
        raise ClientException("question must not be empty")
    answers = pipeline(services)
    question = question_for(request.user, services, data.question, filters=data.filters,
                            document_ids=data.document_ids, conversation_id=data.conversation_id)  # fmt: skip
    generator = services.container.generator
    if not data.stream:
        answer = await collect(answers.stream(question))
        count_answer("ask", answer, generator)
        return Response(AskResponse.of(answer))

    events = await opened(answers.stream(question))  # a dependency down is a 503/504 problem, not a broken 200

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        # Leaving this generator early (client gone) closes `events`, which aborts the vLLM request.
        try:
            async for event in events:
                if isinstance(event, Done):
                    count_answer("ask", event, generator)
                yield ServerSentEventMessage(event=event_name(event),
                                             data=json.dumps(payload(event), ensure_ascii=False))  # fmt: skip
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return ServerSentEvent(messages())


@get(
    "/v1/conversations/{conversation_id:str}", tags=["ask"], summary="The turns of a conversation, oldest first",
    guards=[requires("ask")], responses=ok(ConversationOut, CONVERSATION_EXAMPLE),
)  # fmt: skip
async def conversation(
    conversation_id: str, request: Request[Principal, Any, Any], services: Services
) -> ConversationOut:
    principal = request.user
    registry = services.container.registry
    owner = registry.conversation_owner(conversation_id)
    mine = owner == principal.key_id or (principal.unrestricted and principal.can("admin"))
    messages = registry.conversation(conversation_id, limit=1000) if mine else []
    if not messages:
        raise NotFoundException(f"no conversation {conversation_id}")
    return ConversationOut(conversation_id, [
        ConversationMessage(m["role"], m["content"], [
            SourceRef(s.get("document_id"), s.get("filename"), s.get("page"), s.get("chunk_id"))
            for s in m["sources"] if principal.sees(s.get("groups") or [])])
        for m in messages
    ])  # fmt: skip
