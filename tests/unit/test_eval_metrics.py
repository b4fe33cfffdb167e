"""Retrieval metrics on hand-made rankings, and the QA set loaders on tiny files."""

import json
import math
from pathlib import Path

import pytest

from evaluation.datasets import detect_format, load_beir, load_squad, load_tatqa, locate, markdown_table, sample
from evaluation.metrics import hit_at, ndcg, percentile, reciprocal_rank, summarize

pytestmark = pytest.mark.unit


def test_hit_at_k_counts_a_question_once_whatever_the_number_of_golds() -> None:
    ranked = ["a", "b", "c", "d", "e", "f"]
    assert hit_at(ranked, {"a"}, 1) == 1.0
    assert hit_at(ranked, {"c"}, 1) == 0.0
    assert hit_at(ranked, {"c"}, 5) == 1.0
    assert hit_at(ranked, {"f"}, 5) == 0.0
    assert hit_at(ranked, {"b", "c", "x"}, 5) == 1.0
    assert hit_at(ranked, {"x"}, 10) == 0.0
    assert hit_at([], {"a"}, 10) == 0.0


def test_reciprocal_rank_is_that_of_the_first_gold_within_k() -> None:
    ranked = [str(i) for i in range(1, 13)]
    assert reciprocal_rank(ranked, {"1"}) == 1.0
    assert reciprocal_rank(ranked, {"4", "2"}) == 0.5
    assert reciprocal_rank(ranked, {"10"}) == 0.1
    assert reciprocal_rank(ranked, {"11"}) == 0.0  # beyond MRR@10
    assert reciprocal_rank(ranked, {"x"}) == 0.0


def test_ndcg_with_binary_relevance() -> None:
    assert ndcg(["g", "a", "b"], {"g"}) == 1.0
    assert ndcg(["a", "g"], {"g"}) == pytest.approx(1 / math.log2(3))
    assert ndcg(["a", "b", "c"], {"g"}) == 0.0
    # Two golds at ranks 1 and 3: (1 + 1/log2 4) / (1 + 1/log2 3).
    assert ndcg(["g1", "a", "g2"], {"g1", "g2"}) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # One of two golds found at rank 1: the ideal ranking holds both.
    assert ndcg(["g1", "a"], {"g1", "g2"}) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # Gold at rank 11 does not count in nDCG@10.
    assert ndcg([*"0123456789", "g"], {"g"}) == 0.0
    # More golds than k: the ideal DCG stops at k.
    golds = {str(i) for i in range(20)}
    assert ndcg([str(i) for i in range(10)], golds) == pytest.approx(1.0)


def test_summarize_averages_over_questions() -> None:
    rankings = [
        (["g", "a", "b"], {"g"}),  # rank 1
        (["a", "b", "g"], {"g"}),  # rank 3
        (["a", "b", "c", "d", "e", "g"], {"g"}),  # rank 6
        (["a", "b"], {"g"}),  # missed
    ]
    metrics = summarize(rankings)
    assert metrics["recall@1"] == 0.25
    assert metrics["recall@5"] == 0.5
    assert metrics["recall@10"] == 0.75
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 6 + 0) / 4)
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(7) + 0) / 4)
    assert summarize([])["recall@10"] == 0.0


def test_percentile_interpolates_linearly() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([7.0], 95) == 7.0


def test_sample_spreads_evenly_and_deterministically() -> None:
    questions = list(range(10))
    assert sample(questions, 5) == [0, 2, 4, 6, 8]  # type: ignore[arg-type]
    assert sample(questions, None) == questions  # type: ignore[arg-type]
    assert sample(questions, 50) == questions  # type: ignore[arg-type]


def test_locate_finds_rejoined_and_overlapping_pieces() -> None:
    source = "First line.\nSecond  line here.\n\n第一句。第二句。"
    pieces = ["First line. Second line", "line here.\n第一句。", "第一句。第二句。"]
    spans = locate(source, pieces)
    assert [source[a:b] for a, b in spans] == ["First line.\nSecond  line", "line here.\n\n第一句。", "第一句。第二句。"]


