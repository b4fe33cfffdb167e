"""The backend-neutral index plans both adapters translate: filters, search sides, scrolls, points, the publish swap."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from kb.index import plan
from kb.index.fusion import HybridFusion
from kb.index.schema import DENSE_VECTOR, SENTENCE_VECTOR, SPARSE_VECTOR
from kb.models import Chunk, Passage, SearchFilter

pytestmark = pytest.mark.unit


@dataclass
class Terms:
    indices: list[int]
    values: list[float]


@dataclass
class FakeEncoder:
    """BM25 terms by word count; "the" alone (a stopword) has none. Records what it encoded."""

    documents: list[str] = field(default_factory=list)

    def query(self, text: str) -> Terms:
        words = [w for w in text.split() if w != "the"]
        return Terms(list(range(len(words))), [1.0] * len(words))

    def document(self, text: str) -> Terms:
        self.documents.append(text)
        return self.query(text)


def search(
    text: str = "rate of growth",
    limit: int = 5,
    search_filter: SearchFilter | None = None,
    mode: str = "hybrid",
    fusion: HybridFusion | None = None,
    sentences: bool = True,
) -> plan.SearchPlan | None:
    return plan.search(
        [1, 0],
        text,
        limit,
        search_filter,
        mode,
        fusion=fusion or HybridFusion(),  # type: ignore[arg-type]
        encoder=FakeEncoder(),
        sentence_vectors=sentences,
    )


def test_no_filter_still_hides_staged_chunks() -> None:
    assert plan.visible(None) == plan.Conditions(must=(), must_not=(plan.STAGED,))


def test_every_filter_field_becomes_a_condition_in_order() -> None:
    after, before = datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 2, 1, tzinfo=timezone.utc)
    conditions = plan.visible(
        SearchFilter(
            groups=["a", "b"],
            document_ids=["d"],
            metadata={"lang": "en", "team": ["x", "y"]},
            created_after=after,
            created_before=before,
        ),
        plan.document("d"),
    )
    assert conditions is not None
    assert conditions.must == (
        plan.Match("document_id", "d"),
        plan.MatchAny("groups", ("a", "b")),
        plan.MatchAny("document_id", ("d",)),
        plan.MatchAny("metadata.lang", ("en",)),
        plan.MatchAny("metadata.team", ("x", "y")),
        plan.DatetimeRange("created_at", gte="2024-01-01T00:00:00.000000Z", lt="2024-02-01T00:00:00.000000Z"),
    )
    assert conditions.must_not == (plan.STAGED,)


@pytest.mark.parametrize(
    "search_filter",
    [SearchFilter(groups=[]), SearchFilter(document_ids=[]), SearchFilter(groups=["a"], metadata={"team": []})],
    ids=["no-group", "no-document", "no-metadata-value"],
)
def test_an_empty_list_matches_nothing_and_no_read_is_planned(search_filter: SearchFilter) -> None:
    assert plan.visible(search_filter) is None
    assert search(search_filter=search_filter) is None
    assert search(search_filter=search_filter, mode="unknown") is None  # checked before the mode, as before
    assert plan.neighbours(Passage("c", "d", "f", "t", 1.0), 1, search_filter) is None
    assert plan.document_chunks("d", search_filter, 10) is None


def test_a_plain_search_uses_one_vector() -> None:
    dense, sparse = search(mode="dense"), search(mode="sparse")
    assert dense is not None and sparse is not None
    assert (dense.using, dense.sides, dense.limit, dense.dense) == (DENSE_VECTOR, (), 5, [1.0, 0.0])
    assert sparse.using == SPARSE_VECTOR and sparse.sparse is not None and sparse.sparse.indices == [0, 1, 2]
    # A BM25 search for stopwords alone has nothing to match.
    assert search("the", mode="sparse") is None
    with pytest.raises(ValueError, match="unknown search mode"):
        search(mode="fuzzy")


def test_hybrid_fuses_each_side_as_often_as_its_weight_and_the_sentence_side_rescores_the_others() -> None:
    hybrid = search(limit=5)
    assert hybrid is not None and hybrid.using is None and hybrid.fusion == "dbsf"
    dense, sparse = plan.Side(DENSE_VECTOR, 50), plan.Side(SPARSE_VECTOR, 50)
    sentences = plan.Side(SENTENCE_VECTOR, 50, rescores=(dense, sparse))
    assert hybrid.sides == (dense, sentences, sentences, sparse, sparse, sparse)
    # Each side is as deep as the larger of the candidates and the limit.
    deep = search(limit=80, fusion=HybridFusion("rrf", candidates=10))
    assert deep is not None and deep.fusion == "rrf" and {s.limit for s in deep.sides} == {80}


def test_hybrid_leaves_out_the_sides_a_query_or_an_index_lacks() -> None:
    stopwords = search("the")
    assert stopwords is not None and stopwords.sparse is None
    assert [s.using for s in stopwords.sides] == [DENSE_VECTOR, SENTENCE_VECTOR, SENTENCE_VECTOR]
    assert stopwords.sides[1].rescores == (plan.Side(DENSE_VECTOR, 50),)
    old_index = search(sentences=False)
    assert old_index is not None and [s.using for s in old_index.sides] == [DENSE_VECTOR] + [SPARSE_VECTOR] * 3
    # BM25 alone, for a query with no terms: nothing left to fuse.
    assert search("the", fusion=HybridFusion(dense_weight=0, sentence_weight=0)) is None
    assert search(limit=0) is None


def test_neighbours_and_document_chunks_select_by_ordinal_inside_the_filter() -> None:
    passage = Passage("c", "d", "f", "t", 0.7, ordinal=4)
    around = plan.neighbours(passage, 2, SearchFilter(groups=["a"]))
    assert around is not None and (around.limit, around.score) == (5, 0.7)
    assert around.conditions.must[:2] == (plan.Match("document_id", "d"), plan.NumberRange("ordinal", gte=2, lte=6))
    with pytest.raises(ValueError):
        plan.neighbours(passage, -1, None)
    first = plan.document_chunks("d", None, 3)
    assert first is not None and (first.limit, first.score) == (3, 0.0)
    assert first.conditions.must == (plan.Match("document_id", "d"), plan.NumberRange("ordinal", lt=3))
    assert plan.document_chunks("d", None, 0) is None


def test_publish_deletes_every_other_version_and_makes_this_one_live() -> None:
    swap = plan.publish("d", 3)
    assert swap.older == plan.Conditions(must=(plan.document("d"),), must_not=(plan.Match("version", 3),))
    assert swap.new == plan.Conditions(must=(plan.document("d"), plan.Match("version", 3)))
    assert plan.staged_chunks("d").must == (plan.document("d"), plan.STAGED)
    assert plan.whole_document("d") == plan.Conditions(must=(plan.document("d"),))


def chunk(n: int, embed_text: str | None = None) -> Chunk:
    return Chunk(chunk_id=f"c{n}", document_id="d", ordinal=n, text=f"text {n}", filename="f", embed_text=embed_text)


def test_points_carry_bm25_of_the_embedded_text_and_the_sentence_multivector() -> None:
    encoder = FakeEncoder()
    built = plan.points(
        [chunk(0, "Heading text 0"), chunk(1)], [[1, 0], [0, 1]], [[[0.5, 0.5]], []], encoder, with_sentences=True
    )
    assert encoder.documents == ["Heading text 0", "text 1"]
    assert [p.id for p in built] == ["c0", "c1"] and built[0].payload == chunk(0, "Heading text 0").payload()
    assert built[0].sentences == [[1.0, 0.0], [0.5, 0.5]]  # the chunk's own vector first
    assert built[1].sentences == [[0.0, 1.0]]
    without = plan.points([chunk(0)], [[1, 0]], None, FakeEncoder(), with_sentences=False)
    assert without[0].sentences is None and without[0].dense == [1.0, 0.0]


@pytest.mark.parametrize("vectors, sentences", [([[1, 0]], None), ([[1, 0], [0, 1]], [[]])])
def test_points_refuse_arguments_of_different_lengths(vectors: list[list[float]], sentences: list | None) -> None:
    with pytest.raises(ValueError):
        plan.points([chunk(0), chunk(1)], vectors, sentences, FakeEncoder(), with_sentences=True)


def test_the_plans_import_no_qdrant_client() -> None:
    code = "import sys, kb.index.plan; print(sorted(m for m in sys.modules if m.startswith('qdrant')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
