"""What /v1/ask and /v1/conversations take and return. A citation is kb.models.Citation itself: declared once."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar.openapi.spec import Example
from msgspec import Meta, Struct

from kb.models import Answer, Citation
from service.ask.structured import ResponseFormat
from service.search.filters import SearchFilters
from service.search.schemas import DOCUMENT_ID, PASSAGE_EXAMPLE

MAX_QUESTION_CHARS = 8000  # a question, maybe with a pasted passage; documents go through uploads
QuestionText = Annotated[str, Meta(max_length=MAX_QUESTION_CHARS, description=f"at most {MAX_QUESTION_CHARS} characters")]


class AskRequest(Struct):
    question: QuestionText
    stream: bool = False
    conversation_id: str | None = None
    filters: SearchFilters | None = None
    document_ids: list[str] | None = None  # ask about these documents (whole, when they fit the window)
    # JSON that validates against a schema instead of prose, as OpenAI's API takes it (service.ask.structured).
    response_format: ResponseFormat | None = None


class AskResponse(Struct):
    answer: str
    citations: list[Citation]
    grounded: bool  # True only when the sources support the answer's claims
    timings_ms: dict[str, float]
    conversation_id: str | None
    mode: str = "generate"  # generate | extract (quoted from the sources) | none (no information)
    unsupported: list[str] = msgspec.field(default_factory=list)  # sentences no cited source supports
    degraded: bool = False  # written (in part) by the fallback generator: the generator server was failing
    data: Any = None  # with a response_format schema: the answer parsed (`answer` is its JSON text)

    @classmethod
    def of(cls, answer: Answer) -> "AskResponse":
        return cls(answer.answer, answer.citations, answer.grounded, answer.timings_ms, answer.conversation_id,
                   answer.mode, answer.unsupported, answer.degraded, answer.data)  # fmt: skip


class SourceRef(Struct):
    document_id: str | None
    filename: str | None
    page: int | None
    chunk_id: str | None


class ConversationMessage(Struct):
    role: str
    content: str
    sources: list[SourceRef]


class ConversationOut(Struct):
    conversation_id: str
    messages: list[ConversationMessage]


ASK_EXAMPLES = [
    Example(summary="a question", value={"question": "How large may an upload be?"}),
    Example(summary="streamed (Server-Sent Events: token, citations, done)",
            value={"question": "工作日值班时间是什么时候？", "stream": True}),  # fmt: skip
    Example(summary="a follow-up in a conversation",
            value={"question": "And for PDFs?", "conversation_id": "c1f0e2d3a4b5c6d7e8f9a0b1c2d3e4f5"}),  # fmt: skip
    Example(summary="about one document", value={"question": "Summarise it.", "document_ids": [DOCUMENT_ID]}),
    Example(summary="a structured answer (JSON valid against a schema; `data` holds it parsed)", value={
        "question": "Extract the parties, the date and the amount of the services agreement.",
        "response_format": {"type": "json_schema", "json_schema": {"name": "contract", "schema": {
            "type": "object", "required": ["parties", "signed_on", "amount"], "properties": {
                "parties": {"type": "array", "items": {"type": "string"}}, "signed_on": {"type": "string"},
                "amount": {"type": "string"}}}}},
    }),
]  # fmt: skip
CITATION_EXAMPLE = {
    "n": 1, "document_id": DOCUMENT_ID, "filename": "kb-administrator-guide.pdf", "page": 2,
    "section": "Upload limits", "snippet": "Uploads are limited to 100 MB per file by default",
    "chunk_id": PASSAGE_EXAMPLE["chunk_id"], "span": [0, 50], "supported": True, "inferred": False, "score": 0.83,
}  # fmt: skip
ANSWER_EXAMPLE: dict[str, Any] = {
    "answer": "Each uploaded file may be at most 100 MB by default [1].", "citations": [CITATION_EXAMPLE],
    "grounded": True, "timings_ms": {"retrieval": 18.2, "first_token": 212.0, "total": 1650.0},
    "conversation_id": "c1f0e2d3a4b5c6d7e8f9a0b1c2d3e4f5", "mode": "generate", "unsupported": [], "degraded": False,
}  # fmt: skip
CONVERSATION_EXAMPLE = {"conversation_id": ANSWER_EXAMPLE["conversation_id"], "messages": [
    {"role": "user", "content": "How large may an upload be?", "sources": []},
    {"role": "assistant", "content": ANSWER_EXAMPLE["answer"], "sources": [
        {"document_id": DOCUMENT_ID, "filename": "kb-administrator-guide.pdf", "page": 2,
         "chunk_id": PASSAGE_EXAMPLE["chunk_id"]}]}]}  # fmt: skip
