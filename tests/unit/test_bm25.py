"""The shared BM25 encoder: Chinese word segmentation and fusion weights (both adapters use these)."""

from __future__ import annotations

import pytest

from kb.adapters.bm25 import DENSE_VECTOR, SPARSE_VECTOR, Bm25Encoder, HybridFusion, segment_chinese


def test_chinese_runs_are_cut_into_words_and_other_text_is_left_alone() -> None:
    assert segment_chinese("Kubernetes 部署指南 v2").split() == ["Kubernetes", "部署", "指南", "v2"]
    assert segment_chinese("the operators' notes") == "the operators' notes"


def test_indexed_text_also_holds_the_words_inside_long_words() -> None:
    indexed = segment_chinese("人民检察院", for_index=True).split()
    queried = segment_chinese("人民检察院").split()

    assert {"人民检察院", "检察院", "人民"} <= set(indexed)
    assert queried == ["人民检察院"]


def test_a_query_for_a_word_inside_a_compound_shares_a_term_with_the_document() -> None:
    encoder = Bm25Encoder()
    document = encoder.document("人民检察院行政诉讼监督规则")

    assert set(encoder.query("检察院").indices) <= set(document.indices)
    assert set(encoder.query("行政诉讼").indices) <= set(document.indices)
    assert not set(encoder.query("财务报告").indices) & set(document.indices)


def test_english_keeps_stemming_and_stopwords() -> None:
    encoder = Bm25Encoder()

    assert encoder.query("running").indices == encoder.query("runs").indices
    assert encoder.query("the of and").indices == []


def test_each_side_is_prefetched_as_often_as_its_weight() -> None:
    assert HybridFusion().prefetch_sides() == [DENSE_VECTOR, SPARSE_VECTOR, SPARSE_VECTOR]
    assert HybridFusion(dense_weight=2, sparse_weight=1).prefetch_sides() == [DENSE_VECTOR, DENSE_VECTOR, SPARSE_VECTOR]
    # A query without BM25 terms (stopwords only) falls back to the dense side alone.
    assert HybridFusion().prefetch_sides(has_sparse=False) == [DENSE_VECTOR]


@pytest.mark.parametrize("weights", [(-1, 1), (0, 0)])
def test_fusion_weights_are_checked(weights: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        HybridFusion(dense_weight=weights[0], sparse_weight=weights[1])
