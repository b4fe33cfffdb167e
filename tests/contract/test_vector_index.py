"""One contract for every VectorIndex adapter: Qdrant Edge and qdrant-client (local mode here)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kb.adapters.edge_index import EdgeVectorIndex, _config
from kb.adapters.qdrant_server_index import QdrantServerIndex
from kb.index.bm25 import Bm25Encoder, Bm25Terms, han_bigrams, word_pairs
from kb.index import plan
from kb.index.fusion import HybridFusion
from kb.index.schema import SPARSE_VECTOR
from kb.models import Chunk, SearchFilter
from kb.ports import VectorIndex

pytestmark = pytest.mark.contract

DIM = 8
OpenIndex = Callable[..., VectorIndex]


def _open_edge(path: Path, dimension: int = DIM, **kwargs: Any) -> VectorIndex:
    return EdgeVectorIndex(path / "edge", dimension, **kwargs)


def _open_qdrant_local(path: Path, dimension: int = DIM, **kwargs: Any) -> VectorIndex:
    return QdrantServerIndex.from_url(f"path:{path / 'qdrant'}", None, "kb", dimension, **kwargs)


@pytest.fixture(params=[_open_edge, _open_qdrant_local], ids=["edge", "qdrant-local"])
def open_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenIndex]:
    """Opens the adapter on tmp_path (again after close, to test persistence); closes what is still open."""
    opened: list[VectorIndex] = []

    def open_(**kwargs: Any) -> VectorIndex:
        index = request.param(tmp_path, **kwargs)
        opened.append(index)
        return index

    yield open_
    for index in opened:
        index.close()  # close() is idempotent


@pytest.fixture
def index(open_index: OpenIndex) -> VectorIndex:
    return open_index()


def unit(*components: tuple[int, float]) -> list[float]:
    v = np.zeros(DIM)
    for axis, value in components:
        v[axis] = value
    return list(v / np.linalg.norm(v))


def e(axis: int) -> list[float]:
    return unit((axis, 1.0))


def chunk(
    text: str,
    *,
    document_id: str = "doc-1",
    ordinal: int = 0,
    groups: list[str] | None = None,
    chunk_id: str | None = None,
    **fields: Any,
) -> Chunk:
    return Chunk(
        chunk_id=chunk_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{ordinal}")),
        document_id=document_id,
        ordinal=ordinal,
        text=text,
        filename=fields.pop("filename", f"{document_id}.pdf"),
        groups=groups or [],
        **fields,
    )


def texts(passages: list[Any]) -> list[str]:
    return [p.text for p in passages]


def test_dense_search_ranks_nearest_first_with_cosine_scores(index: VectorIndex) -> None:
    near, middle, far = chunk("near", ordinal=0), chunk("middle", ordinal=1), chunk("far", ordinal=2)
    index.upsert([far, near, middle], [e(2), e(0), unit((0, 1.0), (1, 1.0))])

    passages = index.search(e(0), "", limit=3, mode="dense")

    assert texts(passages) == ["near", "middle", "far"]
    assert passages[0].score == pytest.approx(1.0, abs=1e-5)
    assert passages[1].score == pytest.approx(2**-0.5, abs=1e-5)
    assert passages[2].score == pytest.approx(0.0, abs=1e-5)


def test_sparse_search_finds_a_rare_english_word(index: VectorIndex) -> None:
    index.upsert(
        [
            chunk("Quarterly revenue report for the sales team", ordinal=0),
            chunk("Holiday policy: employees accrue leave monthly", ordinal=1),
            chunk("Postmortem of the Zanzibar outage in the billing service", ordinal=2),
        ],
        [e(0), e(1), e(2)],
    )

    passages = index.search(e(0), "what happened with zanzibar?", limit=3, mode="sparse")

    assert texts(passages) == ["Postmortem of the Zanzibar outage in the billing service"]
    assert passages[0].score > 0


def test_sparse_search_finds_a_chinese_word_inside_a_sentence(index: VectorIndex) -> None:
    rules = "人民检察院行政诉讼监督规则规定了检察机关对行政诉讼活动的法律监督。"
    index.upsert(
        [
            chunk(rules, ordinal=0),
            chunk("公司年度财务报告显示营业收入稳定增长。", ordinal=1),
            chunk("员工休假制度适用于全体正式员工。", ordinal=2),
        ],
        [e(0), e(1), e(2)],
    )

    for query in ("行政诉讼", "检察院", "哪些规则适用于行政诉讼监督？"):
        passages = index.search(e(1), query, limit=3, mode="sparse")
        assert texts(passages)[:1] == [rules], query


def test_sparse_vector_is_computed_from_embed_text(index: VectorIndex) -> None:
    index.upsert(
        [
            chunk(
                "Accrual is monthly.",
                embed_text="Leave Policy\n\nAccrual is monthly.",
                section="Leave Policy",
            )
        ],
        [e(0)],
    )

    passages = index.search(e(0), "leave policy", limit=5, mode="sparse")

    assert texts(passages) == ["Accrual is monthly."]


def test_stopword_only_query_matches_nothing_sparse(index: VectorIndex) -> None:
    index.upsert([chunk("the report of the year")], [e(0)])

    assert index.search(e(0), "the of", limit=5, mode="sparse") == []
    assert texts(index.search(e(0), "the of", limit=5, mode="hybrid")) == ["the report of the year"]


def test_hybrid_rrf_fuses_dense_and_sparse_ranks(open_index: OpenIndex) -> None:
    index = open_index(fusion=HybridFusion("rrf", sparse_weight=2, sentence_weight=0))
    a = chunk("alpha notes", ordinal=0)
    b = chunk("zanzibar archive with a long list of many other unrelated words inside", ordinal=1)
    c = chunk("zanzibar zanzibar archive", ordinal=2)
    d = chunk("delta notes", ordinal=3)
    index.upsert([a, b, c, d], [e(0), e(2), unit((0, 1.0), (1, 0.3)), unit((0, 1.0), (3, 1.0))])

    assert texts(index.search(e(0), "zanzibar", limit=4, mode="dense")) == [a.text, c.text, d.text, b.text]
    assert texts(index.search(e(0), "zanzibar", limit=4, mode="sparse")) == [c.text, b.text]

    passages = index.search(e(0), "zanzibar", limit=3, mode="hybrid")

    # RRF with k=60 over 0-based ranks, the sparse list counted twice: C = 1/61 + 2/60
    # (dense 1, sparse 0), B = 1/63 + 2/61 (dense 3, sparse 1), A = 1/60 (dense 0), D = 1/62 (dense 2) is cut.
    assert texts(passages) == [c.text, b.text, a.text]
    assert [p.score for p in passages] == pytest.approx([1 / 61 + 2 / 60, 1 / 63 + 2 / 61, 1 / 60], rel=1e-4)


_DBSF_VECTORS = [e(0), e(2), unit((0, 1.0), (1, 0.3)), unit((0, 1.0), (3, 1.0)), unit((0, 0.1), (5, 1.0))]
# The long chunk has a sentence close to the query vector; the others are one sentence each.
_DBSF_SENTENCES = [[], [unit((0, 1.0), (2, 0.5)), e(6)], [], [], []]


def _dbsf_corpus(index: VectorIndex) -> list[Chunk]:
    chunks = [
        chunk("alpha notes", ordinal=0),
        chunk("zanzibar archive with a long list of many other unrelated words inside", ordinal=1),
        chunk("zanzibar zanzibar archive", ordinal=2),
        chunk("delta notes", ordinal=3),
        chunk("zanzibar", ordinal=4),
    ]
    index.upsert(chunks, _DBSF_VECTORS, _DBSF_SENTENCES)
    return chunks


def _normalised(scores: dict[str, float]) -> dict[str, float]:
    """Qdrant's DBSF normalisation of one list: mean +- 3 sample standard deviations mapped to 0..1."""
    values = np.array(list(scores.values()))
    mean, sigma = values.mean(), values.std(ddof=1)
    low, high = mean - 3 * sigma, mean + 3 * sigma
    return {text: float((score - low) / (high - low)) for text, score in scores.items()}


