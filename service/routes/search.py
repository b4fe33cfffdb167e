"""Search: passages with scores and source metadata, from documents the caller may see."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from litestar import Request, post
from litestar.exceptions import ClientException
from litestar.openapi.spec import Example
from litestar.params import Body
from msgspec import Meta, Struct, field

from kb.models import Passage, SearchFilter
from service.auth import Principal, requires, scoped_filter
from service.schemas import EXAMPLES, SearchResponse, TopK, ok
from service.state import Services


class SearchFilters(Struct):
    document_ids: list[str] | None = None
    groups: list[str] | None = None  # narrows the caller's groups; never widens them
    metadata: dict[str, str | list[str]] | None = None  # e.g. {"team": "ops"} or {"team": ["ops", "sre"]}
    created_after: datetime | None = None
    created_before: datetime | None = None


# A question or a pasted paragraph, not a document: a multi-megabyte query would cost seconds of CPU per request.
MAX_QUERY_CHARS = 4000
Query = Annotated[str, Meta(max_length=MAX_QUERY_CHARS, description=f"at most {MAX_QUERY_CHARS} characters")]


class SearchRequest(Struct):
    query: Query
    top_k: TopK = field(default=5)
    filters: SearchFilters | None = None
    mode: Literal["dense", "sparse", "hybrid"] | None = None


SEARCH_EXAMPLES = [
    Example(summary="a question", value={"query": "How large may an upload be?", "top_k": 5}),
    Example(
        summary="filtered",
        value={"query": "值班时间", "top_k": 3, "filters": {"groups": ["staff"], "metadata": {"team": "ops"}}},
    ),
]


def to_filter(filters: SearchFilters | None) -> SearchFilter | None:
    if filters is None:
        return None
    result = SearchFilter(
        groups=filters.groups,
        document_ids=filters.document_ids,
        metadata=filters.metadata,
        created_after=filters.created_after,
        created_before=filters.created_before,
    )
    try:
        result.created_range()  # the UTC form the index reads: 9999-12-31T23:59:59-23:59 has none
    except (OverflowError, ValueError) as exc:
        raise ClientException(f"filters: created_after/created_before out of range ({exc})") from exc
    return result


def visible(passages: list[Passage], search_filter: SearchFilter) -> list[Passage]:
    """The check after the index's own filter: nothing outside the caller's groups leaves the service."""
    kept = [p for p in passages if p.visible_to(search_filter.groups)]
    for passage in kept:
        passage.context = [c for c in passage.context if c.visible_to(search_filter.groups)]
    return kept


@post(
    "/v1/search", tags=["search"], status_code=200, summary="Retrieve passages for a query",
    guards=[requires("search")], responses=ok(SearchResponse, EXAMPLES["search"]),
)  # fmt: skip
async def search(
    data: Annotated[SearchRequest, Body(examples=SEARCH_EXAMPLES)], request: Request[Principal, Any, Any],
    services: Services,
) -> dict[str, Any]:  # fmt: skip
    if not data.query.strip():
        raise ClientException("query must not be empty")
    search_filter = scoped_filter(request.user, to_filter(data.filters))
    try:
        result = await services.retrieval.search(data.query, data.top_k, search_filter, data.mode)
    except ValueError as exc:  # an unusable filter (e.g. a metadata key with odd characters)
        raise ClientException(str(exc)) from exc
    passages = visible(result.passages, search_filter)
    return {
        "passages": [p.to_dict() for p in passages],
        "relevant": result.relevant and bool(passages),
        "latency_ms": round(result.latency_ms, 2),
    }
