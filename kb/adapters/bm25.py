"""What both VectorIndex adapters share: vector names, fusion constant and the BM25 sparse encoder.

Both adapters encode with the same qdrant_edge.Bm25 configuration, so an index written by one is
searched the same way by the other and results stay congruent between embedded and server modes.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from qdrant_edge import Bm25, Bm25Config, Language, SparseVector, StopwordsSet, TokenizerType

if TYPE_CHECKING:
    from kb.settings import IndexSettings

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"
# A multivector (MaxSim) per chunk: the chunk's own dense vector and one per sentence of it (ingest.chunk.sentences).
# No HNSW graph: it only re-scores the dense and BM25 candidates of a hybrid query (HybridFusion).
SENTENCE_VECTOR = "sentences"
# The constant of the original RRF paper; set explicitly because qdrant-client's default (2) and
# Edge's (no default) differ.
RRF_K = 60

FusionMethod = Literal["rrf", "dbsf"]


@dataclass(frozen=True)
class HybridFusion:
    """How a hybrid query fuses its candidate lists, inside Qdrant on both adapters.

    Three lists: the dense side (chunk vectors), the BM25 side, and the sentence side: the union of the first two's
    candidates re-scored by their best-matching sentence (MaxSim over SENTENCE_VECTOR, the chunk vector included). A
    question usually paraphrases one sentence, which a 200-token chunk's single vector blurs: on COVID-QA the sentence
    side took hybrid recall@5 from .760 (below BM25 alone, .773) to .803, SciFact nDCG@10 .725 -> .737
    (bench/RESULTS.md). Re-scoring candidates only keeps its cost flat as the index grows (no scan of every
    sentence). An index without sentence vectors (built before they existed) fuses dense and BM25 alone.

    "dbsf" (default): distribution-based score fusion, each list's scores normalised by mean +- 3 sigma and
    summed, so a list whose best candidate stands out (a strong BM25 match) counts more than a flat list; it beat
    RRF on every English set here. "rrf": reciprocal rank fusion with k=60.
    Weights are whole numbers: a list of weight n is prefetched n times, which both Qdrant's DBSF and RRF sum
    (neither adapter offers DBSF weights, and Edge 0.9 applies RRF weights in another order than qdrant-client).
    Dense 1 : sentences 2 : BM25 3 by default: the English-only MiniLM is the weaker model on specialised text
    (COVID-QA: dense recall@1 .29 vs BM25 .56), and its sentence scores are the better half of it.
    A side is also left out per query (RetrievalService: dense and sentence sides off for a language the embedder
    lacks).
    """

    method: FusionMethod = "dbsf"
    candidates: int = 50  # per side
    dense_weight: int = 1
    sparse_weight: int = 3
    sentence_weight: int = 2

    def __post_init__(self) -> None:
        if self.method not in ("rrf", "dbsf"):
            raise ValueError(f"unknown fusion method {self.method!r}")
        if self.candidates < 1:
            raise ValueError("fusion candidates must be >= 1")
        weights = (self.dense_weight, self.sparse_weight, self.sentence_weight)
        if min(weights) < 0 or sum(weights) == 0:
            raise ValueError("fusion weights must be >= 0 and not all 0")

    @classmethod
    def from_settings(cls, index: IndexSettings) -> HybridFusion:
        return cls(index.fusion, index.candidates, index.dense_weight, index.sparse_weight, index.sentence_weight)

    def prefetch_sides(self, has_sparse: bool = True, has_sentences: bool = True) -> list[str]:
        """The lists to fuse, by vector name, each as often as its weight: the sparse side only if the query has
        terms, the sentence side only if the index holds sentence vectors."""
        return (
            [DENSE_VECTOR] * self.dense_weight
            + ([SENTENCE_VECTOR] * self.sentence_weight if has_sentences else [])
            + ([SPARSE_VECTOR] * self.sparse_weight if has_sparse else [])
        )


def sentence_vectors_per_chunk(
    chunks: Sequence[object],
    vectors: Sequence[Sequence[float]],
    sentence_vectors: Sequence[Sequence[Sequence[float]]] | None,
) -> list[Sequence[Sequence[float]] | None]:
    """The arguments of VectorIndex.upsert checked to agree in length, and each chunk's sentence vectors (None: not
    given)."""
    if len(chunks) != len(vectors):
        raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    if sentence_vectors is None:
        return [None] * len(chunks)
    if len(sentence_vectors) != len(chunks):
        raise ValueError(f"{len(chunks)} chunks but sentence vectors for {len(sentence_vectors)}")
    return list(sentence_vectors)


def sentence_multivector(
    vector: Sequence[float], sentence_vectors: Sequence[Sequence[float]] | None
) -> list[list[float]]:
    """A chunk's SENTENCE_VECTOR: its own vector first (so a chunk of one sentence needs no other), then its
    sentences'."""
    return [[float(x) for x in vector], *([float(x) for x in v] for v in sentence_vectors or ())]


