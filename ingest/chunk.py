"""Token-sized, section-aware chunks.

Sizes are counted in the embedding model's own tokens so that nothing is truncated unseen. Headings become the
chunk's `section` and are prefixed to the text that is embedded; tables are kept whole as Markdown where they fit,
and split by rows with the header repeated where they do not.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ingest.partition import Block
from kb.models import Chunk
from kb.text import HAN

_CHUNK_NAMESPACE = uuid.UUID("6f1c1f8e-2f55-4a8e-9a57-3d1f0d6b2c11")
# A sentence ends at Western or CJK terminal punctuation (followed by space for Western) or at a line break.
_PARAGRAPH_END = re.compile(r"[。！？.!?:：;；)）\]】\"”]$")
_SENTENCE_SPLIT = re.compile(r"(?<=[。！？；])|(?<=[.!?;])\s+|\n+")


# Sentence vectors per chunk, at most: a 200-token chunk of prose has about 5-15 sentences; a table chunk has one
# "sentence" per row.
MAX_SENTENCES = 32
_WORD_CHAR = re.compile(r"\w")


def sentences(text: str, limit: int = MAX_SENTENCES) -> list[str]:
    """The sentences (and lines: a heading, a table row) of a chunk's embedded text, for its sentence vectors,
    without repeats or pieces with no word in them; [] when the text is a single sentence, whose vector is the
    chunk's own."""
    pieces = (piece.strip() for piece in _SENTENCE_SPLIT.split(text) if piece)
    found = list(dict.fromkeys(p for p in pieces if len(p) > 2 and _WORD_CHAR.search(p)))
    return found[:limit] if len(found) > 1 else []


