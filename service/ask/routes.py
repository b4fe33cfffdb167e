"""POST /v1/ask (JSON, or Server-Sent Events named by the event types), GET /v1/conversations (the caller's own),
GET and DELETE /v1/conversations/{id}: the HTTP door onto the ask pipeline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.exceptions import ClientException, HTTPException, NotFoundException
from litestar.params import Body, Parameter
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage
from msgspec import Struct

from service.ask.access import MAX_CONVERSATION_ID_CHARS, count_answer, pipeline, question_for
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
from service.ask.structured import InvalidSchema, schema_of
from service.auth import Principal, requires
from service.openapi import ok
from service.state import Services

MAX_CONVERSATIONS = 500


@post(
    "/v1/ask", tags=["ask"], status_code=200, summary="Answer a question with citations",
    description="JSON by default; with `stream: true`, Server-Sent Events: `token` (text deltas), then `citations`, "
    "then `done` (the final answer text, timings, conversation id; `degraded: true` where the fallback generator "
    "wrote it while the generator server failed).",
    guards=[requires("ask")], responses=ok(AskResponse, ANSWER_EXAMPLE),
)  # fmt: skip
async def ask(
    data: Annotated[AskRequest, Body(examples=ASK_EXAMPLES)], request: Request[Principal, Any, Any],
    services: Services,
) -> Response[Any]:  # fmt: skip
    if not data.question.strip():
        raise ClientException("question must not be empty")
    try:
        schema = schema_of(data.response_format)
    except InvalidSchema as exc:
        raise HTTPException(str(exc), status_code=422) from exc
    answers = pipeline(services)
    question = question_for(request.user, services, data.question, filters=data.filters,
                            document_ids=data.document_ids, conversation_id=data.conversation_id,
                            json_schema=schema)  # fmt: skip
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
    # A source this reader may not see keeps its place, empty: the answer's [n] is the n-th source.
    return ConversationOut(conversation_id, [
        ConversationMessage(m["role"], m["content"], [
            SourceRef(s.get("document_id"), s.get("filename"), s.get("page"), s.get("chunk_id"))
            if principal.sees(s.get("groups") or []) else SourceRef(None, None, None, None)
            for s in m["sources"]])
        for m in messages
    ])  # fmt: skip


class ConversationSummary(Struct):
    conversation_id: str
    title: str  # the first question, at most 80 characters
    updated_at: str  # the last message's time (RFC 3339, UTC)
    turns: int  # questions asked


class ConversationList(Struct):
    conversations: list[ConversationSummary]


CONVERSATIONS_EXAMPLE = {"conversations": [{
    "conversation_id": ANSWER_EXAMPLE["conversation_id"], "title": "How large may an upload be?",
    "updated_at": "2026-11-30T18:05:11+00:00", "turns": 2}]}  # fmt: skip


@get(
    "/v1/conversations", tags=["ask"], summary="The caller's conversations, the most recently continued first",
    guards=[requires("ask")], responses=ok(ConversationList, CONVERSATIONS_EXAMPLE),
)  # fmt: skip
async def conversations(
    request: Request[Principal, Any, Any], services: Services,
    limit: Annotated[int, Parameter(ge=1, le=MAX_CONVERSATIONS, description="at most this many")] = 50,
) -> ConversationList:  # fmt: skip
    listed = await asyncio.to_thread(services.container.registry.list_conversations, request.user.key_id, limit)
    return ConversationList([ConversationSummary(c["conversation_id"], c["title"], c["updated_at"].isoformat(),
                                                 c["turns"]) for c in listed])  # fmt: skip


@delete(
    "/v1/conversations/{conversation_id:str}", tags=["ask"], guards=[requires("ask")],
    summary="Delete one of the caller's conversations with its messages; any other: 404",
)  # fmt: skip
async def delete_conversation(conversation_id: str, request: Request[Principal, Any, Any], services: Services) -> None:
    registry = services.container.registry
    if len(conversation_id) > MAX_CONVERSATION_ID_CHARS or "\x00" in conversation_id:
        raise NotFoundException("no such conversation")
    if not await asyncio.to_thread(registry.delete_conversation, conversation_id, request.user.key_id):
        raise NotFoundException(f"no conversation {conversation_id}")