def test_hybrid_dbsf_is_the_default_and_sums_normalised_scores(index: VectorIndex) -> None:
    chunks = _dbsf_corpus(index)
    dense = {p.text: p.score for p in index.search(e(0), "zanzibar", limit=10, mode="dense")}
    sparse = {p.text: p.score for p in index.search(e(0), "zanzibar", limit=10, mode="sparse")}
    # The sentence side: every candidate of the other two, scored by its best vector (its own, or a sentence's).
    query = np.array(e(0))
    sentences = {
        c.text: max(float(query @ np.array(v)) for v in [own, *of_sentences])
        for c, own, of_sentences in zip(chunks, _DBSF_VECTORS, _DBSF_SENTENCES, strict=True)
    }

    # Each list counts as often as its weight (prefetched that many times): dense 1, sentences 2, BM25 3 by default.
    weights = HybridFusion()
    expected: dict[str, float] = {}
    for side, weight in ((dense, weights.dense_weight), (sentences, weights.sentence_weight),
                         (sparse, weights.sparse_weight)):  # fmt: skip
        for text, score in _normalised(side).items():
            expected[text] = expected.get(text, 0.0) + weight * score

    passages = index.search(e(0), "zanzibar", limit=5, mode="hybrid")

    assert {p.text for p in passages} == {c.text for c in chunks}
    # Sentence vectors are stored in float16: their scores are exact to about 1e-3.
    assert {p.text: p.score for p in passages} == pytest.approx(expected, abs=1e-2)
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)


