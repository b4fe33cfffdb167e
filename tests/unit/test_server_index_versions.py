from types import SimpleNamespace

import pytest

from kb.index.plan import latest_versions_only

pytestmark = pytest.mark.unit


def point(document_id: str, version: int, chunk: str, score: float) -> SimpleNamespace:
    payload = {"chunk_id": chunk, "document_id": document_id, "filename": "f", "text": chunk, "version": version}
    return SimpleNamespace(payload=payload, score=score)


def test_a_search_between_the_two_publish_requests_shows_one_version_per_document() -> None:
    points = [point("d", 1, "old-a", 0.9), point("d", 2, "new-a", 0.8), point("e", 1, "other", 0.7),
              point("d", 2, "new-b", 0.6), point("d", 1, "old-b", 0.5)]
    assert [p.chunk_id for p in latest_versions_only(points)] == ["new-a", "other", "new-b"]
