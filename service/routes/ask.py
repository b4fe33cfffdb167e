"""Ask: an answer with numbered citations, as JSON or as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import get, post
from litestar.exceptions import ClientException, NotFoundException, ServiceUnavailableException
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage
from msgspec import Struct

from kb.models import SearchFilter
from service.routes.search import SearchFilters, to_filter
from service.state import Services


class AskRequest(Struct):
    question: str
    stream: bool = False
    conversation_id: str | None = None
    filters: SearchFilters | None = None
    document_ids: list[str] | None = None


def _filter(data: AskRequest) -> SearchFilter | None:
    search_filter = to_filter(data.filters)
    if data.document_ids:
        search_filter = search_filter or SearchFilter()
        search_filter.document_ids = data.document_ids
    return search_filter


@post("/v1/ask", tags=["ask"], status_code=200, summary="Answer a question with citations")
async def ask(data: AskRequest, services: Services) -> Response[Any]:
    if not data.question.strip():
        raise ClientException("question must not be empty")
    if services.answers is None:
        raise ServiceUnavailableException("the generator is starting or failed to start: see /readyz")
    if data.stream:
        events = services.answers.stream(data.question, _filter(data), data.conversation_id)

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            # Leaving this generator early (client gone) closes `events`, which aborts the vLLM request.
            try:
                async for event in events:
                    yield ServerSentEventMessage(event=event.event, data=json.dumps(event.data, ensure_ascii=False))
            finally:
                await events.aclose()

        return ServerSentEvent(messages())
    answer = await services.answers.ask(data.question, _filter(data), data.conversation_id)
    return Response(answer.to_dict())


@get("/v1/conversations/{conversation_id:str}", tags=["ask"], summary="The turns of a conversation, oldest first")
async def conversation(conversation_id: str, services: Services) -> dict[str, Any]:
    messages = services.container.registry.conversation(conversation_id, limit=1000)
    if not messages:
        raise NotFoundException(f"no conversation {conversation_id}")
    return {
        "conversation_id": conversation_id,
        "messages": [
            {"role": m["role"], "content": m["content"], "sources": [
                {k: s.get(k) for k in ("document_id", "filename", "page", "chunk_id")} for s in m["sources"]]}
            for m in messages
        ],
    }
