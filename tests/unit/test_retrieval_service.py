"""RetrievalService: search mode by query language, reranking and context expansion (fake embedder and index)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from kb.languages import query_language, search_mode_for
from kb.models import Passage, SearchFilter
from kb.settings import RetrievalSettings
from service.search.service import RetrievalService, demote_boilerplate
from tests import fakes

pytestmark = pytest.mark.unit


class FakeEmbedder:
    dimension = 2
    max_tokens = 256

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [[1.0, 0.0] for _ in texts]

    def embed_query(self, text: str) -> list[float]:
        return [1.0, 0.0]


class FakeIndex:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.passages = [
            Passage(chunk_id=f"c{i}", document_id="d", filename="f", text=f"text {i}", score=1 - i / 10, ordinal=i)
            for i in range(10)
        ]

    def search(self, vector: Any, text: str, limit: int, filter: Any = None, mode: str = "hybrid") -> list[Passage]:
        self.calls.append(("search", limit, mode))
        return [dataclasses.replace(p) for p in self.passages[:limit]]

    def neighbours(self, passage: Passage, radius: int, filter: SearchFilter | None = None) -> list[Passage]:
        self.calls.append(("neighbours", passage.chunk_id, radius, filter))
        low, high = max(0, passage.ordinal - radius), passage.ordinal + radius
        return [p for p in self.passages if low <= p.ordinal <= high]


class ReverseReranker:
    def rerank(self, query: str, passages: Sequence[Passage], top_k: int) -> list[Passage]:
        return list(reversed(passages))[:top_k]


@pytest.mark.parametrize(
    ("query", "language"),
    [("What is the leave policy?", "en"), ("年假政策是什么？", "zh"), ("iPhone 15 的电池容量是多少", "zh"),
     ("Who founded 腾讯 in Shenzhen?", "en"), ("東京タワーはどこ", "ja")],
)
def test_query_language(query: str, language: str) -> None:
    assert query_language(query) == language


def test_hybrid_becomes_bm25_for_a_language_the_embedder_lacks() -> None:
    assert search_mode_for("年假政策是什么？", "hybrid", ["en"]) == "sparse"
    assert search_mode_for("年假政策是什么？", "hybrid", ["en", "zh"]) == "hybrid"
    assert search_mode_for("年假政策是什么？", "hybrid", ["*"]) == "hybrid"
    assert search_mode_for("年假政策是什么？", "dense", ["en"]) == "dense"  # asked for explicitly
    assert search_mode_for("What is the leave policy?", "hybrid", ["en"]) == "hybrid"


def test_service_routes_by_language() -> None:
    index = FakeIndex()
    service = RetrievalService(FakeEmbedder(), index, RetrievalSettings(top_k=3), languages=["en"])  # type: ignore[arg-type]

    service.search_sync("年假政策是什么？")
    service.search_sync("What is the leave policy?")

    searches = [call for call in index.calls if call[0] == "search" and call[1] == 3]
    assert [mode for _, _, mode in searches] == ["sparse", "hybrid"]


def test_reranker_sees_the_candidates_and_keeps_top_k() -> None:
    index = FakeIndex()
    settings = RetrievalSettings(top_k=3, rerank_candidates=6)
    service = RetrievalService(FakeEmbedder(), index, settings, reranker=ReverseReranker())  # type: ignore[arg-type]

    result = service.search_sync("leave policy")

    assert ("search", 6, "hybrid") in index.calls
    assert [p.chunk_id for p in result.passages] == ["c5", "c4", "c3"]


def test_context_expansion_attaches_neighbours_within_the_callers_filter() -> None:
    index = FakeIndex()
    service = RetrievalService(FakeEmbedder(), index, RetrievalSettings(top_k=2))  # type: ignore[arg-type]
    acl = SearchFilter(groups=["hr"])

    plain = service.search_sync("leave policy", filter=acl)
    expanded = service.search_sync("leave policy", filter=acl, expand=1)

    assert all(p.context == [] for p in plain.passages)
    assert [[c.chunk_id for c in p.context] for p in expanded.passages] == [["c0", "c1"], ["c0", "c1", "c2"]]
    assert ("neighbours", "c1", 1, acl) in index.calls


def ranked(scores: Sequence[float], boilerplate: Sequence[int] = ()) -> list[Passage]:
    """Passages c0, c1, ... best first with these scores; those numbered in `boilerplate` flagged."""
    return [
        Passage(chunk_id=f"c{i}", document_id="d", filename="f", text=f"text {i}", score=s, ordinal=i,
                boilerplate=i in boilerplate)
        for i, s in enumerate(scores)
    ]  # fmt: skip


def test_boilerplate_ranks_below_content_it_outscored_less_than_twice() -> None:
    # c0 (a contents page, 0.9 -> 0.45) falls below c1..c3 and above c4 (0.4); the cut to top_k comes after.
    index = fakes.FakeIndex(ranked([0.9, 0.8, 0.6, 0.5, 0.4, 0.3], boilerplate=[0]))
    service = RetrievalService(fakes.FakeEmbedder(), index, RetrievalSettings(top_k=3))  # type: ignore[arg-type]

    result = service.search_sync("leave policy")

    assert [p.chunk_id for p in result.passages] == ["c1", "c2", "c3"]
    # The first page held boilerplate: a deeper search found the content that takes its place.
    assert [c[1] for c in index.calls if c[0] == "search" and c[2] == "hybrid"] == [3, 8]
    five = RetrievalService(fakes.FakeEmbedder(), index, RetrievalSettings(top_k=5))  # type: ignore[arg-type]
    assert [(p.chunk_id, p.score) for p in five.search_sync("leave").passages][3:] == [("c0", 0.45), ("c4", 0.4)]


def test_boilerplate_far_ahead_of_all_content_still_leads() -> None:
    index = fakes.FakeIndex(ranked([2.0, 0.5, 0.4], boilerplate=[0]))
    service = RetrievalService(fakes.FakeEmbedder(), index, RetrievalSettings(top_k=2))  # type: ignore[arg-type]

    assert [p.chunk_id for p in service.search_sync("exhibit index").passages] == ["c0", "c1"]


def test_without_boilerplate_on_the_first_page_nothing_more_is_searched() -> None:
    index = fakes.FakeIndex(ranked([0.9, 0.8, 0.6, 0.5], boilerplate=[3]))
    service = RetrievalService(fakes.FakeEmbedder(), index, RetrievalSettings(top_k=2))  # type: ignore[arg-type]

    assert [p.chunk_id for p in service.search_sync("leave policy").passages] == ["c0", "c1"]
    assert [c[1] for c in index.calls if c[0] == "search"] == [2, 1]  # the page, then the best dense similarity


def test_weight_one_turns_the_demotion_off() -> None:
    index = fakes.FakeIndex(ranked([0.9, 0.8, 0.6], boilerplate=[0]))
    settings = RetrievalSettings(top_k=2, boilerplate_weight=1.0)
    service = RetrievalService(fakes.FakeEmbedder(), index, settings)  # type: ignore[arg-type]

    assert [(p.chunk_id, p.score) for p in service.search_sync("leave").passages] == [("c0", 0.9), ("c1", 0.8)]


def test_negative_scores_of_boilerplate_are_lowered_too() -> None:
    demoted = demote_boilerplate(ranked([-0.1, -0.15, -0.3], boilerplate=[0]), 0.5)
    assert [(p.chunk_id, p.score) for p in demoted] == [("c1", -0.15), ("c0", -0.2), ("c2", -0.3)]


def test_reranked_boilerplate_gives_way_to_reranked_content_and_relevance_reads_the_best_dense_hit() -> None:
    class ScoringReranker:
        """Scores c0 (boilerplate) best, then c2, c1, ... as a cross-encoder would, and records its top_k."""

        top_k: list[int] = []

        def rerank(self, query: str, passages: Sequence[Passage], top_k: int) -> list[Passage]:
            self.top_k.append(top_k)
            scores = {"c0": 0.95, "c2": 0.9, "c1": 0.7}
            rescored = [dataclasses.replace(p, score=scores.get(p.chunk_id, 0.1)) for p in passages]
            return sorted(rescored, key=lambda p: -p.score)[:top_k]

    index = fakes.FakeIndex(ranked([0.8, 0.7, 0.6, 0.5], boilerplate=[0]))
    reranker = ScoringReranker()
    settings = RetrievalSettings(top_k=2, rerank_candidates=4)
    service = RetrievalService(fakes.FakeEmbedder(), index, settings, reranker=reranker)  # type: ignore[arg-type]

    result = service.search_sync("table of contents")

    assert [p.chunk_id for p in result.passages] == ["c2", "c1"]
    assert reranker.top_k == [4]  # every candidate reranked, cut after the demotion
    # The best dense similarity is the dense search's own, boilerplate or not.
    assert result.best_similarity == 0.8