def test_a_chunk_is_found_by_its_best_sentence(open_index: OpenIndex) -> None:
    index = open_index()
    # The same words for BM25; the chunk vector of `blurred` is far from the query, one of its sentences is on it.
    blurred = chunk("zanzibar archive. The harbour opened in 1883.", ordinal=0)
    plain = chunk("zanzibar archive. The harbour closed in 1883.", ordinal=1)
    index.upsert([blurred, plain], [e(1), unit((0, 0.8), (1, 0.6))], [[e(2), e(0)], []])

    assert texts(index.search(e(0), "zanzibar archive", limit=2, mode="dense")) == [plain.text, blurred.text]
    assert texts(index.search(e(0), "zanzibar archive", limit=2, mode="hybrid")) == [blurred.text, plain.text]

    index.close()
    without_sentence_side = open_index(fusion=HybridFusion(sentence_weight=0))
    hybrid = without_sentence_side.search(e(0), "zanzibar archive", limit=2, mode="hybrid")
    assert texts(hybrid) == [plain.text, blurred.text]


def test_sentence_vectors_must_match_the_chunks(index: VectorIndex) -> None:
    with pytest.raises(ValueError):
        index.upsert([chunk("a. b c d."), chunk("e", ordinal=1)], [e(0), e(1)], [[e(2)]])
    assert index.count() == 0


