"""[n] markers in an answer -> citations of the numbered sources the model was given."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kb.models import Citation, Passage
from kb.ports import DocumentStore
from service.ask.verify import MARKER as _MARKER
from service.ask.verify import MIN_SUPPORT_MARKED, ClaimCheck, check_claim, makes_claim
from service.search.lexical import content_terms

_SENTENCE = re.compile(r"[^。！？.!?\n]+[。！？.!?]?")
# The end of an answer sentence, with any markers right after it ("... stored. [1]").
_SENTENCE_END = re.compile(r"(?:[.!?]+(?=\s|$)|[。！？]+|\n)(?:[ \t]*[\[【][^\]】\n]{0,20}[\]】])*")
SNIPPET_CHARS = 300
# Share of a sentence's content terms that must occur in a source for the service to cite that source itself; for a
# citation to count as supported, MIN_SUPPORT_MARKED (service/ask/verify.py) and every fact of the sentence.
MIN_SUPPORT = 0.5


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


def _support(sentence_terms: set[str], passage: Passage) -> float:
    if not sentence_terms:
        return 0.0
    return len(sentence_terms & content_terms(passage.text)) / len(sentence_terms)


@dataclass
class AnnotatedAnswer:
    text: str  # the answer with a [n] after every sentence that a source supports
    citations: list[Citation]
    claims: list[ClaimCheck] = field(default_factory=list)  # one per sentence that states something, spans in `text`
    # Every claim supported by the sources it cites (and at least one claim): nothing in the answer is unchecked.
    grounded: bool = False


def cite_sentence(
    sentence: str, passages: Sequence[Passage], min_support: float = MIN_SUPPORT
) -> tuple[str, list[int], int | None]:
    """One sentence of an answer as `annotate` leaves it (before invalid markers are dropped): the model's valid
    markers, or else, where one source evidently supports it, that source's number before its final mark. Returns
    (the sentence, the numbers it cites, the number inferred or None)."""
    numbers = parse_markers(sentence, len(passages)).cited
    if numbers:
        return sentence, numbers, None
    scores = [_support(content_terms(_MARKER.sub(" ", sentence)), p) for p in passages]
    if not scores or max(scores) < min_support:
        return sentence, [], None
    n = scores.index(max(scores)) + 1
    body = sentence.rstrip()
    trailing = sentence[len(body) :]
    cut = len(body.rstrip("。！？.!?"))
    return f"{body[:cut]} [{n}]{body[cut:]}{trailing}", [n], n


# What may still follow a sentence's end and belong to it: markers after its mark ("stored. [1]"), begun or whole.
_MAY_CONTINUE_END = re.compile(r"(?:[ \t]*[\[【][^\]】\n]{0,20}[\]】])*[ \t]*(?:[\[【][^\]】\n]{0,20})?")
# The end of an unfinished sentence that its last words may still change: a begun marker and what follows it,
# trailing marks and spaces (a marker the service adds goes before the final mark).
_UNSETTLED_TAIL = re.compile(r"(?:[\[【].*|[\s。！？.!?,，]*)$", re.DOTALL)


class StreamedAnswer:
    """The answer's text released as the model writes it, already as `annotate` will leave it: a sentence the model
    left uncited gets its inferred marker, markers to no source are dropped, so that a client that only appends
    (an OpenAI stream) reads the same text, markers included, as the whole answer. What the last words may still
    change (a begun marker, a sentence's final mark, spaces) is held back until they are known."""

    def __init__(self, passages: Sequence[Passage], min_support: float = MIN_SUPPORT) -> None:
        self._passages = passages
        self._min_support = min_support
        self._raw = ""  # the model's text so far
        self._settled = 0  # characters of it whose sentences are complete
        self._pieces: list[str] = []  # those sentences, cited
        self.sent = ""  # the text released so far
        self._diverged = False

    def feed(self, delta: str) -> str:
        self._raw += delta
        rest = self._raw[self._settled :]
        for start, end in _sentence_spans(rest):
            after = rest[end:]
            if end == start or not after or _MAY_CONTINUE_END.fullmatch(after):
                break  # this sentence's end (or the markers after it) may still grow
            self._pieces.append(cite_sentence(rest[start:end], self._passages, self._min_support)[0])
            self._settled += end - start
        open_sentence = self._raw[self._settled :]
        return self._release(open_sentence[: _UNSETTLED_TAIL.search(open_sentence).start()])  # type: ignore[union-attr]

    def finish(self) -> str:
        """The rest, once the model is done: the text released is then what `annotate` makes of the whole answer."""
        rest = self._raw[self._settled :]
        self._pieces.extend(cite_sentence(rest[a:b], self._passages, self._min_support)[0]
                            for a, b in _sentence_spans(rest))  # fmt: skip
        self._settled = len(self._raw)
        return self._release("", final=True)

    def _release(self, open_part: str, final: bool = False) -> str:
        text = strip_invalid_markers("".join(self._pieces) + open_part, len(self._passages))
        if text.startswith(self.sent) and not (self._diverged and not final):
            out, self.sent = text[len(self.sent) :], text
            return out
        # Rare: a cleanup across a sentence boundary changed what was sent. The rest waits for the end and then
        # follows from where the two part (the done event's text is the answer).
        self._diverged = True
        if not final:
            return ""
        common = len(os.path.commonprefix([text, self.sent]))
        out, self.sent = text[common:], self.sent + text[common:]
        return out


def annotate(answer: str, passages: Sequence[Passage], min_support: float = MIN_SUPPORT) -> AnnotatedAnswer:
    """Cite per sentence: the model's own valid markers, or else the source that evidently supports the sentence;
    then check each sentence against the sources it cites (service/ask/verify.py).

    Small models often answer from the sources without citing them; a sentence whose content terms mostly occur
    in one source gets that source's number, so that every statement a reader sees can be checked. They also copy
    a source's words around a number or name of their own and cite it: such a sentence is unsupported, and so is
    every citation it makes. A sentence that states something and cites nothing is an unsupported claim.
    """
    pieces: list[str] = []
    support_text: dict[int, list[str]] = {}
    support_score: dict[int, float] = {}
    order: list[int] = []
    inferred: set[int] = set()
    checks: list[tuple[int, ClaimCheck]] = []  # (piece index, check)
    for start, end in _sentence_spans(answer):
        sentence, numbers, inferred_n = cite_sentence(answer[start:end], passages, min_support)
        if inferred_n is not None:
            inferred.add(inferred_n)
        plain = _MARKER.sub(" ", answer[start:end])
        sentence_terms = content_terms(plain)
        for n in numbers:
            if n not in support_text:
                order.append(n)
                support_text[n] = []
            support_text[n].append(plain)
            support_score[n] = max(support_score.get(n, 0.0), _support(sentence_terms, passages[n - 1]))
        if makes_claim(plain):
            supported, missing = check_claim(plain, [passages[n - 1].text for n in numbers])
            checks.append((len(pieces), ClaimCheck(0, 0, list(numbers), supported, missing)))
        pieces.append(sentence)
    explicit = set(parse_markers(answer, len(passages)).cited)
    unsupported = {n for _, check in checks if not check.supported for n in check.cited}
    citations = []
    for n in order:
        passage = passages[n - 1]
        snippet, offset = best_snippet(passage.text, " ".join(support_text[n]))
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
                inferred=n in inferred and n not in explicit,
                span=(offset, offset + len(snippet)),
                supported=support_score.get(n, 0.0) >= MIN_SUPPORT_MARKED and n not in unsupported,
            )
        )
    text = strip_invalid_markers("".join(pieces), len(passages))
    spans = _spans_in(text, pieces, len(passages))
    claims = []
    for index, check in checks:
        check.start, check.end = spans[index]
        claims.append(check)
    grounded = bool(claims) and all(check.supported for check in claims)
    return AnnotatedAnswer(text, citations, claims, grounded)


