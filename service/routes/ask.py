"""Ask: an answer with numbered citations, as JSON or as Server-Sent Events, from documents the caller may see."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.exceptions import ClientException, NotFoundException, ServiceUnavailableException
from litestar.openapi.spec import Example
from litestar.params import Body
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage
from msgspec import Meta, Struct

from kb.models import SearchFilter
from kb.ports import Registry
from service.answering import opened
from service.auth import Principal, requires, scoped_filter
from service.observability import record_answer
from service.routes.search import SearchFilters, to_filter
from service.schemas import EXAMPLES, AskResponse, ConversationOut, ok
from service.state import Services

MAX_QUESTION_CHARS = 8000  # a question, maybe with a pasted passage; documents go through uploads
Question = Annotated[str, Meta(max_length=MAX_QUESTION_CHARS, description=f"at most {MAX_QUESTION_CHARS} characters")]


class AskRequest(Struct):
    question: Question
    stream: bool = False
    conversation_id: str | None = None
    filters: SearchFilters | None = None
    document_ids: list[str] | None = None  # ask about these documents (whole, when they fit the window)


ASK_EXAMPLES = [
    Example(summary="a question", value={"question": "How large may an upload be?"}),
    Example(summary="streamed (Server-Sent Events: token, citations, done)",
            value={"question": "工作日值班时间是什么时候？", "stream": True}),  # fmt: skip
    Example(summary="a follow-up in a conversation",
            value={"question": "And for PDFs?", "conversation_id": "c1f0e2d3a4b5c6d7e8f9a0b1c2d3e4f5"}),  # fmt: skip
    Example(summary="about one document", value={"question": "Summarise it.", "document_ids": ["3f2a9c1e0b7d4e5f"]}),
]


def request_filter(filters: SearchFilters | None, document_ids: list[str] | None) -> SearchFilter | None:
    """The request's own restrictions (filters, and the documents it asks about), before the caller's groups."""
    search_filter = to_filter(filters)
    if document_ids:
        search_filter = search_filter or SearchFilter()
        search_filter.document_ids = document_ids
    return search_filter


async def collect(
    events: AsyncIterator[Any], principal: Principal, registry: Registry
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A whole answer from its events: the citations the caller may see, and the "done" event's data."""
    citations: list[dict[str, Any]] = []
    done: dict[str, Any] = {}
    async for event in events:
        if event.event == "citations":
            citations = visible_citations(event.data["citations"], principal, registry)
        elif event.event == "done":
            done = event.data
    return citations, done


def claim_conversation(registry: Registry, principal: Principal, conversation_id: str | None) -> str:
    """The conversation to continue or start; another key's conversation is "not found" (its existence is not
    revealed either)."""
    conversation_id = conversation_id or uuid.uuid4().hex
    if len(conversation_id) > 64:
        raise ClientException("conversation_id: at most 64 characters")
    if not registry.claim_conversation(conversation_id, principal.key_id):
        raise NotFoundException(f"no conversation {conversation_id}")
    return conversation_id


def visible_citations(citations: list[dict[str, Any]], principal: Principal, registry: Registry) -> list[dict[str, Any]]:
    """The check after retrieval's filter: a citation to a document the caller may not see never leaves."""
    if principal.unrestricted:
        return citations
    allowed: dict[str, bool] = {}
    kept = []
    for citation in citations:
        document_id = citation["document_id"]
        if document_id not in allowed:
            document = registry.get_document(document_id)
            allowed[document_id] = document is not None and principal.sees(document.groups)
        if allowed[document_id]:
            kept.append(citation)
    return kept


def answer_tokens(services: Services, text: str) -> int:
    generator = services.container.generator
    return generator.count_tokens(text) if generator is not None else 0


@post(
    "/v1/ask", tags=["ask"], status_code=200, summary="Answer a question with citations",
    description="JSON by default; with `stream: true`, Server-Sent Events: `token` (text deltas), then `citations`, "
    "then `done` (the final answer text, timings, conversation id).",
    guards=[requires("ask")], responses=ok(AskResponse, EXAMPLES["ask"]),
)  # fmt: skip
async def ask(
    data: Annotated[AskRequest, Body(examples=ASK_EXAMPLES)], request: Request[Principal, Any, Any],
    services: Services,
) -> Response[Any]:  # fmt: skip
    if not data.question.strip():
        raise ClientException("question must not be empty")
    if services.answers is None:
        raise ServiceUnavailableException("the generator is starting or failed to start: see /readyz")
    principal = request.user
    registry = services.container.registry
    search_filter = scoped_filter(principal, request_filter(data.filters, data.document_ids))
    conversation_id = claim_conversation(registry, principal, data.conversation_id)
    events = services.answers.stream(data.question, search_filter, conversation_id)
    if data.stream:
        events = await opened(events)  # a dependency down is a 503/504 problem, not a 200 stream that breaks

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            # Leaving this generator early (client gone) closes `events`, which aborts the vLLM request.
            try:
                async for event in events:
                    payload = event.data
                    if event.event == "citations":
                        payload = {**payload, "citations": visible_citations(payload["citations"], principal, registry)}
                    elif event.event == "done":
                        record_answer("ask", payload, answer_tokens(services, payload["answer"]))
                    yield ServerSentEventMessage(event=event.event, data=json.dumps(payload, ensure_ascii=False))
            finally:
                await events.aclose()

        return ServerSentEvent(messages())
    citations, done = await collect(events, principal, registry)
    record_answer("ask", done, answer_tokens(services, done["answer"]))
    return Response({
        "answer": done["answer"], "citations": citations, "grounded": done["grounded"],
        "timings_ms": done["timings_ms"], "conversation_id": done.get("conversation_id"),
    })  # fmt: skip


@get(
    "/v1/conversations/{conversation_id:str}", tags=["ask"], summary="The turns of a conversation, oldest first",
    guards=[requires("ask")], responses=ok(ConversationOut, EXAMPLES["conversation"]),
)  # fmt: skip
async def conversation(conversation_id: str, request: Request[Principal, Any, Any], services: Services) -> dict[str, Any]:
    principal = request.user
    registry = services.container.registry
    owner = registry.conversation_owner(conversation_id)
    mine = owner == principal.key_id or (principal.unrestricted and principal.can("admin"))
    messages = registry.conversation(conversation_id, limit=1000) if mine else []
    if not messages:
        raise NotFoundException(f"no conversation {conversation_id}")
    return {
        "conversation_id": conversation_id,
        "messages": [
            {"role": m["role"], "content": m["content"], "sources": [
                {k: s.get(k) for k in ("document_id", "filename", "page", "chunk_id")} for s in m["sources"]
                if principal.sees(s.get("groups") or [])]}
            for m in messages
        ],
    }