# CJK Unified Ideographs (with extension A and the compatibility block): runs of them have no spaces to split on.
_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_jieba_lock = threading.Lock()
_jieba = None


def _segmenter():  # type: ignore[no-untyped-def]
    # jieba loads its dictionary (shipped in the package) in ~1 s: once per process, on first Chinese text.
    global _jieba
    with _jieba_lock:
        if _jieba is None:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _jieba = tokenizer
    return _jieba


def segment_chinese(text: str, *, for_index: bool = False) -> str:
    """`text` with every run of Han characters cut into jieba words separated by spaces; other text unchanged.

    `for_index`: also the shorter words inside long ones (jieba's search mode: 人民检察院 -> 人民, 检察, 察院, 检察院,
    人民检察院), so a query for 检察院 finds it; queries are cut plainly, or a query's sub-words would all count
    again. Dictionary words only, no HMM guesses for unknown ones: the HMM joins rare characters into words that
    questions phrase differently (xquad.zh recall@1 .913 with it, .920 without).
    """
    if not _HAN_RUN.search(text):
        return text
    tokenizer = _segmenter()

    def words(match: re.Match[str]) -> str:
        run = match.group()
        cut = tokenizer.cut_for_search(run, HMM=False) if for_index else tokenizer.cut(run, HMM=False)
        return " " + " ".join(cut) + " "

    return _HAN_RUN.sub(words, text)


def bm25_config(*, stopwords: bool = True) -> Bm25Config:
    # The word tokenizer splits on spaces and punctuation; Chinese arrives already cut into words by jieba
    # (segment_chinese), so both adapters see the same tokens. Qdrant's multilingual tokenizer did its own
    # Chinese segmentation, but its English tokens were weaker (xquad.en hybrid recall@1 .940 vs .950 here,
    # TAT-QA .470 vs .487). English keeps the snowball stemmer; stopwords cover both languages (的, 了, the, of).
    # k and b stay at the BM25 defaults (1.2, 0.75): k 0.9-1.5 and b 0.4-0.75 moved no set by more than +-0.02.
    return Bm25Config(
        tokenizer=TokenizerType.Word,
        language="english",
        stopwords=StopwordsSet(languages={Language.English, Language.Chinese} if stopwords else set()),
    )


@dataclass(frozen=True)
class Bm25Terms:
    """What the BM25 sparse vector holds beside single words, and how much a query weighs each kind.

    - Word pairs: each two adjacent words in order (jieba words for Chinese, stemmed words for English), stopwords
      kept in the sequence (a pair of two stopwords is dropped), so "rate of growth" and 增长 速度 match as phrases.
    - Han bigrams: each two adjacent Han characters, whatever jieba made of them, for questions that cut a name
      or compound differently from the document (议会选举 vs 议会 ... 选举).

    Both live in the one "bm25" sparse vector, hashed into their own term ids, so Qdrant's IDF modifier weighs
    them like words and a query sums words + pair_weight x pairs + han_bigram_weight x bigrams: a linear
    combination (as in sequential dependence models) rather than another fused list, which did worse here
    (bench/RESULTS.md). Documents always carry all terms; the weights are query-side only (0 turns a kind off)
    and can change without re-indexing. 0.25 each: xquad.zh recall@1 .924 -> .940 and recall@5 .986 -> .991 (all
    1190 questions), TAT-QA hybrid recall@1 .510 -> .530, SciFact nDCG@10 .718 -> .725; pairs at 0.5 did a little
    better on COVID-QA and TAT-QA but worse on SciFact and xquad.zh.
    """

    pair_weight: float = 0.25
    han_bigram_weight: float = 0.25

    def __post_init__(self) -> None:
        if self.pair_weight < 0 or self.han_bigram_weight < 0:
            raise ValueError("BM25 term weights must be >= 0")

    @classmethod
    def from_settings(cls, index: IndexSettings) -> Bm25Terms:
        return cls(index.bm25_pair_weight, index.bm25_han_bigram_weight)


