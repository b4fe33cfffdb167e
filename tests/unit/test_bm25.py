"""The shared BM25 encoder, Chinese word segmentation and fusion weights (both adapters use these)."""

from __future__ import annotations

import pytest

from kb.index.bm25 import Bm25Encoder, Bm25Terms, han_bigrams, word_pairs
from kb.index.fusion import HybridFusion
from kb.index.schema import DENSE_VECTOR, SENTENCE_VECTOR, SPARSE_VECTOR
from kb.index.segment import segment_chinese


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
    dense, sentences, sparse = DENSE_VECTOR, SENTENCE_VECTOR, SPARSE_VECTOR
    assert HybridFusion().prefetch_sides() == [dense, sentences, sentences, sparse, sparse, sparse]
    assert HybridFusion(dense_weight=2, sparse_weight=1, sentence_weight=0).prefetch_sides() == [dense, dense, sparse]
    # A query without BM25 terms (stopwords only) falls back to the dense and sentence sides.
    assert HybridFusion().prefetch_sides(has_sparse=False) == [dense, sentences, sentences]
    # An index written before sentence vectors existed fuses the other two.
    assert HybridFusion().prefetch_sides(has_sentences=False) == [dense, sparse, sparse, sparse]


@pytest.mark.parametrize("weights", [(-1, 1, 1), (1, 1, -1), (0, 0, 0)])
def test_fusion_weights_are_checked(weights: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        HybridFusion(dense_weight=weights[0], sparse_weight=weights[1], sentence_weight=weights[2])


def test_word_pairs_keep_order_and_skip_pairs_of_stopwords() -> None:
    assert word_pairs("rate of growth") != word_pairs("growth of rate")
    # "rate of" and "of growth" count (one stopword), "of the" does not (two).
    assert len(word_pairs("rate of growth")) == 2
    assert word_pairs("of the") == []
    # Stemmed like the words: a phrase matches its inflections.
    assert word_pairs("growth rates") == word_pairs("growth rate")


def test_han_bigrams_cover_every_adjacent_pair_of_characters() -> None:
    assert len(han_bigrams("议会选举")) == 3
    assert set(han_bigrams("议会 选举")) < set(han_bigrams("议会选举"))
    assert han_bigrams("English only") == []


def test_query_weights_pairs_and_bigrams_below_words() -> None:
    encoder = Bm25Encoder(Bm25Terms(pair_weight=0.5, han_bigram_weight=0.25))
    query = dict(zip(*(lambda v: (v.indices, v.values))(encoder.query("rate of growth 议会选举"))))
    words = Bm25Encoder(Bm25Terms(pair_weight=0, han_bigram_weight=0)).query("rate of growth 议会选举")

    assert all(query[i] == 1.0 for i in words.indices)
    assert sorted(v for i, v in query.items() if i not in words.indices) == [0.25] * 3 + [0.5] * 3
    # A query of stopwords has no terms at all, so the sparse side stays out of the search.
    assert encoder.query("the of 的").indices == []


def test_document_terms_do_not_depend_on_query_weights() -> None:
    text = "the rate of growth, 议会选举"
    assert Bm25Encoder(Bm25Terms(0, 0)).document(text).indices == Bm25Encoder().document(text).indices


def test_terms_come_from_index_settings() -> None:
    from kb.settings import IndexSettings

    assert Bm25Terms.from_settings(IndexSettings(bm25_pair_weight=0.3, bm25_han_bigram_weight=0)) == Bm25Terms(0.3, 0)
    with pytest.raises(ValueError):
        Bm25Terms(pair_weight=-1)