def test_an_index_from_before_sentence_vectors_opens_and_searches(tmp_path: Path) -> None:
    """Data written by an earlier version (dense and BM25 vectors only) stays searchable; the sentence side is off."""
    from qdrant_client import QdrantClient, models
    from qdrant_edge import EdgeShard

    (tmp_path / "edge").mkdir()
    EdgeShard.create(str(tmp_path / "edge"), _config(DIM, sentences=False)).close()
    client = QdrantClient(location=":memory:")
    client.create_collection(
        "kb",
        vectors_config={"dense": models.VectorParams(size=DIM, distance=models.Distance.COSINE)},
        sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    for index in (EdgeVectorIndex(tmp_path / "edge", DIM), QdrantServerIndex(client, "kb", DIM)):
        try:
            assert index.sentence_vectors is False
            index.upsert([chunk("zanzibar archive. The harbour.")], [e(1)], [[e(0)]])
            assert texts(index.search(e(0), "zanzibar", limit=2, mode="hybrid")) == ["zanzibar archive. The harbour."]
        finally:
            index.close()


def test_both_adapters_fuse_alike(tmp_path: Path) -> None:
    for method in ("dbsf", "rrf"):
        edge = EdgeVectorIndex(tmp_path / f"edge-{method}", DIM, fusion=HybridFusion(method))  # type: ignore[arg-type]
        local = QdrantServerIndex.from_url(":memory:", None, "kb", DIM, fusion=HybridFusion(method))  # type: ignore[arg-type]
        try:
            _dbsf_corpus(edge)
            _dbsf_corpus(local)
            found = [index.search(e(0), "zanzibar", limit=5, mode="hybrid") for index in (edge, local)]
        finally:
            edge.close()
            local.close()
        assert texts(found[0]) == texts(found[1]), method
        # Sentence vectors are stored in float16 (Edge) and may be kept in float32 (qdrant-client's local mode).
        assert [p.score for p in found[0]] == pytest.approx([p.score for p in found[1]], abs=2e-3), method


def test_fusion_weights_decide_between_the_sides(open_index: OpenIndex) -> None:
    dense_only = open_index(fusion=HybridFusion(dense_weight=1, sparse_weight=0, sentence_weight=0))
    chunks = _dbsf_corpus(dense_only)
    dense_order = texts(dense_only.search(e(0), "zanzibar", limit=5, mode="dense"))

    assert texts(dense_only.search(e(0), "zanzibar", limit=5, mode="hybrid")) == dense_order
    assert chunks[4].text not in dense_order[:3]  # the sparse side's best match, far from the query vector


def test_both_adapters_fuse_alike_with_weights(tmp_path: Path) -> None:
    for dense_weight, sparse_weight in ((1, 2), (3, 1)):
        fusion = HybridFusion(dense_weight=dense_weight, sparse_weight=sparse_weight, sentence_weight=1)
        edge = EdgeVectorIndex(tmp_path / f"edge-{dense_weight}-{sparse_weight}", DIM, fusion=fusion)
        local = QdrantServerIndex.from_url(":memory:", None, "kb", DIM, fusion=fusion)
        try:
            _dbsf_corpus(edge)
            _dbsf_corpus(local)
            found = [index.search(e(0), "zanzibar", limit=5, mode="hybrid") for index in (edge, local)]
        finally:
            edge.close()
            local.close()
        assert texts(found[0]) == texts(found[1]), (dense_weight, sparse_weight)
        assert [p.score for p in found[0]] == pytest.approx([p.score for p in found[1]], abs=2e-3)


def test_hybrid_respects_limit(index: VectorIndex) -> None:
    index.upsert([chunk(f"report number {i}", ordinal=i) for i in range(6)], [e(i % DIM) for i in range(6)])

    assert len(index.search(e(0), "report", limit=4, mode="hybrid")) == 4


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_group_filter_keeps_only_chunks_whose_groups_intersect(index: VectorIndex, mode: str) -> None:
    index.upsert(
        [
            chunk("handbook for hr", ordinal=0, groups=["hr"]),
            chunk("handbook for eng", ordinal=1, groups=["eng"]),
            chunk("handbook for hr and eng", ordinal=2, groups=["hr", "eng"]),
            chunk("handbook for nobody", ordinal=3),
        ],
        [e(0), e(1), e(2), e(3)],
    )

    def visible(groups: list[str]) -> set[str]:
        return set(texts(index.search(e(0), "handbook", limit=10, filter=SearchFilter(groups=groups), mode=mode)))

    assert visible(["eng"]) == {"handbook for eng", "handbook for hr and eng"}
    assert visible(["hr", "sales"]) == {"handbook for hr", "handbook for hr and eng"}
    assert visible(["sales"]) == set()
    assert visible([]) == set()


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_document_ids_filter(index: VectorIndex, mode: str) -> None:
    index.upsert(
        [
            chunk("policy one", document_id="d1", ordinal=0, groups=["hr"]),
            chunk("policy two", document_id="d1", ordinal=1, groups=["eng"]),
            chunk("policy three", document_id="d2", ordinal=0, groups=["hr"]),
            chunk("policy four", document_id="d3", ordinal=0, groups=["hr"]),
        ],
        [e(0), e(1), e(2), e(3)],
    )

    def found(search_filter: SearchFilter) -> set[str]:
        return set(texts(index.search(e(0), "policy", limit=10, filter=search_filter, mode=mode)))

    assert found(SearchFilter(document_ids=["d1"])) == {"policy one", "policy two"}
    assert found(SearchFilter(document_ids=["d1", "d3"])) == {"policy one", "policy two", "policy four"}
    assert found(SearchFilter(document_ids=["d1"], groups=["hr"])) == {"policy one"}
    assert found(SearchFilter(document_ids=[])) == set()


def test_count_with_and_without_filter(index: VectorIndex) -> None:
    assert index.count() == 0
    index.upsert(
        [
            chunk("a", document_id="d1", ordinal=0, groups=["hr"]),
            chunk("b", document_id="d1", ordinal=1, groups=["eng"]),
            chunk("c", document_id="d2", ordinal=0, groups=["hr", "eng"]),
        ],
        [e(0), e(1), e(2)],
    )

    assert index.count() == 3
    assert index.count(SearchFilter()) == 3
    assert index.count(SearchFilter(document_ids=["d1"])) == 2
    assert index.count(SearchFilter(groups=["eng"])) == 2
    assert index.count(SearchFilter(groups=["hr"], document_ids=["d2"])) == 1
    assert index.count(SearchFilter(groups=["sales"])) == 0
    assert index.count(SearchFilter(groups=[])) == 0


def test_delete_document_removes_only_that_document(index: VectorIndex) -> None:
    index.upsert(
        [
            chunk("keep me", document_id="keep", ordinal=0),
            chunk("drop me", document_id="drop", ordinal=0),
            chunk("drop me too", document_id="drop", ordinal=1),
        ],
        [e(0), e(1), e(2)],
    )

    index.delete_document("drop")

    assert index.count() == 1
    assert texts(index.search(e(1), "drop", limit=10, mode="hybrid")) == ["keep me"]
    index.delete_document("no-such-document")
    assert index.count() == 1


def test_upserting_the_same_chunk_id_overwrites(index: VectorIndex) -> None:
    index.upsert([chunk("old wording about walruses", groups=["hr"])], [e(0)])
    index.upsert([chunk("new wording about penguins", groups=["eng"])], [e(1)])

    assert index.count() == 1
    assert index.search(e(0), "walruses", limit=5, mode="sparse") == []
    [passage] = index.search(e(1), "penguins", limit=5, mode="hybrid")
    assert passage.text == "new wording about penguins"
    assert index.search(e(1), "", limit=5, mode="dense")[0].score == pytest.approx(1.0, abs=1e-5)
    assert index.count(SearchFilter(groups=["hr"])) == 0


def test_payload_round_trips(index: VectorIndex) -> None:
    original = chunk(
        "第三条 行政诉讼监督",
        document_id="doc-42",
        ordinal=7,
        filename="规则 2021.pdf",
        page=3,
        page_end=4,
        section="第一章 总则",
        groups=["legal"],
    )
    index.upsert([original], [e(0)])

    [passage] = index.search(e(0), "行政诉讼", limit=1, mode="hybrid")

    assert passage.chunk_id == original.chunk_id
    assert passage.document_id == "doc-42"
    assert passage.ordinal == 7
    assert passage.filename == "规则 2021.pdf"
    assert (passage.page, passage.page_end, passage.section) == (3, 4, "第一章 总则")
    assert passage.text == "第三条 行政诉讼监督"


def test_missing_optional_fields_round_trip_as_none(index: VectorIndex) -> None:
    index.upsert([chunk("plain text")], [e(0)])

    [passage] = index.search(e(0), "plain", limit=1, mode="dense")

    assert (passage.page, passage.page_end, passage.section) == (None, None, None)


def test_data_persists_after_close_and_reopen(open_index: OpenIndex) -> None:
    first = open_index()
    first.upsert(
        [
            chunk("durable zanzibar note", document_id="d1", groups=["hr"]),
            chunk("other", document_id="d2", ordinal=1),
        ],
        [e(0), e(1)],
    )
    first.delete_document("d2")
    first.close()

    reopened = open_index()

    assert reopened.count() == 1
    assert reopened.count(SearchFilter(groups=["hr"])) == 1
    assert texts(reopened.search(e(0), "zanzibar", limit=5, mode="sparse")) == ["durable zanzibar note"]
    assert reopened.search(e(0), "", limit=5, mode="dense")[0].score == pytest.approx(1.0, abs=1e-5)
    reopened.upsert([chunk("added after reopening", document_id="d3", ordinal=2)], [e(2)])
    assert reopened.count() == 2


def test_reopening_with_another_dimension_is_refused(open_index: OpenIndex) -> None:
    open_index().close()

    with pytest.raises(Exception, match="(?i)dimension|size"):
        open_index(dimension=DIM * 2)


def test_upsert_of_mismatched_lengths_is_refused(index: VectorIndex) -> None:
    with pytest.raises(ValueError):
        index.upsert([chunk("a"), chunk("b", ordinal=1)], [e(0)])
    index.upsert([], [])
    assert index.count() == 0


def test_searches_while_another_thread_upserts(index: VectorIndex) -> None:
    rng = np.random.default_rng(7)
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for batch in range(20):
                chunks = [chunk(f"batch {batch} item {i}", ordinal=batch * 10 + i) for i in range(10)]
                index.upsert(chunks, rng.normal(size=(10, DIM)).tolist())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    searches = 0
    while not done.is_set() or searches == 0:
        index.search(e(0), "batch item", limit=5, mode="hybrid")
        searches += 1
        time.sleep(0.001)  # Edge keeps the GIL while it searches: a tight loop would starve the writer
    writer.join()

    assert errors == []
    assert index.count() == 200


def test_both_adapters_store_identical_sparse_vectors(tmp_path: Path) -> None:
    edge = EdgeVectorIndex(tmp_path / "edge", DIM)
    local = QdrantServerIndex.from_url(":memory:", None, "kb", DIM)
    text = "Kubernetes 部署指南: the operators' running notes, 人民检察院行政诉讼监督规则"
    stored = chunk("shown text", embed_text=text)
    try:
        edge.upsert([stored], [e(0)])
        local.upsert([stored], [e(0)])

        [edge_record] = edge._shard.retrieve([stored.chunk_id], with_payload=False, with_vector=True)
        [local_record] = local._client.retrieve("kb", [stored.chunk_id], with_vectors=True)
    finally:
        edge.close()
        local.close()

    edge_sparse = edge_record.vector[SPARSE_VECTOR]
    local_sparse = local_record.vector[SPARSE_VECTOR]
    assert len(edge_sparse.indices) > 5
    assert dict(zip(edge_sparse.indices, edge_sparse.values, strict=True)) == pytest.approx(
        dict(zip(local_sparse.indices, local_sparse.values, strict=True))
    )
    # Words, word pairs and Han bigrams all in the one vector; the document's name (file name words) before the text.
    named = plan.sparse_text(stored, Bm25Terms().name_repeats)
    assert named != text and named.endswith(text)
    assert set(Bm25Encoder().document(named).indices) == set(edge_sparse.indices)
    assert set(word_pairs("running notes")) <= set(edge_sparse.indices)
    assert set(han_bigrams("检察")) <= set(edge_sparse.indices)


def _phrase_corpus(index: VectorIndex) -> list[Chunk]:
    chunks = [
        chunk("growth slowed while the interest rate rose", ordinal=0),
        chunk("the rate of growth slowed while interest rose", ordinal=1),
        chunk("议会 每五年 进行 一次 选举", ordinal=2),
        chunk("欧洲议会选举每五年举行一次", ordinal=3),
    ]
    index.upsert(chunks, [e(0), e(1), e(2), e(3)])
    return chunks


def test_adjacent_words_rank_a_phrase_match_first(open_index: OpenIndex) -> None:
    index = open_index()
    chunks = _phrase_corpus(index)
    # Same words in both English chunks; only the second has them in the query's order.
    assert texts(index.search(e(0), "rate of growth", limit=2, mode="sparse")) == [chunks[1].text, chunks[0].text]
    # The weights are query-side: the same index reopened with pair weight 0 scores words only, and the phrase
    # no longer decides.
    index.close()
    words_only = open_index(terms=Bm25Terms(pair_weight=0, han_bigram_weight=0))
    scores = {p.text: p.score for p in words_only.search(e(0), "rate of growth", limit=2, mode="sparse")}
    assert scores[chunks[0].text] >= scores[chunks[1].text]


def test_han_bigrams_match_a_compound_cut_differently(index: VectorIndex) -> None:
    chunks = _phrase_corpus(index)
    # jieba keeps 议会选举 whole in the question: only the characters' bigrams meet 议会 ... 选举 and 议会选举 here.
    found = texts(index.search(e(0), "议会选举多久举行一次？", limit=2, mode="sparse"))
    assert found[0] == chunks[3].text


def test_both_adapters_score_phrase_terms_alike(tmp_path: Path) -> None:
    edge = EdgeVectorIndex(tmp_path / "edge", DIM)
    local = QdrantServerIndex.from_url(":memory:", None, "kb", DIM)
    try:
        _phrase_corpus(edge)
        _phrase_corpus(local)
        for query in ("rate of growth", "议会选举多久举行一次？"):
            for mode in ("sparse", "hybrid"):
                # Ties (chunks neither side tells apart) come back in either order: compare scores, then texts.
                found = [
                    sorted(
                        ((p.text, round(p.score, 4)) for p in index.search(e(0), query, limit=4, mode=mode)),  # type: ignore[arg-type]
                        key=lambda found: (-found[1], found[0]),
                    )
                    for index in (edge, local)
                ]
                assert found[0] == found[1], (query, mode)
    finally:
        edge.close()
        local.close()


def test_a_staged_version_is_invisible_until_published_then_replaces_the_old(index: VectorIndex) -> None:
    old = chunk("old policy text", document_id="d", ordinal=0, version=1, chunk_id=str(uuid.uuid4()))
    new = [
        chunk("new policy text", document_id="d", ordinal=i, version=2, staged=True, chunk_id=str(uuid.uuid4()))
        for i in range(2)
    ]
    other = chunk("other document", document_id="o", ordinal=0, chunk_id=str(uuid.uuid4()))
    index.upsert([old, other], [e(0), e(1)])
    index.upsert(new, [e(0), e(0)])

    def visible() -> set[str]:
        return {p.chunk_id for p in index.search(e(0), "policy", 10, mode="hybrid")}

    assert visible() == {old.chunk_id, other.chunk_id}
    assert index.count(SearchFilter(document_ids=["d"])) == 1
    index.publish("d", 2)
    assert visible() == {c.chunk_id for c in new} | {other.chunk_id}
    assert index.count(SearchFilter(document_ids=["d"])) == 2
    assert index.count() == 3


def test_discard_staged_drops_only_unpublished_chunks(index: VectorIndex) -> None:
    live = chunk("live text", document_id="d", ordinal=0, version=1, chunk_id=str(uuid.uuid4()))
    staged = chunk("staged text", document_id="d", ordinal=0, version=2, staged=True, chunk_id=str(uuid.uuid4()))
    index.upsert([live, staged], [e(0), e(0)])
    index.discard_staged("d")
    index.publish("d", 2)  # nothing staged is left: publishing version 2 leaves the document empty
    assert index.count(SearchFilter(document_ids=["d"])) == 0


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_metadata_filter_matches_a_value_or_any_of_a_list(index: VectorIndex, mode: str) -> None:
    index.upsert(
        [
            chunk("policy for sales", document_id="d1", metadata={"department": "sales", "region": "emea"}),
            chunk("policy for legal", document_id="d2", metadata={"department": "legal", "region": "apac"}),
            chunk("policy without metadata", document_id="d3"),
        ],
        [e(0), e(1), e(2)],
    )

    def found(metadata: dict[str, Any], **more: Any) -> set[str]:
        search_filter = SearchFilter(metadata=metadata, **more)
        return set(texts(index.search(e(0), "policy", limit=10, filter=search_filter, mode=mode)))

    assert found({"department": "sales"}) == {"policy for sales"}
    assert found({"department": ["sales", "legal"]}) == {"policy for sales", "policy for legal"}
    assert found({"department": "legal", "region": "emea"}) == set()
    assert found({"department": []}) == set()
    assert found({"department": "sales"}, document_ids=["d2"]) == set()
    assert index.count(SearchFilter(metadata={"region": "apac"})) == 1
    with pytest.raises(ValueError):
        found({"bad key!": "x"})


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_created_range_filter(index: VectorIndex, mode: str) -> None:
    day = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    index.upsert(
        [
            chunk("report from february", document_id="feb", created_at=day - timedelta(days=20)),
            chunk("report from march", document_id="mar", created_at=day),
            chunk("report from april", document_id="apr", created_at=day + timedelta(days=31)),
            chunk("report of unknown date", document_id="undated"),
        ],
        [e(0), e(1), e(2), e(3)],
    )

    def found(**dates: Any) -> set[str]:
        search_filter = SearchFilter(**dates)
        return {p.document_id for p in index.search(e(0), "report", limit=10, filter=search_filter, mode=mode)}

    assert found(created_after=day) == {"mar", "apr"}
    assert found(created_before=day) == {"feb"}
    assert found(created_after=day - timedelta(days=1), created_before=day + timedelta(days=1)) == {"mar"}
    # A naive datetime is UTC; another zone is converted.
    assert found(created_after=datetime(2026, 3, 1, 12, 0)) == {"mar", "apr"}
    assert found(created_after=datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))) == {"mar", "apr"}
    assert index.count(SearchFilter(created_before=day, groups=[])) == 0


