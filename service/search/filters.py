"""The filters a request may send (`filters`, `document_ids`) -> the index's SearchFilter, before the caller's groups
narrow it (service.auth.scoped_filter); and the check of what comes back."""

from __future__ import annotations

from datetime import datetime

from litestar.exceptions import ClientException
from msgspec import Struct

from kb.models import Passage, SearchFilter


class SearchFilters(Struct):
    document_ids: list[str] | None = None
    groups: list[str] | None = None  # narrows the caller's groups; never widens them
    metadata: dict[str, str | list[str]] | None = None  # e.g. {"team": "ops"} or {"team": ["ops", "sre"]}
    created_after: datetime | None = None
    created_before: datetime | None = None


def to_filter(filters: SearchFilters | None, document_ids: list[str] | None = None) -> SearchFilter | None:
    """The request's own restrictions (filters, and the documents it asks about), before the caller's groups."""
    result: SearchFilter | None = None
    if filters is not None:
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
    if document_ids:
        result = result or SearchFilter()
        result.document_ids = document_ids
    return result


def visible(passages: list[Passage], search_filter: SearchFilter) -> list[Passage]:
    """The check after the index's own filter: nothing outside the caller's groups leaves the service."""
    kept = [p for p in passages if p.visible_to(search_filter.groups)]
    for passage in kept:
        passage.context = [c for c in passage.context if c.visible_to(search_filter.groups)]
    return kept
