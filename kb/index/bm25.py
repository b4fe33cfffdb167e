"""The BM25 sparse encoder both adapters share: words, adjacent word pairs and Han bigrams in one sparse vector.

Both adapters encode with the same qdrant_edge.Bm25 configuration, so an index written by one is
searched the same way by the other and results stay congruent between embedded and server modes.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from qdrant_edge import Bm25, Bm25Config, Language, SparseVector, StopwordsSet, TokenizerType

from kb.index.segment import segment_chinese
from kb.text import HAN_RUN

if TYPE_CHECKING:
    from kb.settings import IndexSettings


def bm25_config(*, stopwords: bool = True) -> Bm25Config:
    # The word tokenizer splits on spaces and punctuation; Chinese arrives already cut into words by jieba
    # (segment_chinese), so both adapters see the same tokens. Qdrant's multilingual tokenizer did its own
    # Chinese segmentation, but its English tokens were weaker. English keeps the snowball stemmer; stopwords cover
    # both languages (的, 了, the, of). k and b stay at the BM25 defaults (1.2, 0.75): no other setting was better on
    # every set (bench/RESULTS.md, "Earlier experiments").
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
    combination (as in sequential dependence models) rather than another fused list, which did worse here.
    Documents always carry all terms; the weights are query-side only (0 turns a kind off) and can change without
    re-indexing. 0.25 each: the best balance over the sets; pairs at 0.5 suit some sets and hurt others
    (bench/RESULTS.md, "BM25 phrase terms").
    """

    pair_weight: float = 0.25
    han_bigram_weight: float = 0.25
    # Document-side, unlike the weights: how often a chunk's sparse text repeats its document's name
    # (kb.index.plan.sparse_text; IndexSettings.name_weight).
    name_repeats: int = 2

    def __post_init__(self) -> None:
        if self.pair_weight < 0 or self.han_bigram_weight < 0 or self.name_repeats < 0:
            raise ValueError("BM25 term weights must be >= 0")

    @classmethod
    def from_settings(cls, index: IndexSettings) -> Bm25Terms:
        return cls(index.bm25_pair_weight, index.bm25_han_bigram_weight, index.name_weight)


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
    for run in HAN_RUN.findall(text):
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
        for extra, weight in (
            (word_pairs(segmented), self.terms.pair_weight),
            (han_bigrams(text), self.terms.han_bigram_weight),
        ):
            if weight > 0:
                for term in extra:
                    weights.setdefault(term, weight)
        return _sparse(weights)


def _sparse(weights: dict[int, float]) -> SparseVector:
    indices = sorted(weights)
    return SparseVector(indices=indices, values=[float(weights[i]) for i in indices])