def test_neighbours_are_the_adjacent_live_chunks_of_the_same_document(index: VectorIndex) -> None:
    document = [chunk(f"part {i}", document_id="long", ordinal=i, groups=["hr"]) for i in range(6)]
    other = chunk("part 2 of another", document_id="other", ordinal=2, groups=["hr"])
    staged = chunk(
        "part 3 of the next version", document_id="long", ordinal=3, version=2, staged=True, chunk_id=str(uuid.uuid4())
    )
    index.upsert([*document, other, staged], [e(i % DIM) for i in range(8)])
    [hit] = index.search(e(3), "", limit=1, mode="dense", filter=SearchFilter(document_ids=["long"]))
    assert hit.ordinal == 3

    around = index.neighbours(hit, 1)

    assert texts(around) == ["part 2", "part 3", "part 4"]
    assert all(p.score == hit.score and p.document_id == "long" for p in around)
    assert texts(index.neighbours(hit, 0)) == ["part 3"]
    assert texts(index.neighbours(hit, 10)) == [f"part {i}" for i in range(6)]
    assert texts(index.neighbours(hit, 2, SearchFilter(groups=["hr"]))) == [f"part {i}" for i in range(1, 6)]
    assert index.neighbours(hit, 2, SearchFilter(groups=["eng"])) == []
    with pytest.raises(ValueError):
        index.neighbours(hit, -1)


