"""Token-sized, section-aware chunks.

Sizes are counted in the embedding model's own tokens so that nothing is truncated unseen. Headings become the
chunk's `section` and are prefixed to the text that is embedded; tables are kept whole as Markdown where they fit,
and split by rows with the header repeated where they do not.

Long documents (ingest.structure): a numbered title ("Item 7.", "Note 5 —", "第三章", "1.2 Scope") stays in the
section of every chunk below it ("Item 7. … › Liquidity"); a chunk that spans sections names each ("A | B"). Layout
debris is no section and no chunk: a "heading" that is a bare number, date, page or footnote marker is text, page
headers and footers repeated on most pages are dropped after their first occurrence, and a chunk still smaller than
`min_tokens` joins a neighbour. Chunks whose every block lies on a contents, exhibit-index or glossary page (or
section) are flagged `boilerplate`, for search to down-weight.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ingest.partition import Block
from ingest.structure import (
    SectionPath,
    boilerplate_blocks,
    combine_sections,
    is_fragment,
    is_named_title,
    running_lines,
)
from kb.models import Chunk
from kb.text import HAN

_CHUNK_NAMESPACE = uuid.UUID("6f1c1f8e-2f55-4a8e-9a57-3d1f0d6b2c11")
# A sentence ends at Western or CJK terminal punctuation (followed by space for Western) or at a line break.
# A lead-in set apart from its table by another paragraph still says that a table follows.
_ANNOUNCES = re.compile(r"\b(?:tables?|following|below|as follows)\b|如下|下表|以下", re.IGNORECASE)
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
    boilerplate: bool = False
    # A copy of the previous chunk's tail (the overlap): left out when the two chunks are merged.
    overlap: bool = False


@dataclass
class _Draft:
    units: list[_Unit] = field(default_factory=list)
    # The sections the chunk's text belongs to, in order (more than one when a heading falls inside the chunk).
    sections: list[str] = field(default_factory=list)
    # One piece of a table split by rows: never merged into another chunk, and only its outer ends (before the
    # first piece, after the last) take a small neighbour, so each piece stays its header and its rows.
    table_piece: bool = False
    open_start: bool = True
    open_end: bool = True

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.units)

    @property
    def section(self) -> str | None:
        return combine_sections(self.sections)


class Chunker:
    def __init__(self, tokenizer: TokenSpans, max_tokens: int, overlap_tokens: int) -> None:
        if max_tokens < 16:
            raise ValueError("chunk size must be at least 16 tokens")
        self._tok = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = min(overlap_tokens, max_tokens // 4)
        # Smaller chunks join a neighbour: 25 tokens at the default 200, about one short sentence. It is the size the
        # chunker already held too small to stand alone before a new section; a chunk below it is a number, a
        # marker, a caption or a section's last words, which retrieves as noise on its own, while a real short
        # section (a heading and its sentence) is about this size and still stands alone.
        self.min_tokens = max_tokens // 8

    def count(self, text: str) -> int:
        return len(self._tok.token_spans(text))

    def _split_long(self, text: str, limit: int | None = None) -> list[tuple[int, int]]:
        """Spans of text longer than a chunk (or `limit` tokens): cut at sentence ends first, at token boundaries
        inside long sentences."""
        limit = limit or self.max_tokens
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
            if len(tokens) <= limit:
                spans.append((sentence_start, sentence_start + len(sentence)))
                continue
            for first in range(0, len(tokens), limit):
                window = tokens[first : first + limit]
                spans.append((sentence_start + window[0][0], sentence_start + window[-1][1]))
        return spans

    def _packed(self, text: str, budget: int) -> list[str]:
        """`text` in as few pieces of at most `budget` tokens as its sentence and line ends allow (a piece of a table
        is a chunk of its own, so one per sentence would make fragments)."""
        pieces: list[str] = []
        start: int | None = None
        end = tokens = 0
        for a, b in self._split_long(text, budget):
            n = self.count(text[a:b])
            if start is not None and tokens + n > budget:
                pieces.append(text[start:end])
                start = None
            if start is None:
                start, tokens = a, 0
            end, tokens = b, tokens + n
        if start is not None:
            pieces.append(text[start:end])
        return pieces

    def _units(self, block: Block, boilerplate: bool = False) -> list[_Unit]:
        tokens = self.count(block.text)
        if tokens <= self.max_tokens:
            return [_Unit(block.text, tokens, block.page, boilerplate=boilerplate)]
        units = []
        previous_end: int | None = None
        for start, end in self._split_long(block.text):
            joiner = None
            if previous_end is not None:
                gap = block.text[previous_end:start]
                joiner = "\n" if "\n" in gap else (" " if gap else "")
            piece = block.text[start:end]
            units.append(_Unit(piece, self.count(piece), block.page, joiner, boilerplate))
            previous_end = end
        return units

    def _prepared(self, blocks: Sequence[Block]) -> tuple[list[Block], list[bool]]:
        """The blocks to chunk, with whether each is boilerplate: page headers and footers repeated on most pages
        dropped after their first occurrence; "headings" that are layout debris (a bare number, a date, a page or
        footnote marker) or entries of a boilerplate page made text, so they neither start a section nor end a
        chunk; and a one-line text that is a named title ("PART II", "Item 7.", "Note 5 —", "第三章") made a heading."""
        dropped = running_lines(blocks)
        kept = [b for i, b in enumerate(blocks) if i not in dropped]
        flagged = boilerplate_blocks(kept)
        prepared = []
        for index, block in enumerate(kept):
            if block.kind == "heading" and (is_fragment(block.text) or index in flagged):
                # Layout debris, or an entry of a contents list or exhibit index: no section of its own.
                block = Block("text", block.text, block.page, block.html)
            elif block.kind == "text" and index not in flagged and is_named_title(block.text):
                # "ITEM 7. MANAGEMENT'S DISCUSSION …" that the parser left as text (filings in HTML have no titles).
                block = Block("heading", block.text, block.page)
            elif block.kind == "text" and index - 1 in flagged and is_fragment(block.text):
                # A page number between the pieces of an exhibit index belongs to it.
                flagged.add(index)
            prepared.append(block)
        return prepared, [i in flagged for i in range(len(kept))]

    def chunk(
        self, blocks: Sequence[Block], *, document_id: str, filename: str, groups: Sequence[str], version: int = 1
    ) -> list[Chunk]:
        blocks, boilerplate = self._prepared(blocks)
        drafts: list[_Draft] = []
        current = _Draft()
        path = SectionPath()
        section: str | None = None

        def here() -> list[str]:
            return [section] if section else []

        def flush(keep_overlap: bool) -> _Draft:
            if current.units:
                drafts.append(current)
            carried: list[_Unit] = []
            if keep_overlap and self.overlap_tokens and current.units:
                for unit in reversed(current.units):
                    if sum(u.tokens for u in carried) + unit.tokens > self.overlap_tokens:
                        break
                    carried.insert(0, replace(unit, overlap=True))
                if not carried:
                    # The last sentence is longer than the overlap: carry its tail, cut at a token boundary.
                    last = current.units[-1]
                    spans = self._tok.token_spans(last.text)[-self.overlap_tokens :]
                    tail = last.text[spans[0][0] :] if spans else ""
                    if tail:
                        carried = [_Unit(tail, len(spans), last.page, boilerplate=last.boilerplate, overlap=True)]
            return _Draft(units=carried, sections=here())

        def _heading_unit(heading: Block, flagged: bool) -> _Unit:
            return _Unit(heading.text, self.count(heading.text), heading.page, continues_with="\n", boilerplate=flagged)

        # A heading not yet followed by any body: if another heading comes first (title, then subtitle), it is kept
        # as text, or it would be lost.
        bare_heading: Block | None = None
        bare_flagged = False
        for block, flagged in zip(blocks, boilerplate, strict=True):
            if block.kind == "heading":
                # A new section starts a new chunk unless the current one is too small to stand alone; a run of
                # headings (a title and subtitle, a list of links unstructured took for titles) stays together.
                heading_tokens = self.count(block.text)
                if (bare_heading is None and current.tokens >= self.min_tokens) or (
                    current.units and current.tokens + heading_tokens > self.max_tokens
                ):
                    current = flush(keep_overlap=False)
                    current.units = []
                label = path.enter(block.text, follows_heading=bare_heading is not None)
                if bare_heading is not None and not current.units:
                    current.units.append(_heading_unit(bare_heading, bare_flagged))
                    section = label
                    current.sections = here()
                    bare_heading, bare_flagged = block, flagged
                    continue
                section = label
                if not current.units:
                    current.sections = here()
                else:
                    # The chunk goes on into the new section: it belongs to both.
                    current.units.append(_Unit(block.text, heading_tokens, block.page, boilerplate=flagged))
                    current.sections.append(label)
                bare_heading, bare_flagged = block, flagged
                continue
            bare_heading = None
            if block.kind == "table":
                # The sentence that introduces the table ("The following table summarizes … (in millions):") goes
                # with its rows, on every piece: it says what the numbers are and in which unit, and a question
                # worded like it finds the rows, not a chunk of the sentence alone. When the text before the table
                # is little more than that sentence (a heading and its lead-in), all of it moves to the table.
                lead, moved = self._lead_in(current)
                copy = [replace(lead, overlap=True)] if lead else []  # repeated: not the piece's own text
                if moved:
                    first_prefix, prefix = [u for u in current.units if not u.overlap], copy
                    current.units = []
                else:
                    first_prefix = prefix = copy
                current = flush(keep_overlap=False)
                current.units = []
                reserve = max(sum(u.tokens for u in first_prefix), sum(u.tokens for u in prefix))
                pieces = self._table_pieces(block, reserve)
                for number, table_text in enumerate(pieces):
                    unit = _Unit(table_text, self.count(table_text), block.page, continues_with="\n",
                                 boilerplate=flagged)  # fmt: skip
                    split = len(pieces) > 1
                    drafts.append(
                        _Draft(
                            [*(first_prefix if number == 0 else prefix), unit],
                            here(),
                            table_piece=split,
                            open_start=not split or number == 0,
                            open_end=not split or number == len(pieces) - 1,
                        )
                    )
                current.sections = here()
                continue
            for unit in self._units(block, flagged):
                if current.units and current.tokens + unit.tokens > self.max_tokens:
                    current = flush(keep_overlap=True)
                    # The carried overlap must leave room for the unit itself.
                    while current.units and current.tokens + unit.tokens > self.max_tokens:
                        current.units.pop(0)
                current.units.append(unit)
        if bare_heading is not None and not current.units:
            current.units.append(_heading_unit(bare_heading, bare_flagged))
        flush(keep_overlap=False)

        chunks: list[Chunk] = []
        for ordinal, draft in enumerate(self._merge_small(drafts)):
            text = ""
            page_starts: list[tuple[int, int]] = []
            for unit in draft.units:
                if text:
                    text += unit.continues_with if unit.continues_with is not None else _joiner(text, unit.text)
                if unit.page is not None and (not page_starts or page_starts[-1][1] != unit.page):
                    page_starts.append((len(text), unit.page))
                text += unit.text
            pages = [u.page for u in draft.units if u.page is not None]
            own = [u for u in draft.units if not u.overlap]
            section_label = draft.section
            heading = _truncate_heading(section_label)
            chunks.append(
                Chunk(
                    chunk_id=chunk_id_for(document_id, ordinal, version),
                    document_id=document_id,
                    ordinal=ordinal,
                    text=text,
                    filename=filename,
                    page=min(pages) if pages else None,
                    page_end=max(pages) if pages else None,
                    section=section_label,
                    page_starts=page_starts,
                    groups=list(groups),
                    embed_text=f"{heading}\n{text}" if heading else text,
                    version=version,
                    # Its own text (not the overlap copied from the chunk before) all on boilerplate pages.
                    boilerplate=bool(own) and all(u.boilerplate for u in own),
                )
            )
        return chunks

    def _merge_small(self, drafts: list[_Draft]) -> list[_Draft]:
        """Drafts below `min_tokens` joined to a neighbour where the two fit in `max_tokens`: preferably one of the
        same section, then one of the same boilerplate standing, then the smaller. A piece of a split table joins
        nothing (its rows belong under its repeated header) and takes a small neighbour only at the table's outer
        ends; a whole table may join the text around it."""
        drafts = list(drafts)
        i = 0
        while i < len(drafts):
            draft = drafts[i]
            if draft.tokens >= self.min_tokens or draft.table_piece:
                i += 1
                continue
            best: tuple[tuple[bool, bool, int], int, _Draft] | None = None
            for j in (i - 1, i + 1):
                if not 0 <= j < len(drafts) or not (drafts[j].open_end if j < i else drafts[j].open_start):
                    continue
                first, second = (drafts[j], draft) if j < i else (draft, drafts[j])
                merged = _merged(first, second)
                if merged.tokens > self.max_tokens:
                    continue
                same_section = first.sections[-1:] == second.sections[:1]
                same_standing = _standing(first) == _standing(second)
                key = (not same_section, not same_standing, merged.tokens)
                if best is None or key < best[0]:
                    best = (key, j, merged)
            if best is None:
                i += 1
                continue
            _, j, merged = best
            i = min(i, j)
            drafts[i : i + 2] = [merged]  # it may still be small: look at it again
        return drafts

    def _lead_in(self, draft: _Draft) -> tuple[_Unit | None, bool]:
        """The unit of `draft` that introduces a table coming next, and whether the whole draft should move to the
        table (its other text is under `min_tokens`: a heading, a unit line). A lead-in ends with a colon, is at
        most a quarter of a chunk, and is the draft's last unit, or the one before when it names what follows
        ("table", "following", "below": a note set between them by the page's layout)."""
        own = [u for u in draft.units if not u.overlap]
        for back, unit in enumerate(reversed(own[-2:])):
            text = unit.text.rstrip()
            if not text.endswith((":", "：")) or unit.tokens > self.max_tokens // 4:
                continue
            if back and not _ANNOUNCES.search(text):
                continue
            rest = sum(u.tokens for u in own) - unit.tokens
            return unit, rest < self.min_tokens
        return None, False

    def _table_pieces(self, block: Block, reserve: int = 0) -> list[str]:
        """The table as Markdown pieces of at most `max_tokens - reserve` tokens, each with its header row."""
        budget = self.max_tokens - reserve
        rows = html_table_rows(block.html) if block.html else []
        if not rows:
            return self._packed(block.text, budget)
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        header, body = _markdown_row(rows[0]), [_markdown_row(r) for r in rows[1:]]
        rule = "| " + " | ".join("---" for _ in range(width)) + " |"
        whole = "\n".join([header, rule, *body])
        if self.count(whole) <= budget:
            return [whole]
        head = [header, rule]
        head_tokens = self.count("\n".join(head))
        if not body or head_tokens > budget * 3 // 4:
            # One long row (an HTML layout table), or a header row so long (a CSV of long texts) that repeating it
            # would leave no room for the rows: split it as text rather than lose it or overflow every piece.
            return self._packed(whole, budget)
        pieces: list[str] = []
        part: list[str] = []
        part_tokens = head_tokens
        for row in body:
            row_tokens = self.count(row) + 1
            if part and part_tokens + row_tokens > budget:
                pieces.append("\n".join(head + part))
                part, part_tokens = [], head_tokens
            if head_tokens + row_tokens > budget:
                # A single row longer than a chunk: split it as text, header first.
                pieces.extend(header + "\n" + piece for piece in self._packed(row, budget - head_tokens))
                continue
            part.append(row)
            part_tokens += row_tokens
        if part:
            pieces.append("\n".join(head + part))
        return pieces


def _merged(first: _Draft, second: _Draft) -> _Draft:
    """`first` followed by `second`, without the overlap `second` copied from the end of `first`."""
    units = list(second.units)
    while units and units[0].overlap:
        units.pop(0)
    return _Draft(
        [*first.units, *units],
        [*first.sections, *second.sections],
        table_piece=first.table_piece or second.table_piece,
        open_start=first.open_start,
        open_end=second.open_end,
    )


def _standing(draft: _Draft) -> bool:
    own = [u for u in draft.units if not u.overlap]
    return bool(own) and all(u.boilerplate for u in own)


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
