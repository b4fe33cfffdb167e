"""POST /v1/search: passages with scores and source metadata, from documents the caller may see."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, post
from litestar.exceptions import ClientException
from litestar.params import Body

from service.auth import Principal, requires, scoped_filter
from service.openapi import ok
from service.search.filters import to_filter, visible
from service.search.schemas import SEARCH_EXAMPLE, SEARCH_EXAMPLES, PassageOut, SearchRequest, SearchResponse
from service.state import Services


@post(
    "/v1/search", tags=["search"], status_code=200, summary="Retrieve passages for a query",
    guards=[requires("search")], responses=ok(SearchResponse, SEARCH_EXAMPLE),
)  # fmt: skip
async def search(
    data: Annotated[SearchRequest, Body(examples=SEARCH_EXAMPLES)], request: Request[Principal, Any, Any],
    services: Services,
) -> SearchResponse:  # fmt: skip
    if not data.query.strip():
        raise ClientException("query must not be empty")
    search_filter = scoped_filter(request.user, to_filter(data.filters))
    try:
        result = await services.retrieval.search(data.query, data.top_k, search_filter, data.mode)
    except ValueError as exc:  # an unusable filter (e.g. a metadata key with odd characters)
        raise ClientException(str(exc)) from exc
    passages = visible(result.passages, search_filter)
    return SearchResponse(
        passages=[PassageOut.of(p) for p in passages],
        relevant=result.relevant and bool(passages),
        latency_ms=round(result.latency_ms, 2),
    )
