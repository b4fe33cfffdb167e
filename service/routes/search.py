"""Search: passages with scores and source metadata."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from litestar import post
from msgspec import Struct, field

from kb.models import SearchFilter
from service.state import Services


class SearchFilters(Struct):
    document_ids: list[str] | None = None
    groups: list[str] | None = None
    metadata: dict[str, str | list[str]] | None = None  # e.g. {"team": "ops"} or {"team": ["ops", "sre"]}
    created_after: datetime | None = None
    created_before: datetime | None = None


class SearchRequest(Struct):
    query: str
    top_k: int = field(default=5)
    filters: SearchFilters | None = None
    mode: Literal["dense", "sparse", "hybrid"] | None = None


def to_filter(filters: SearchFilters | None) -> SearchFilter | None:
    if filters is None:
        return None
    return SearchFilter(
        groups=filters.groups,
        document_ids=filters.document_ids,
        metadata=filters.metadata,
        created_after=filters.created_after,
        created_before=filters.created_before,
    )


@post("/v1/search", tags=["search"], status_code=200, summary="Retrieve passages for a query")
async def search(data: SearchRequest, services: Services) -> dict[str, Any]:
    if not data.query.strip():
        from litestar.exceptions import ClientException

        raise ClientException("query must not be empty")
    top_k = max(1, min(data.top_k, 100))
    try:
        result = await services.retrieval.search(data.query, top_k, to_filter(data.filters), data.mode)
    except ValueError as exc:  # an unusable filter (e.g. a metadata key with odd characters)
        from litestar.exceptions import ClientException

        raise ClientException(str(exc)) from exc
    return {
        "passages": [p.to_dict() for p in result.passages],
        "relevant": result.relevant,
        "latency_ms": round(result.latency_ms, 2),
    }
