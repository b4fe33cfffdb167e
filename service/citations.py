"""[n] markers in an answer -> citations of the numbered sources the model was given."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from kb.models import Citation, Passage
from service.lexical import content_terms

# [1], [1, 2], [1][3], 【2】, [source 1]
_MARKER = re.compile(r"[\[【]\s*(?:sources?\s*)?(\d+(?:\s*[,，、]\s*\d+)*)\s*[\]】]", re.IGNORECASE)
_SENTENCE = re.compile(r"[^。！？.!?\n]+[。！？.!?]?")
SNIPPET_CHARS = 300


@dataclass
class ParsedCitations:
    cited: list[int]  # valid source numbers in order of first use
    invalid: list[int]  # numbers that refer to no source given to the model


def parse_markers(answer: str, source_count: int) -> ParsedCitations:
    cited: list[int] = []
    invalid: list[int] = []
    for match in _MARKER.finditer(answer):
        for raw in re.split(r"[,，、]", match.group(1)):
            n = int(raw)
            target = cited if 1 <= n <= source_count else invalid
            if n not in target:
                target.append(n)
    return ParsedCitations(cited, invalid)


def strip_invalid_markers(answer: str, source_count: int) -> str:
    def keep_valid(match: re.Match[str]) -> str:
        numbers = [int(r) for r in re.split(r"[,，、]", match.group(1)) if 1 <= int(r) <= source_count]
        return "[" + ", ".join(str(n) for n in numbers) + "]" if numbers else ""

    return re.sub(r"\s+([.。,，])", r"\1", _MARKER.sub(keep_valid, answer)).strip()


def best_snippet(passage_text: str, answer: str) -> tuple[str, int]:
    """The sentence of the passage that shares most content terms with the answer, and its offset."""
    answer_terms = content_terms(answer)
    best, best_offset, best_score = "", 0, 0
    for match in _SENTENCE.finditer(passage_text):
        sentence = match.group(0)
        score = len(content_terms(sentence) & answer_terms)
        if score > best_score and sentence.strip():
            best, best_score = sentence.strip(), score
            best_offset = match.start() + (len(sentence) - len(sentence.lstrip()))
    if best_score == 0:
        return passage_text.strip()[:SNIPPET_CHARS], 0
    return best[:SNIPPET_CHARS], best_offset


def supporting_source(answer: str, passages: Sequence[Passage]) -> int | None:
    """1-based number of the passage that shares most content terms with the answer, if any does."""
    answer_terms = content_terms(re.sub(_MARKER, " ", answer))
    scores = [len(answer_terms & content_terms(p.text)) for p in passages]
    if not scores or max(scores) == 0:
        return None
    return scores.index(max(scores)) + 1


def build_citations(answer: str, passages: Sequence[Passage]) -> list[Citation]:
    parsed = parse_markers(answer, len(passages))
    numbers = parsed.cited
    if not numbers:
        # The model answered without markers: cite the source the answer was evidently drawn from.
        fallback = supporting_source(answer, passages)
        numbers = [fallback] if fallback else []
    citations = []
    for n in numbers:
        passage = passages[n - 1]
        snippet, offset = best_snippet(passage.text, answer)
        citations.append(
            Citation(
                n=n,
                document_id=passage.document_id,
                filename=passage.filename,
                page=passage.page_at(offset),
                section=passage.section,
                snippet=snippet,
                chunk_id=passage.chunk_id,
                score=passage.score,
            )
        )
    return citations
