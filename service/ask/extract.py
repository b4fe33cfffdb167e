"""Extract: quoted evidence, the sentences of the packed sources that best answer the question, each with its [n].

The answer when the model falls short (service.ask.answerability), and the evidence that decides whether the sources
answer the question at all. Onyx quotes what its model marks; here the sentences are chosen by the scores retrieval
ranks with (kb.index): the question's similarity to each sentence (the embedder, as the index's sentence side, only
where it knows the question's language) and BM25's lexical terms (stemmed words, word pairs, Han bigrams) weighted by
how rare they are among the candidate sentences, so the sentence that holds the question's specific terms wins over
one that repeats its topic. Both parts are absolute (a cosine, a weighted share of the question's terms), so the best
sentence's score says how well the sources answer, whatever else they hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ingest.chunk import sentences
from kb.index.bm25 import Bm25Encoder
from kb.languages import embedder_covers
from kb.models import Passage
from kb.ports import Embedder
from kb.text import CJK, HAN
from service.ask.verify import unstated_facts

# Weight of the dense similarity in a sentence's score where the embedder knows the language (the lexical share has
# the rest); measured by bench.extract (bench/RESULTS.md, "Extractive answers").
DENSE_WEIGHT = 0.5
# Subtracted from the similarity: it puts the fused score on the lexical score's scale, so that one threshold serves
# a question with the dense part and one without (a Chinese question, no embedder); it changes no sentence's rank
# (chosen where the thresholds that separate answerable from unanswerable questions coincide, bench.extract).
DENSE_BASELINE = 0.2
# The dense part is computed for the sentences with the most lexical evidence only, one embedder batch: whole
# documents in the prompt would otherwise embed hundreds of sentences on the CPU per answer. In bench.extract the best
# 12 gave the figures of all (within one question in 200); 16 leaves room.
DENSE_CANDIDATES = 16
# The evidence an answer needs: a best sentence scoring below this does not answer the question (bench.extract
# measures the scores of answerable questions against the same questions without their gold paragraph). Chosen on 200
# XQuAD questions that the benchmark does not use (python -m bench.answerability --seed 7), with the question's
# numbers and dates required in the quoted passages: the threshold whose worst margin over the targets (answer >= 90%
# of answerable questions, refuse >= 80% of unanswerable ones) is largest, 0.27 (94.0% / 87.3%; 0.30: 91.5% / 91.6%).
# bench/RESULTS.md, issue 14.
ANSWERABLE_SCORE = 0.27
# A further sentence is quoted only when it scores at least this share of the best one: it answers too, and is not
# just on the topic.
RELATIVE_SCORE = 0.7
# Share of a question term's weight that a sentence earns when the term is elsewhere in its passage, not in it.
CONTEXT_CREDIT = 0.3
# Shorter than this (words, a Han character counting as one), a sentence is a heading or a fragment, not an answer.
MIN_SENTENCE_WORDS = 4
# A sentence that opens with one of these leans on the one before it ("It was founded in 1066"): quoted with it.
_ANAPHOR = re.compile(r"^(?:it|its|he|his|she|her|they|their|this|these|that|those|there|such)\b|^[他她它其该此这那]",
                      re.IGNORECASE)  # fmt: skip
# Abbreviations that end a piece cut at a full stop without ending its sentence ("the U.S. Army", "St. Louis").
_ABBREVIATION = re.compile(r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|No|vs|etc|e\.g|i\.e|ca|c|U\.S|Inc|Co|Ltd))\.$")
_WORD = re.compile(r"[^\W\d_]+|\d+")
# Enough to hold every sentence of a chunk (ingest.chunk.sentences caps them for sentence vectors).
_ALL_SENTENCES = 1 << 16


@dataclass
class Quote:
    n: int  # 1-based number of the source in the prompt's order
    passage: Passage
    sentence: str  # the sentence as it stands in the passage (trimmed)
    start: int  # its offset in passage.text
    score: float


@dataclass
class Extraction:
    quotes: list[Quote]  # the chosen sentences, in document order (source order, then offset)
    score: float  # the best sentence's score: the evidence that the sources answer the question
    text: str  # the answer: each quoted sentence followed by its [n], joined in that order
    # The question's numbers and dates that the quoted sentences' passages do not state: they answer another question
    # ("How many ... by 1991?" against a passage with 2005's figure), however well their words match.
    unstated: list[str] = field(default_factory=list)


@dataclass
class _Candidate:
    n: int
    passage: Passage
    sentence: str
    start: int
    index: int  # its place among its passage's sentences


def split_sentences(text: str) -> list[tuple[int, str]]:
    """Each sentence of `text` with its offset, cut where ingestion cuts a chunk's sentences (ingest.chunk), a piece
    joined to the next where it ends in an abbreviation or inside brackets (CMRC's "某某（，；" before its
    "），...": a cut at the semicolon inside)."""
    found: list[tuple[int, str]] = []
    cursor = 0
    pieces = sentences(text, _ALL_SENTENCES) or ([text.strip()] if text.strip() else [])
    for piece in pieces:
        start = text.find(piece, cursor)
        if start < 0:
            continue
        end = start + len(piece)
        if found and (_ABBREVIATION.search(found[-1][1]) or _unclosed(found[-1][1])):
            first = found[-1][0]
            found[-1] = (first, text[first:end])
        else:
            found.append((start, piece))
        cursor = end
    return found


def _unclosed(text: str) -> bool:
    return sum(text.count(c) for c in "(（") > sum(text.count(c) for c in ")）")


def _words(text: str) -> int:
    return len(_WORD.findall(HAN.sub(" ", text))) + len(HAN.findall(text))


def _joined(quotes: Sequence[Quote]) -> str:
    """Each sentence with its [n] after it; CJK sentences run on without a space between them."""
    text = ""
    for previous, quote in zip([None, *quotes], quotes):
        cjk_end = bool(CJK.match(quote.sentence[-1]))
        if previous is not None and not (CJK.match(previous.sentence[-1]) and CJK.match(quote.sentence[0])):
            text += " "
        text += f"{quote.sentence}{'' if cjk_end else ' '}[{quote.n}]"
    return text


class Extractor:
    def __init__(self, embedder: Embedder | None, languages: list[str]) -> None:
        """`languages`: what the embedder understands (EmbedderSettings.languages; "*": any)."""
        self._embedder = embedder
        self._languages = list(languages)
        self._encoder = Bm25Encoder()

    def extract(self, question: str, sources: Sequence[Passage], max_sentences: int = 3) -> Extraction:
        candidates = self._candidates(sources)
        if not candidates or max_sentences < 1:
            return Extraction([], 0.0, "")
        scores = self._scores(question, candidates)
        best = max(range(len(candidates)), key=scores.__getitem__)
        if scores[best] <= 0:
            return Extraction([], 0.0, "")
        chosen = [best]
        lead = self._lead_in(candidates, best)
        if lead is not None and max_sentences > 1:
            chosen.append(lead)
        for i in sorted(range(len(candidates)), key=lambda i: -scores[i]):
            if len(chosen) >= max_sentences or scores[i] < RELATIVE_SCORE * scores[best]:
                break
            if i not in chosen:
                chosen.append(i)
        quotes = [
            Quote(c.n, c.passage, c.sentence, c.start, scores[i])
            for i, c in sorted(((i, candidates[i]) for i in chosen), key=lambda pair: (pair[1].n, pair[1].start))
        ]
        passages = list({id(q.passage): q.passage.text for q in quotes}.values())
        return Extraction(quotes, scores[best], _joined(quotes), unstated_facts(question, passages))

    def lead(self, sources: Sequence[Passage], max_sentences: int = 3) -> Extraction:
        """The opening sentences of the sources, in order: what a document the reader chose says first, for a question
        about it as a whole ("What does this document say?", "总结一下") that no sentence answers by its words."""
        candidates = sorted(self._candidates(sources), key=lambda c: (c.n, c.start))[: max(0, max_sentences)]
        quotes = [Quote(c.n, c.passage, c.sentence, c.start, 0.0) for c in candidates]
        return Extraction(quotes, 0.0, _joined(quotes))

    def answerable(self, extraction: Extraction) -> bool:
        """The quotes answer the question: the best sentence scores enough, and its passages state the question's
        numbers and dates."""
        return bool(extraction.quotes) and extraction.score >= ANSWERABLE_SCORE and not extraction.unstated

    def _candidates(self, sources: Sequence[Passage]) -> list[_Candidate]:
        """Every sentence long enough to answer, each text once (overlapping chunks repeat sentences)."""
        seen: set[str] = set()
        found: list[_Candidate] = []
        for n, passage in enumerate(sources, 1):
            for index, (start, sentence) in enumerate(split_sentences(passage.text)):
                if sentence in seen or _words(sentence) < MIN_SENTENCE_WORDS:
                    continue
                seen.add(sentence)
                found.append(_Candidate(n, passage, sentence, start, index))
        return found

    def _lead_in(self, candidates: list[_Candidate], best: int) -> int | None:
        """The sentence before the best one in its passage, when the best one leans on it."""
        chosen = candidates[best]
        if best == 0 or not _ANAPHOR.match(chosen.sentence):
            return None
        before = candidates[best - 1]
        return best - 1 if before.passage is chosen.passage and before.index == chosen.index - 1 else None

    def _scores(self, question: str, candidates: list[_Candidate]) -> list[float]:
        """Each candidate's score: the lexical one, or with the dense part where the embedder knows the language
        (a candidate left out of the dense part, with too little lexical evidence, scores 0)."""
        lexical = self._lexical(question, candidates)
        if self._embedder is None or not embedder_covers(self._languages, question):
            return lexical
        covered = {i for i, c in enumerate(candidates) if embedder_covers(self._languages, c.sentence)}
        dense_at = sorted(covered, key=lambda i: -lexical[i])[:DENSE_CANDIDATES]
        if not dense_at:
            return lexical
        query = self._embedder.embed_query(question)
        vectors = self._embedder.embed_documents([candidates[i].sentence for i in dense_at])
        scores = [0.0 if i in covered else lexical[i] for i in range(len(candidates))]
        for i, vector in zip(dense_at, vectors, strict=True):
            similarity = sum(a * b for a, b in zip(query, vector, strict=True))
            scores[i] = DENSE_WEIGHT * (similarity - DENSE_BASELINE) + (1 - DENSE_WEIGHT) * lexical[i]
        return scores

    def _lexical(self, question: str, candidates: list[_Candidate]) -> list[float]:
        """Each candidate's share of the question's BM25 terms, each term weighted by the query (words 1, pairs and
        Han bigrams less) and by its inverse frequency among the candidates (a term every sentence holds says
        little). A term found elsewhere in the sentence's passage counts CONTEXT_CREDIT of its weight: the answer
        sentence often names its subject only as "it" or not at all (Chinese drops it), the sentence before does."""
        query = self._encoder.query(question)
        wanted = dict(zip(query.indices, query.values, strict=True))
        if not wanted:
            return [0.0] * len(candidates)
        held = [set(self._encoder.document(c.sentence).indices) & wanted.keys() for c in candidates]
        in_source: dict[int, set[int]] = {}
        for c, terms in zip(candidates, held, strict=True):
            in_source.setdefault(c.n, set()).update(terms)
        count = len(candidates)
        frequency = {term: sum(term in terms for terms in held) for term in wanted}
        weight = {
            term: value * math.log(1 + (count - frequency[term] + 0.5) / (frequency[term] + 0.5))
            for term, value in wanted.items()
        }
        total = sum(weight.values())
        if total <= 0:
            return [0.0] * len(candidates)
        scores = []
        for c, terms in zip(candidates, held, strict=True):
            context = in_source[c.n] - terms
            scores.append((sum(weight[t] for t in terms) + CONTEXT_CREDIT * sum(weight[t] for t in context)) / total)
        return scores
