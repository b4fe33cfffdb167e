"""POST /v1/feedback (a reader rates an answer), GET /v1/feedback and DELETE /v1/feedback/{id} (administrators find
the bad answers). The Slack bot stores its feedback through the same port (kb.ports.FeedbackStore).

An administrator restricted to some groups reads only feedback whose giver's groups are all its own, as it lists only
such keys (service.routes.keys); any other record answers 404, as one that does not exist."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.openapi.spec import Example
from litestar.params import Body, Parameter

from kb.models import ALL_GROUPS, Feedback
from service.auth import Principal, from_browser, requires
from service.feedback.schemas import (
    FEEDBACK_CREATED_EXAMPLE,
    FEEDBACK_LIST_EXAMPLE,
    FEEDBACK_REQUEST_EXAMPLE,
    MAX_CITATIONS_BYTES,
    MAX_LIST,
    FeedbackCreated,
    FeedbackList,
    FeedbackOut,
    FeedbackRequest,
    Rating,
)
from service.openapi import ok
from service.state import Services

REQUEST_EXAMPLES = [
    Example(summary="a wrong answer", value=FEEDBACK_REQUEST_EXAMPLE),
    Example(summary="a good one", value={"rating": "up", "question": "How large may an upload be?",
                                         "answer": "100 MB per file by default [1]."}),
]  # fmt: skip
TAGS = ["feedback"]


def _readable(principal: Principal, feedback: Feedback) -> bool:
    return principal.holds(feedback.groups)


class FeedbackController(Controller):
    path = "/v1/feedback"

    @post(
        tags=TAGS, status_code=201, guards=[requires("ask")], responses=ok(FeedbackCreated, FEEDBACK_CREATED_EXAMPLE, status=201),
        summary="Rate an answer (👍 up / 👎 down), with an optional comment, the question, the answer and its citations",
        description="Stored with the caller's id and groups, and the door it came through (`web` for the page's "
        "session or the proxy's sign-in, `api` for a key). A `conversation_id` must name the caller's own "
        "conversation (404 otherwise).",
    )  # fmt: skip
    async def give_feedback(
        self,
        data: Annotated[FeedbackRequest, Body(examples=REQUEST_EXAMPLES)],
        request: Request[Principal, Any, Any],
        services: Services,
    ) -> FeedbackCreated:
        principal = request.user
        registry = services.container.registry
        if not data.question.strip():
            raise ClientException("question must not be empty")
        texts = {"question": data.question, "answer": data.answer, "comment": data.comment or "",
                 "conversation_id": data.conversation_id or ""}  # fmt: skip
        garbled = [name for name, text in texts.items() if "\x00" in text]
        if garbled:  # no database text holds it (PostgreSQL refuses it), and no reader typed it
            raise ClientException(f"{garbled[0]} must not contain NUL characters")
        citations = data.citations or []
        if len(msgspec.json.encode(citations)) > MAX_CITATIONS_BYTES:
            raise ClientException(f"citations: at most {MAX_CITATIONS_BYTES // 1024} KiB")
        if data.conversation_id is not None:
            owner = await asyncio.to_thread(registry.conversation_owner, data.conversation_id)
            # Another caller's conversation is "not found": its existence is not revealed either.
            if owner != principal.key_id:
                raise NotFoundException(f"no conversation {data.conversation_id}")
        comment = data.comment.strip() if data.comment is not None else None
        feedback = Feedback(
            feedback_id=uuid.uuid4().hex, principal_id=principal.key_id, rating=data.rating,
            question=data.question, answer=data.answer, comment=comment or None, citations=citations,
            conversation_id=data.conversation_id, source="web" if from_browser(request.auth) else "api",
            groups=list(principal.groups),
        )  # fmt: skip
        stored = await asyncio.to_thread(registry.add_feedback, feedback)
        return FeedbackCreated(stored.feedback_id, stored.created_at.isoformat() if stored.created_at else "")

    @get(
        tags=TAGS, guards=[requires("admin")], responses=ok(FeedbackList, FEEDBACK_LIST_EXAMPLE),
        summary="Feedback on answers, newest first (admin; within the caller's groups)",
        description="`rating=down` finds the bad answers; `before` (the previous page's `next_before`) pages back.",
    )  # fmt: skip
    async def list_feedback(
        self,
        request: Request[Principal, Any, Any],
        services: Services,
        rating: Annotated[Rating | None, Parameter(description="only `up` or only `down`")] = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_LIST, description="at most this many")] = 50,
        before: Annotated[
            datetime | None, Parameter(description="only feedback older than this moment (RFC 3339)")
        ] = None,
    ) -> FeedbackList:
        principal = request.user
        within = None if ALL_GROUPS in principal.groups else list(principal.groups)
        if before is not None:
            try:
                before = before.astimezone(UTC) if before.tzinfo else before.replace(tzinfo=UTC)
            except OverflowError:  # a moment at the edge of the calendar: before everything, or after it
                if before.year < 2:
                    return FeedbackList([], None)
                before = None
        records = await asyncio.to_thread(
            services.container.registry.list_feedback, rating=rating, before=before, limit=limit, within_groups=within
        )
        oldest = records[-1].created_at if len(records) == limit and records[-1].created_at is not None else None
        return FeedbackList([FeedbackOut.of(f) for f in records], oldest.isoformat() if oldest else None)

    @delete(
        "/{feedback_id:str}", tags=TAGS, guards=[requires("admin")],
        summary="Delete a feedback record within the caller's groups (admin); any other: 404",
    )  # fmt: skip
    async def delete_feedback(
        self, feedback_id: str, request: Request[Principal, Any, Any], services: Services
    ) -> None:
        registry = services.container.registry
        if len(feedback_id) > 64 or "\x00" in feedback_id:
            raise NotFoundException("no such feedback")
        feedback = await asyncio.to_thread(registry.get_feedback, feedback_id)
        if feedback is None or not _readable(request.user, feedback):
            raise NotFoundException(f"no feedback {feedback_id}")
        await asyncio.to_thread(registry.delete_feedback, feedback_id)