def _spans_in(text: str, pieces: Sequence[str], source_count: int) -> list[tuple[int, int]]:
    """Where each sentence of the answer stands in its final text (markers to no source gone, whitespace trimmed),
    for a page to mark the unsupported ones."""
    spans, at = [], 0
    for piece in pieces:
        cleaned = strip_invalid_markers(piece, source_count)
        found = text.find(cleaned, at) if cleaned else -1
        if found < 0:  # the cleanup changed this sentence's edges: as many characters from where the last one ended
            found = at
            while found < len(text) and text[found].isspace():
                found += 1
            end = min(len(text), found + len(cleaned))
        else:
            end = found + len(cleaned)
        spans.append((found, end))
        at = end
    return spans


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.end()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def visible_citations(
    citations: Sequence[Citation], groups: list[str] | None, documents: DocumentStore | None
) -> list[Citation]:
    """The check after retrieval's filter: a citation to a document the reader may not see (now: its groups may have
    changed since it was indexed, or it was deleted) never leaves. `groups` None: a reader who sees everything."""
    if groups is None or documents is None:
        return list(citations)
    allowed: dict[str, bool] = {}
    kept = []
    for citation in citations:
        if citation.document_id not in allowed:
            document = documents.get_document(citation.document_id)
            allowed[citation.document_id] = document is not None and bool(set(document.groups) & set(groups))
        if allowed[citation.document_id]:
            kept.append(citation)
    return kept


def cite(
    raw_answer: str, sources: Sequence[Passage], groups: list[str] | None, documents: DocumentStore | None
) -> tuple[str, list[Citation], list[int]]:
    """Cite stage: the final answer text, the citations this reader may see, and the numbers that named no source."""
    annotated = annotate(raw_answer, sources)
    invalid = parse_markers(raw_answer, len(sources)).invalid
    return annotated.text, visible_citations(annotated.citations, groups, documents), invalid