def test_squad_units_are_paragraphs_and_unanswerables_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"version": "1", "data": [{"title": "t", "paragraphs": [
        {"context": "Alpha paragraph.", "qas": [{"id": "q1", "question": "alpha?",
                                                 "answers": [{"text": "Alpha", "answer_start": 0}]}]},
        {"context": "Beta paragraph.", "qas": [{"id": "q2", "question": "none?", "answers": [],
                                                "is_impossible": True}]},
    ]}]}))  # fmt: skip
    assert detect_format(path) == "squad"
    qa = load_squad(path)
    assert [u.text for u in qa.units] == ["Alpha paragraph.", "Beta paragraph."]
    assert [q.gold for q in qa.questions] == [frozenset({qa.units[0].unit_id})]
    assert qa.skipped == 1 and not qa.chunked


def test_tatqa_gold_is_the_relevant_paragraphs_and_the_table(tmp_path: Path) -> None:
    path = tmp_path / "tatqa.json"
    path.write_text(json.dumps([{
        "table": {"uid": "t1", "table": [["", "2019"], ["Sales", "1|2"]]},
        "paragraphs": [{"uid": "p1", "order": 1, "text": "One."}, {"uid": "p2", "order": 2, "text": "Two."}],
        "questions": [
            {"uid": "a", "question": "text?", "answer_from": "text", "rel_paragraphs": ["2"]},
            {"uid": "b", "question": "both?", "answer_from": "table-text", "rel_paragraphs": ["1"]},
            {"uid": "c", "question": "table?", "answer_from": "table", "rel_paragraphs": []},
            {"uid": "d", "question": "nothing?", "answer_from": "text", "rel_paragraphs": []},
        ],
    }]))  # fmt: skip
    assert detect_format(path) == "tatqa"
    qa = load_tatqa(path)
    table, one, two = (u.unit_id for u in qa.units)
    assert qa.units[0].text == "|  | 2019 |\n| --- | --- |\n| Sales | 1\\|2 |"
    assert [q.gold for q in qa.questions] == [frozenset({two}), frozenset({one, table}), frozenset({table})]
    assert qa.skipped == 1
    assert markdown_table([["a"], ["b", "c"]]) == "| a |  |\n| --- | --- |\n| b | c |"


def test_beir_questions_are_the_judged_queries_of_the_split(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "d1", "title": "T1", "text": "one"}\n{"_id": "d2", "title": "", "text": "two"}\n'
    )
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td1\t1\nq2\td2\t1\n")
    assert detect_format(tmp_path) == "beir"
    qa = load_beir(tmp_path)
    assert [u.text for u in qa.units] == ["T1\none", "two"]
    assert [(q.question_id, len(q.gold)) for q in qa.questions] == [("q2", 2)]


class _WordTokens:
    def token_spans(self, text: str) -> list[tuple[int, int]]:
        import re

        return [m.span() for m in re.finditer(r"\S+", text)]


def test_long_units_are_indexed_as_chunks_with_the_title_and_ranked_once_at_their_best_chunk() -> None:
    from evaluation.datasets import QASet, Question, Unit
    from evaluation.entries import index_entries
    from evaluation.run import run_questions
    from ingest.chunk import Chunker
    from kb.models import Passage

    body = " ".join(f"word{i}." for i in range(60))
    units = [Unit("u-long", "d1", "A Title\n" + body), Unit("u-short", "d2", "short text")]
    qa = QASet("set", "beir", units, [Question("q", "what", frozenset({"u-long"}))])

    entries, split = index_entries(qa, Chunker(_WordTokens(), 20, 4), {"u-long"})

    assert split == 1
    long_entries = [e for e in entries if e.unit_id == "u-long"]
    assert len(long_entries) >= 3 and all(e.embed_text.startswith("A Title\n") for e in long_entries)
    assert [e.entry_id for e in entries if e.unit_id == "u-short"] == ["u-short"]
    assert index_entries(qa, None, {"u-long"})[1] == 0

    class Index:
        def search(self, vector, text, limit, filter=None, mode="hybrid"):  # type: ignore[no-untyped-def]
            order = [long_entries[1], entries[-1], long_entries[0], long_entries[2]]
            return [Passage(e.entry_id, e.document_id, "set", e.text, 1.0) for e in order][:limit]

    class Embedder:
        def embed_query(self, text: str) -> list[float]:
            return [1.0]

    unit_of = {e.entry_id: e.unit_id for e in entries}
    [result] = run_questions(qa.questions, Embedder(), Index(), ["hybrid"], 10, unit_of=unit_of)  # type: ignore[arg-type]

    assert result.rankings == [(["u-long", "u-short"], frozenset({"u-long"}))]