def test_document_chunks_are_the_whole_live_document_in_order_inside_the_filter(index: VectorIndex) -> None:
    document = [chunk(f"part {i}", document_id="long", ordinal=i, groups=["hr"]) for i in range(7)]
    other = chunk("part 0 of another", document_id="other", ordinal=0, groups=["hr"])
    staged = chunk(
        "part 1 of the next version", document_id="long", ordinal=1, version=2, staged=True, chunk_id=str(uuid.uuid4())
    )
    # Stored out of order: the result is in document order all the same.
    index.upsert([*reversed(document), other, staged], [e(i % DIM) for i in range(9)])

    whole = index.document_chunks("long")

    assert texts(whole) == [f"part {i}" for i in range(7)]
    assert all(p.document_id == "long" and p.score == 0.0 for p in whole)
    assert texts(index.document_chunks("long", limit=3)) == ["part 0", "part 1", "part 2"]
    assert texts(index.document_chunks("long", SearchFilter(groups=["hr"]))) == [f"part {i}" for i in range(7)]
    assert index.document_chunks("long", SearchFilter(groups=["eng"])) == []
    assert index.document_chunks("long", SearchFilter(groups=[])) == []
    assert index.document_chunks("long", SearchFilter(document_ids=["other"])) == []
    assert index.document_chunks("missing") == []
    index.publish("long", 2)
    assert texts(index.document_chunks("long")) == ["part 1 of the next version"]
