"""What /v1/feedback takes and returns. A record is kb.ports.Feedback; FeedbackOut is its wire view."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from kb.models import Feedback
from service.ask.schemas import ANSWER_EXAMPLE, CITATION_EXAMPLE, MAX_QUESTION_CHARS

MAX_COMMENT_CHARS = 2000
MAX_ANSWER_CHARS = 50_000
MAX_CITATIONS = 100
MAX_CITATIONS_BYTES = 256 * 1024
MAX_LIST = 500

Rating = Literal["up", "down"]


class FeedbackRequest(Struct):
    rating: Rating
    question: Annotated[str, Meta(min_length=1, max_length=MAX_QUESTION_CHARS)]
    answer: Annotated[str, Meta(max_length=MAX_ANSWER_CHARS)]
    comment: Annotated[str, Meta(max_length=MAX_COMMENT_CHARS, description="at most 2000 characters")] | None = None
    # The answer's citations as the reader saw them (the `citations` of /v1/ask).
    citations: Annotated[list[dict[str, Any]], Meta(max_length=MAX_CITATIONS)] | None = None
    # The conversation the answer belongs to: it must be the caller's own.
    conversation_id: Annotated[str, Meta(max_length=64)] | None = None


class FeedbackCreated(Struct):
    feedback_id: str
    created_at: str


class FeedbackOut(Struct):
    feedback_id: str
    created_at: str
    principal_id: str  # who gave it: a key's id, or `user:<name>` for a user signed in through the proxy
    rating: Rating
    comment: str | None
    question: str
    answer: str
    citations: list[dict[str, Any]]
    conversation_id: str | None
    source: str  # web | slack | api
    groups: list[str]  # the giver's groups

    @classmethod
    def of(cls, feedback: Feedback) -> FeedbackOut:
        created = feedback.created_at.isoformat() if feedback.created_at is not None else ""
        return cls(feedback.feedback_id, created, feedback.principal_id, feedback.rating, feedback.comment,
                   feedback.question, feedback.answer, list(feedback.citations), feedback.conversation_id,
                   feedback.source, list(feedback.groups))  # fmt: skip


class FeedbackList(Struct):
    feedback: list[FeedbackOut]
    # `before` for the next page (the oldest record's created_at) when there may be more; None: this is the last page.
    next_before: str | None


FEEDBACK_REQUEST_EXAMPLE = {
    "rating": "down", "comment": "It cites the 2023 guide; the limit changed in 2025.",
    "question": "How large may an upload be?", "answer": ANSWER_EXAMPLE["answer"], "citations": [CITATION_EXAMPLE],
    "conversation_id": ANSWER_EXAMPLE["conversation_id"],
}  # fmt: skip
FEEDBACK_CREATED_EXAMPLE = {
    "feedback_id": "0f3c2b1a9d8e7f6a5b4c3d2e1f0a9b8c",
    "created_at": "2026-11-30T18:05:11+00:00",
}
FEEDBACK_EXAMPLE = {
    **FEEDBACK_CREATED_EXAMPLE, "principal_id": "user:alice", **FEEDBACK_REQUEST_EXAMPLE, "source": "web",
    "groups": ["eng", "everyone"],
}  # fmt: skip
FEEDBACK_LIST_EXAMPLE = {"feedback": [FEEDBACK_EXAMPLE], "next_before": None}