# Letters and digits of any script: the runs Qdrant's word tokenizer keeps (punctuation and spaces split).
_WORD_RUN = re.compile(r"[^\W_]+")
_PLAIN_MODEL = Bm25(bm25_config(stopwords=False))
_STOPWORD_MODEL = Bm25(bm25_config())


@lru_cache(maxsize=200_000)
def _word_term(word: str) -> tuple[int, bool] | None:
    """The term id Qdrant gives `word` (lowercased, stemmed) and whether it is a stopword; None if it has none."""
    ids = _PLAIN_MODEL.embed_query(word).indices
    if not ids:
        return None
    return ids[0], not _STOPWORD_MODEL.embed_query(word).indices


def _term_id(kind: str, key: str) -> int:
    # Term ids of pairs and bigrams live in the same 32-bit space as Qdrant's word ids; the kind prefix keeps a
    # pair from meeting a word with the same characters (a bigram 人民 is not the word 人民).
    return zlib.crc32(f"{kind}\0{key}".encode())


def word_pairs(segmented: str) -> list[int]:
    """Term ids of each two adjacent words of `segmented` (Chinese already cut by jieba), unless both are
    stopwords."""
    terms = [t for word in _WORD_RUN.findall(segmented) if (t := _word_term(word)) is not None]
    return [
        _term_id("pair", f"{a}:{b}")
        for (a, a_stop), (b, b_stop) in zip(terms, terms[1:])
        if not (a_stop and b_stop) and a != b
    ]


def han_bigrams(text: str) -> list[int]:
    """Term ids of each two adjacent Han characters of `text` (a lone character counts as itself)."""
    grams: list[int] = []
    for run in _HAN_RUN.findall(text):
        if len(run) == 1:
            grams.append(_term_id("han", run))
        grams.extend(_term_id("han", run[i : i + 2]) for i in range(len(run) - 1))
    return grams


class Bm25Encoder:
    """Term-frequency vectors for documents (words, word pairs, Han bigrams), query weights for queries (words 1,
    the others as `terms` says); the index applies IDF."""

    def __init__(self, terms: Bm25Terms | None = None) -> None:
        self._config = bm25_config()
        self._model = Bm25(self._config)
        self.terms = terms or Bm25Terms()

    def _saturated(self, counts: Counter[int], length: int) -> dict[int, float]:
        # The BM25 term-frequency part with the word model's k, b and average length, as Bm25 computes it for words.
        k, b, average = self._config.k, self._config.b, self._config.avg_len
        norm = k * (1 - b + b * length / average)
        return {term: count * (k + 1) / (count + norm) for term, count in counts.items()}

    def document(self, text: str) -> SparseVector:
        words = self._model.embed_document(segment_chinese(text, for_index=True))
        weights = dict(zip(words.indices, words.values, strict=True))
        pairs = word_pairs(segment_chinese(text))
        bigrams = han_bigrams(text)
        for extra, length in ((pairs, len(pairs) + 1), (bigrams, len(bigrams))):
            for term, value in self._saturated(Counter(extra), length).items():
                weights[term] = weights.get(term, 0.0) + value
        return _sparse(weights)

    def query(self, text: str) -> SparseVector:
        segmented = segment_chinese(text)
        words = self._model.embed_query(segmented)
        weights = dict(zip(words.indices, words.values, strict=True))
        if not weights:
            return words  # stopwords only: no terms at all, pairs and bigrams included
        for extra, weight in ((word_pairs(segmented), self.terms.pair_weight),
                              (han_bigrams(text), self.terms.han_bigram_weight)):
            if weight > 0:
                for term in extra:
                    weights.setdefault(term, weight)
        return _sparse(weights)


def _sparse(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[float(weights[i]) for i in indices])