class TokenSpans(Protocol):
    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of `text`, special tokens excluded."""
        ...


def chunk_id_for(document_id: str, ordinal: int, version: int = 1) -> str:
    return str(uuid.uuid5(_CHUNK_NAMESPACE, f"{document_id}:{version}:{ordinal}"))


@dataclass
class _Unit:
    text: str
    tokens: int
    page: int | None
    # Separator before this unit when it continues the previous unit's block (a split sentence or paragraph).
    continues_with: str | None = None


@dataclass
class _Draft:
    units: list[_Unit] = field(default_factory=list)
    section: str | None = None

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.units)


class Chunker:
    def __init__(self, tokenizer: TokenSpans, max_tokens: int, overlap_tokens: int) -> None:
        if max_tokens < 16:
            raise ValueError("chunk size must be at least 16 tokens")
        self._tok = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = min(overlap_tokens, max_tokens // 4)

    def count(self, text: str) -> int:
        return len(self._tok.token_spans(text))

    def _split_long(self, text: str) -> list[tuple[int, int]]:
        """Spans of text longer than a chunk: cut at sentence ends first, at token boundaries inside long sentences."""
        spans: list[tuple[int, int]] = []
        start = 0
        for match in [*_SENTENCE_SPLIT.finditer(text), None]:
            end = match.start() if match else len(text)
            next_start = match.end() if match else len(text)
            sentence = text[start:end]
            lead = len(sentence) - len(sentence.lstrip())
            sentence_start, sentence = start + lead, sentence.strip()
            start = next_start
            if not sentence:
                continue
            tokens = self._tok.token_spans(sentence)
            if len(tokens) <= self.max_tokens:
                spans.append((sentence_start, sentence_start + len(sentence)))
                continue
            for first in range(0, len(tokens), self.max_tokens):
                window = tokens[first : first + self.max_tokens]
                spans.append((sentence_start + window[0][0], sentence_start + window[-1][1]))
        return spans

    def _units(self, block: Block) -> list[_Unit]:
        tokens = self.count(block.text)
        if tokens <= self.max_tokens:
            return [_Unit(block.text, tokens, block.page)]
        units = []
        previous_end: int | None = None
        for start, end in self._split_long(block.text):
            joiner = None
            if previous_end is not None:
                gap = block.text[previous_end:start]
                joiner = "\n" if "\n" in gap else (" " if gap else "")
            piece = block.text[start:end]
            units.append(_Unit(piece, self.count(piece), block.page, joiner))
            previous_end = end
        return units

    def chunk(
        self, blocks: Sequence[Block], *, document_id: str, filename: str, groups: Sequence[str], version: int = 1
    ) -> list[Chunk]:
        drafts: list[_Draft] = []
        current = _Draft()
        section: str | None = None

        def flush(keep_overlap: bool) -> _Draft:
            if current.units:
                drafts.append(current)
            carried: list[_Unit] = []
            if keep_overlap and self.overlap_tokens and current.units:
                for unit in reversed(current.units):
                    if sum(u.tokens for u in carried) + unit.tokens > self.overlap_tokens:
                        break
                    carried.insert(0, unit)
                if not carried:
                    # The last sentence is longer than the overlap: carry its tail, cut at a token boundary.
                    last = current.units[-1]
                    spans = self._tok.token_spans(last.text)[-self.overlap_tokens :]
                    tail = last.text[spans[0][0] :] if spans else ""
                    if tail:
                        carried = [_Unit(tail, len(spans), last.page)]
            return _Draft(units=carried, section=section)

        def _heading_unit(heading: Block) -> _Unit:
            return _Unit(heading.text, self.count(heading.text), heading.page, continues_with="\n")

        # A heading not yet followed by any body: if another heading comes first (title, then subtitle), it is kept
        # as text, or it would be lost.
        bare_heading: Block | None = None
        for block in blocks:
            if block.kind == "heading":
                # A new section starts a new chunk unless the current one is too small to stand alone; a run of
                # headings (a title and subtitle, a list of links unstructured took for titles) stays together.
                heading_tokens = self.count(block.text)
                if (bare_heading is None and current.tokens >= self.max_tokens // 8) or (
                    current.units and current.tokens + heading_tokens > self.max_tokens
                ):
                    current = flush(keep_overlap=False)
                    current.units = []
                if bare_heading is not None and not current.units:
                    current.units.append(_heading_unit(bare_heading))
                    section = current.section = block.text
                    bare_heading = block
                    continue
                section = block.text
                if not current.units:
                    current.section = section
                else:
                    current.units.append(_Unit(block.text, heading_tokens, block.page))
                bare_heading = block
                continue
            bare_heading = None
            if block.kind == "table":
                current = flush(keep_overlap=False)
                current.units = []
                for table_text in self._table_pieces(block):
                    drafts.append(_Draft([_Unit(table_text, self.count(table_text), block.page)], section))
                current.section = section
                continue
            for unit in self._units(block):
                if current.units and current.tokens + unit.tokens > self.max_tokens:
                    current = flush(keep_overlap=True)
                    current.section = section
                    # The carried overlap must leave room for the unit itself.
                    while current.units and current.tokens + unit.tokens > self.max_tokens:
                        current.units.pop(0)
                current.units.append(unit)
        if bare_heading is not None and not current.units:
            current.units.append(_heading_unit(bare_heading))
        flush(keep_overlap=False)

        chunks: list[Chunk] = []
        for ordinal, draft in enumerate(drafts):
            text = ""
            page_starts: list[tuple[int, int]] = []
            for unit in draft.units:
                if text:
                    text += unit.continues_with if unit.continues_with is not None else _joiner(text, unit.text)
                if unit.page is not None and (not page_starts or page_starts[-1][1] != unit.page):
                    page_starts.append((len(text), unit.page))
                text += unit.text
            pages = [u.page for u in draft.units if u.page is not None]
            heading = _truncate_heading(draft.section)
            chunks.append(
                Chunk(
                    chunk_id=chunk_id_for(document_id, ordinal, version),
                    document_id=document_id,
                    ordinal=ordinal,
                    text=text,
                    filename=filename,
                    page=min(pages) if pages else None,
                    page_end=max(pages) if pages else None,
                    section=draft.section,
                    page_starts=page_starts,
                    groups=list(groups),
                    embed_text=f"{heading}\n{text}" if heading else text,
                    version=version,
                )
            )
        return chunks

    def _table_pieces(self, block: Block) -> list[str]:
        rows = html_table_rows(block.html) if block.html else []
        if not rows:
            return [u.text for u in self._units(block)]
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        header, body = _markdown_row(rows[0]), [_markdown_row(r) for r in rows[1:]]
        rule = "| " + " | ".join("---" for _ in range(width)) + " |"
        whole = "\n".join([header, rule, *body])
        if self.count(whole) <= self.max_tokens:
            return [whole]
        if not body:
            # One long row (an HTML layout table): no header to repeat, split it as text rather than lose it.
            return [u.text for u in self._units(block)]
        pieces: list[str] = []
        head = [header, rule]
        head_tokens = self.count("\n".join(head))
        part: list[str] = []
        part_tokens = head_tokens
        for row in body:
            row_tokens = self.count(row) + 1
            if part and part_tokens + row_tokens > self.max_tokens:
                pieces.append("\n".join(head + part))
                part, part_tokens = [], head_tokens
            if head_tokens + row_tokens > self.max_tokens:
                # A single row longer than a chunk: split it as text, header first.
                pieces.extend(header + "\n" + row[a:b] for a, b in self._split_long(row))
                continue
            part.append(row)
            part_tokens += row_tokens
        if part:
            pieces.append("\n".join(head + part))
        return pieces


def _joiner(before: str, after: str) -> str:
    """PDF text layers often give one element per line: continue the sentence unless the previous unit ended one."""
    if _PARAGRAPH_END.search(before) or after.startswith("|") or before.endswith("|"):
        return "\n"
    return "" if HAN.match(before[-1]) and HAN.match(after[0]) else " "


def _truncate_heading(section: str | None, limit: int = 120) -> str | None:
    if not section:
        return None
    return section if len(section) <= limit else section[:limit]


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ").strip() for c in cells) + " |"


def html_table_rows(html: str) -> list[list[str]]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    rows: list[list[str]] = []
    for tr in soup.find_all("tr"):
        cells = [cell.get_text(" ", strip=True) for cell in tr.find_all(["th", "td"])]
        if any(cells):
            rows.append(cells)
    return rows
