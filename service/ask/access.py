"""What every door does before and after the pipeline: turn a caller and its request into a `Question` (its groups,
its conversation) and count the answer in the metrics."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from litestar.exceptions import ClientException, NotFoundException, ServiceUnavailableException

from kb.metrics import record_answer
from kb.models import Answer
from kb.ports import ConversationStore, Generator
from service.ask.events import Done
from service.ask.pipeline import AskPipeline, Question
from service.auth import Principal, scoped_filter
from service.search.filters import SearchFilters, to_filter
from service.state import Services

MAX_CONVERSATION_ID_CHARS = 64


def pipeline(services: Services) -> AskPipeline:
    if services.answers is None:
        raise ServiceUnavailableException("the generator is starting or failed to start: see /readyz")
    return services.answers


def claim_conversation(store: ConversationStore, principal: Principal, conversation_id: str | None) -> str:
    """The conversation to continue or start; another key's conversation is "not found" (its existence is not
    revealed either)."""
    conversation_id = conversation_id or uuid.uuid4().hex
    if len(conversation_id) > MAX_CONVERSATION_ID_CHARS:
        raise ClientException(f"conversation_id: at most {MAX_CONVERSATION_ID_CHARS} characters")
    if not store.claim_conversation(conversation_id, principal.key_id):
        raise NotFoundException(f"no conversation {conversation_id}")
    return conversation_id


def question_for(
    principal: Principal,
    services: Services,
    text: str,
    *,
    filters: SearchFilters | None = None,
    document_ids: list[str] | None = None,
    conversation_id: str | None = None,
    history: Sequence[dict[str, Any]] | None = None,
    json_schema: dict[str, Any] | None = None,
) -> Question:
    registry = services.container.registry
    return Question(
        text=text,
        filter=scoped_filter(principal, to_filter(filters, document_ids)),
        conversation_id=claim_conversation(registry, principal, conversation_id),
        history=history,
        reader_groups=principal.visible_groups,
        json_schema=json_schema,
        owner=principal.key_id,
    )


def count_answer(door: str, done: Done | Answer, generator: Generator | None) -> None:
    tokens = generator.count_tokens(done.answer) if generator is not None else 0
    record_answer(door, done.timings_ms, done.grounded, tokens)
