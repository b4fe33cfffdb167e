"""What /v1/search takes and returns (the handlers return these Structs, so the OpenAPI schema is what runs)."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar.openapi.spec import Example
from msgspec import Meta, Struct, field

from kb.models import Passage
from service.search.filters import SearchFilters

MAX_TOP_K = 100
# Passages per search: 0, negative or absurd values are refused with 400 (not silently clamped).
TopK = Annotated[int, Meta(ge=1, le=MAX_TOP_K, description=f"number of passages, 1 to {MAX_TOP_K}")]
# A question or a pasted paragraph, not a document: a multi-megabyte query would cost seconds of CPU per request.
MAX_QUERY_CHARS = 4000
Query = Annotated[str, Meta(max_length=MAX_QUERY_CHARS, description=f"at most {MAX_QUERY_CHARS} characters")]


class SearchRequest(Struct):
    query: Query
    top_k: TopK = field(default=5)
    filters: SearchFilters | None = None
    mode: Literal["dense", "sparse", "hybrid"] | None = None


class PassageOut(Struct):
    """A passage as a reader sees it (its groups, ordinal and neighbours stay inside)."""

    chunk_id: str
    document_id: str
    filename: str
    page: int | None
    page_end: int | None
    section: str | None
    text: str
    score: float

    @classmethod
    def of(cls, passage: Passage) -> "PassageOut":
        return cls(passage.chunk_id, passage.document_id, passage.filename, passage.page, passage.page_end,
                   passage.section, passage.text, passage.score)  # fmt: skip


class SearchResponse(Struct):
    passages: list[PassageOut]
    relevant: bool
    latency_ms: float


DOCUMENT_ID = "3f2a9c1e0b7d4e5f8a6b2c1d0e9f8a7b"
PASSAGE_EXAMPLE = {
    "chunk_id": "0d5c2d5e-5b7f-5c69-9a43-2f6f1f0f3c11", "document_id": DOCUMENT_ID,
    "filename": "kb-administrator-guide.pdf", "page": 2, "page_end": 2, "section": "Upload limits",
    "text": "Uploads are limited to 100 MB per file by default (KB_INGEST__MAX_UPLOAD_BYTES).", "score": 0.83,
}  # fmt: skip
SEARCH_EXAMPLE = {"passages": [PASSAGE_EXAMPLE], "relevant": True, "latency_ms": 12.4}
SEARCH_EXAMPLES = [
    Example(summary="a question", value={"query": "How large may an upload be?", "top_k": 5}),
    Example(
        summary="filtered",
        value={"query": "值班时间", "top_k": 3, "filters": {"groups": ["staff"], "metadata": {"team": "ops"}}},
    ),
]
