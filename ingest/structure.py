"""The structure of long documents, for the chunker: which headings are real section titles and at what level, which
short elements are layout debris rather than headings, and which pages are boilerplate (a table of contents, an
exhibit index, a glossary) that should not outrank the content they point to.

Everything here reads `Block`s only (no parser, no model), and errs on the side of "content": a heading that is not
recognised as a numbered title is a plain sub-heading, and a page is boilerplate only on strong evidence (a title
that names it *and* lines shaped like its entries, or a run of such lines continuing such a page), because a
content page wrongly flagged is down-weighted in search, while a boilerplate page missed is merely today's state.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ingest.partition import Block

_SENTENCE_END = re.compile(r"[。！？；.!?;:：,，]\s*$")

# --- headings -------------------------------------------------------------------------------------------------------

_ROMAN = r"[IVXLC]+"
_CN_NUM = r"[一二三四五六七八九十百零〇\d]+"
# Level 0 groups level-1 titles (a 10-K's PART II holds Items 5-9B); level 1 is a document's main division; level 2 a
# numbered division inside it (a note to the financial statements inside Item 8, 第二节 inside 第一章).
_PART = re.compile(rf"^(?:PART|Part)\s+(?:{_ROMAN}|\d+|[A-Z])\b(?![.,]\d)|^第{_CN_NUM}(?:编|部分)")
_TOP = re.compile(
    rf"^(?:ITEM|Item)\s+\d{{1,2}}[A-Z]?\b(?![.,]\d)"  # Item 7. / ITEM 1A. / Item 9B
    rf"|^(?:CHAPTER|Chapter)\s+(?:\d+|{_ROMAN})\b"
    rf"|^(?:ARTICLE|Article)\s+(?:\d+|{_ROMAN})\b"
    rf"|^(?:APPENDIX|Appendix|ANNEX|Annex|SCHEDULE|Schedule|EXHIBIT|Exhibit)\s+(?:[A-Z]|\d+(?:\.\d+)?)\b(?![a-z])"
    rf"|^第{_CN_NUM}章"
)
_SECOND = re.compile(
    rf"^(?:NOTE|Note)\s+\d{{1,3}}[A-Z]?\b\s*(?:[.:—–-]|$|\s+[A-Z])"  # Note 5 — Debt / NOTE 5: / Note 12 Leases
    rf"|^(?:SECTION|Section)\s+\d+(?:\.\d+)*\b"
    rf"|^第{_CN_NUM}[节條条]"
)
# 1 Scope / 1. Scope / 1.2 Scope / 1.2.3 Scope / 1.2. Scope: the level is the number of parts. A bare "2019" or
# "1.5 million" is no heading: the number must be followed by a capital (or Han) starting a word, not by a unit.
_DOTTED = re.compile(
    r"^(\d{1,2}(?:\.\d{1,2}){0,4})\.?\s+(?=[A-Z\u4e00-\u9fff])"
    r"(?!(?i:months?|weeks?|years?|days?|quarters?|million|billion|thousand|percent)\b)"
)


_NAMED_TITLE = re.compile(
    rf"^(?:PART|Part)\s+(?:{_ROMAN}|\d+)\b|^(?:ITEM|Item)\s+\d{{1,2}}[A-Z]?\.|^(?:CHAPTER|Chapter|ARTICLE|Article)\s+"
    rf"(?:\d+|{_ROMAN})\b|^(?:NOTE|Note)\s+\d{{1,3}}[A-Z]?\s*[.:—–-]|^第{_CN_NUM}[章节编]"
)


def is_named_title(text: str) -> bool:
    """A one-line text that names a division by its kind and number ("PART II", "ITEM 7. MANAGEMENT'S DISCUSSION",
    "Note 5 — Debt", "Chapter 3", "第三章 总则"): a title even where the parser saw text (a 10-K in HTML has no
    titles for it). Dotted numbers ("1. Install it") are not enough: they are list items as often as titles."""
    stripped = text.strip()
    if not stripped or "\n" in stripped or len(stripped) > 120 or _SENTENCE_END.search(stripped):
        return False
    return bool(_NAMED_TITLE.match(stripped)) and not _is_toc_entry(stripped)


def heading_level(text: str) -> int | None:
    """The level of a numbered or named section title (0: a part; 1: an item, chapter, article, appendix, "1 Scope";
    2: a note, a section, "1.2 Scope"; 3+: deeper dotted numbers), or None for a plain heading, which is a sub-heading
    of whatever titled section it appears in."""
    stripped = text.strip()
    if _PART.match(stripped):
        return 0
    if _TOP.match(stripped):
        return 1
    if _SECOND.match(stripped):
        return 2
    match = _DOTTED.match(stripped)
    if match:
        number = match.group(1)
        parts = number.split(".")
        if len(parts) == 1 and int(parts[0]) > 30:
            return None  # "1999 Annual Report", "250 Employees": not a chapter number
        return len(parts)
    return None


# Elements unstructured labels Title that are no heading at all: the cells and markers of a page's layout.
_NUMBERISH = re.compile(r"^[\s$€£¥%()\[\]{}*†‡§#.,:;'\"+\-–—/\\|0-9]*$")
_MONTHS = (
    "jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec|january|february|march|april|june|july|august|september|"
    "october|november|december"
)
_DATE = re.compile(
    rf"^(?:(?:as of|as at|at|for the (?:years?|quarters?|months?) ended)\s+)?"
    rf"(?:(?:{_MONTHS})\.?\s+\d{{1,2}},?\s+\d{{4}}|\d{{1,2}}\s+(?:{_MONTHS})\.?,?\s+\d{{4}}"
    rf"|(?:{_MONTHS})\.?,?\s+\d{{4}}|\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}|\d{{1,2}}[-/.]\d{{1,2}}[-/.]\d{{2,4}}"
    rf"|\d{{4}}年(?:\d{{1,2}}月(?:\d{{1,2}}日)?)?)"
    rf"\s*[.,:]?$",
    re.IGNORECASE,
)
_PAGE_MARKER = re.compile(
    r"^(?:page|p\.|pg\.?)\s*\d+(?:\s*(?:of|/)\s*\d+)?$|^\d+\s*(?:of|/)\s*\d+$|^[-–—]\s*\d+\s*[-–—]$"
    r"|^第\s*\d+\s*页(?:\s*[,，/]?\s*共\s*\d+\s*页)?$",
    re.IGNORECASE,
)
_ROMAN_PAGE = re.compile(r"^(?:i{1,3}|iv|vi{0,3}|ix|xi{0,3}|xiv|xvi{0,3})$")  # front-matter page numbers, lower case
_FOOTNOTE_MARKER = re.compile(r"^(?:\(\s*[0-9a-z]{1,2}\s*\)|\[\s*\d{1,3}\s*\]|[*†‡§]{1,3}|\d{1,2}\))$", re.IGNORECASE)


def is_fragment(text: str) -> bool:
    """Text too small to be a heading or to stand alone as a chunk: a bare number or amount ("$", "1,234", "(12)",
    "12.5%"), a date ("December 31, 2019"), a page marker ("Page 3", "- 3 -", "3 of 10", "第 3 页"), a footnote
    marker ("(1)", "*", "[2]")."""
    stripped = text.strip()
    if not stripped:
        return True
    return bool(
        _NUMBERISH.match(stripped)
        or _DATE.match(stripped)
        or _PAGE_MARKER.match(stripped)
        or _ROMAN_PAGE.match(stripped)
        or _FOOTNOTE_MARKER.match(stripped)
    )


def _shape(text: str) -> str:
    """A running header's or footer's text with its numbers abstracted: "Page 3 of 10" and "Page 4 of 10" match."""
    return re.sub(r"\d+", "#", " ".join(text.split())).lower()


def running_lines(blocks: Sequence[Block], *, min_pages: int = 3, min_share: float = 0.5) -> set[int]:
    """Indices of page headers and footers to drop: a short one-line heading or text that is the first or last
    element of its page with the same shape (numbers aside), or the second or second-last with the same text, on at
    least `min_pages` pages and at least `min_share` of the document's pages. The first occurrence is kept (its text
    is not lost from the document); the repeats would otherwise cut every page's text in two and make fragment
    chunks of their own.

    Only page edges count, so a label repeated inside pages (a statement's "Years Ended December 31," over its
    columns, which the numbers below need) is never dropped."""
    by_page: dict[int, list[int]] = defaultdict(list)
    for index, block in enumerate(blocks):
        if block.page is not None:
            by_page[block.page].append(index)
    if len(by_page) < min_pages:
        return set()
    edges: dict[str, list[int]] = defaultdict(list)
    for indices in by_page.values():
        outer = {indices[0], indices[-1]}
        for index in outer | {*indices[:2], *indices[-2:]}:
            block = blocks[index]
            if block.kind == "table" or "\n" in block.text.strip() or len(block.text) > 100:
                continue
            # The outermost line may differ by its numbers ("Page 3 of 10"); the next one in (a second header
            # line) must repeat exactly.
            key = _shape(block.text) if index in outer else "=" + " ".join(block.text.split()).lower()
            edges[key].append(index)
    dropped: set[int] = set()
    for occurrences in edges.values():
        pages = {blocks[i].page for i in occurrences}
        if len(pages) >= min_pages and len(pages) >= min_share * len(by_page):
            dropped.update(sorted(occurrences)[1:])
    return dropped


# --- boilerplate ----------------------------------------------------------------------------------------------------

_TOC_TITLE = re.compile(
    r"^(?:table\s+of\s+contents|contents|index|目\s*录|目\s*次)\s*[:：]?$", re.IGNORECASE
)
_EXHIBIT_TITLE = re.compile(
    r"^(?:exhibit\s+index|index\s+to\s+exhibits|list\s+of\s+exhibits|exhibits?\s+(?:no\.?|number)\b.*)"
    r"|\bexhibit\s+(?:no\.?|number)\b",
    re.IGNORECASE,
)
_GLOSSARY_TITLE = re.compile(
    r"^(?:(?:glossary|definitions|abbreviations|acronyms|defined\s+terms)(?:\s+(?:of|and)\s+[\w\s]+)?"
    r"|(?:certain\s+)?defined\s+terms|释\s*义|术\s*语|词汇表|缩略语|名词解释)\s*[:：]?$",
    re.IGNORECASE,
)
# A contents entry: words, then a page number at the end of the line (after dot leaders or a space), and no other
# amount right before it ("Net sales 274,515 260,174" is a statement row, not an entry).
_DOT_LEADER = re.compile(r"(?:\.\s?){3,}|…{2,}|·{3,}|_{3,}")
_TOC_ENTRY = re.compile(r"^(?=.*[^\W\d_]).{2,160}?(?<![\d,.$%])(?:\s*(?:\.\s?){3,}|\s*…+|\s*·{3,}|\s)\s*\d{1,3}$")
_AMOUNT_BEFORE = re.compile(r"\d[\d,.]*%?\)?\s+\|?\s*\d{1,3}$")
# An exhibit entry: its number (3.1, 10.2*, 31.1, 101.INS) then its description.
_EXHIBIT_ENTRY = re.compile(r"^\(?\d{1,3}(?:\.\d{1,3}){1,2}[a-z]?\)?[*†#+]*\s+\S|^\d{3}\.[A-Z]{3}\b")
# A definition: a short term (up to six words, or a Han term), a dash, colon or tab, then its meaning.
_DEFINITION = re.compile(
    r"^[\"“]?[^\s\"”][^.:—–\t]{0,48}?[\"”]?\s*(?:\s[—–-]{1,2}\s|[—–]|:|：|\t|\s=\s|\s{2,})\s*\S"
    r"|^[\"“][^\"”]{1,50}[\"”]\s+(?:means|shall mean|refers to|has the meaning)\b",
)


def _lines(block: Block) -> list[str]:
    """The lines of a block as a reader sees them: a table's rows (cells joined by spaces), a text's lines."""
    if block.kind == "table" and block.html:
        from bs4 import BeautifulSoup

        rows = []
        for tr in BeautifulSoup(block.html, "html.parser").find_all("tr"):
            cells = [c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"])]
            line = " ".join(c for c in cells if c)
            if line:
                rows.append(line)
        return rows
    return [line.strip() for line in block.text.splitlines() if line.strip()]


def _is_toc_entry(line: str) -> bool:
    if len(line) > 200:
        return False
    if _DOT_LEADER.search(line) and re.search(r"\d{1,4}\s*$", line):
        return True
    return bool(_TOC_ENTRY.match(line)) and not _AMOUNT_BEFORE.search(line)


def _is_definition(line: str) -> bool:
    return len(line) <= 600 and bool(_DEFINITION.match(line))


@dataclass
class _Kind:
    title: re.Pattern[str]
    entry: Callable[[str], bool]
    # Share of a titled page's lines that must be entries; share for a continuation page (no title).
    titled_share: float
    continued_share: float


_KINDS = {
    "contents": _Kind(_TOC_TITLE, _is_toc_entry, 0.5, 0.6),
    "exhibits": _Kind(_EXHIBIT_TITLE, lambda line: bool(_EXHIBIT_ENTRY.match(line)), 0.4, 0.6),
    "glossary": _Kind(_GLOSSARY_TITLE, _is_definition, 0.5, 0.7),
}
_MIN_ENTRIES = 3


@dataclass
class _Segment:
    """A page, or (in a document without pages) a heading and the blocks up to the next one."""

    blocks: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _classify(segment: _Segment, previous: str | None) -> str | None:
    """The boilerplate kind of a segment, or None for content. `previous`: the kind of the segment before it, whose
    continuation this one may be without repeating the title."""
    lines = segment.lines
    if not lines:
        return None
    for name, kind in _KINDS.items():
        titled = [i for i, line in enumerate(lines[:6]) if kind.title.search(line) and len(line) <= 80]
        body = [line for i, line in enumerate(lines) if i not in titled]
        if not body:
            continue
        entries = sum(kind.entry(line) for line in body)
        if entries < _MIN_ENTRIES:
            continue
        share = entries / len(body)
        if titled and share >= kind.titled_share:
            return name
        if previous == name and share >= kind.continued_share:
            return name
    return None


def _segments_by_page(blocks: Sequence[Block]) -> dict[int, _Segment]:
    pages: dict[int, _Segment] = {}
    for index, block in enumerate(blocks):
        if block.page is None:
            continue
        segment = pages.setdefault(block.page, _Segment())
        segment.blocks.append(index)
        segment.lines += _lines(block)
    return dict(sorted(pages.items()))


def boilerplate_pages(blocks: Sequence[Block]) -> set[int]:
    """Pages that are a table of contents, an exhibit index or a glossary: a page whose first lines hold the title
    ("Table of Contents", "Exhibit Index", "Glossary", 目录 …) and whose lines are mostly entries of that kind (a
    title followed by prose is a content page that mentions it), or a page right after one of these whose lines are
    even more clearly entries of the same kind (a contents list running over two pages)."""
    found: set[int] = set()
    previous: tuple[int, str] | None = None
    for page, segment in _segments_by_page(blocks).items():
        carried = previous[1] if previous and previous[0] == page - 1 else None
        kind = _classify(segment, carried)
        if kind:
            found.add(page)
            previous = (page, kind)
    return found


def _segments_by_heading(blocks: Sequence[Block]) -> list[_Segment]:
    segments: list[_Segment] = []
    for index, block in enumerate(blocks):
        if block.kind == "heading" or not segments:
            segments.append(_Segment())
        segments[-1].blocks.append(index)
        segments[-1].lines += _lines(block)
    return segments


def boilerplate_sections(blocks: Sequence[Block]) -> set[int]:
    """For a document without pages (HTML, Word, text): indices of the blocks of boilerplate sections, a section
    being a heading and the blocks up to the next heading, judged like a page (its title among its first lines,
    then mostly entries; or continuing a boilerplate section with even more clearly entries)."""
    flagged: set[int] = set()
    previous: str | None = None
    for segment in _segments_by_heading(blocks):
        kind = _classify(segment, previous)
        if kind:
            flagged.update(segment.blocks)
        previous = kind
    return flagged


def boilerplate_blocks(blocks: Sequence[Block]) -> set[int]:
    """Indices of the blocks that belong to boilerplate: those on a boilerplate page (`boilerplate_pages`); the
    blocks without a page (a document without pages, or its unpaged parts) by `boilerplate_sections`; and, in either,
    a table that on its own is a contents list or an exhibit index (a 10-K's contents are one table under a running
    "Table of Contents" link, whose section also holds prose)."""
    pages = boilerplate_pages(blocks)
    flagged = {i for i, b in enumerate(blocks) if b.page is not None and b.page in pages}
    unpaged = [i for i, b in enumerate(blocks) if b.page is None]
    if unpaged:
        flagged.update(unpaged[i] for i in boilerplate_sections([blocks[i] for i in unpaged]))
    for index, block in enumerate(blocks):
        if block.kind == "table" and index not in flagged and _table_is_boilerplate(block, blocks[:index]):
            flagged.add(index)
    return flagged


def _table_is_boilerplate(table: Block, before: Sequence[Block]) -> bool:
    """A table of contents or exhibit index as one table: its first row (or the nearest text before it) names it,
    and most of its rows are entries."""
    rows = _lines(table)
    if len(rows) < _MIN_ENTRIES + 1:
        return False
    context = [line for block in before[-2:] for line in _lines(block)][-2:]
    for name in ("contents", "exhibits"):
        kind = _KINDS[name]
        titled = any(kind.title.search(line) and len(line) <= 80 for line in [*context, *rows[:2]])
        if not titled:
            continue
        body = [row for row in rows if not (kind.title.search(row) and len(row) <= 80)]
        entries = sum(kind.entry(row) for row in body)
        if entries >= _MIN_ENTRIES and entries / max(len(body), 1) >= kind.continued_share:
            return True
    return False


# --- section titles -------------------------------------------------------------------------------------------------

_BARE_TITLE = re.compile(
    rf"^(?:PART|Part|ITEM|Item|CHAPTER|Chapter|ARTICLE|Article|NOTE|Note|SECTION|Section|APPENDIX|Appendix)\s+"
    rf"(?:\d+[A-Z]?|{_ROMAN}|[A-Z])\s*[.:—–-]?$|^第{_CN_NUM}[章节條条编]$"
)
_ANCESTOR_CHARS = 48


def _abbreviate(title: str, limit: int = _ANCESTOR_CHARS) -> str:
    """An ancestor's title cut at a word boundary, so the innermost heading survives the embedded prefix's limit."""
    if len(title) <= limit:
        return title
    cut = title[:limit].rsplit(" ", 1)[0] if " " in title[:limit] else title[:limit]
    return cut.rstrip(" ,;:.—–-") + " …"


class SectionPath:
    """The section a chunk belongs to, as the chain of titled sections above it and the latest plain heading:
    "Item 7. Management's Discussion … › Liquidity and Capital Resources", so a chunk deep inside Item 7 still says
    Item 7. A numbered title (`heading_level`) closes every title at its level or below; a plain heading replaces the
    previous plain heading. Without numbered titles the label is the latest heading, as it always was.

    A part ("PART II") is left out once an item or chapter names the division (Item numbers are unique across a
    10-K; the part only lengthens the label), and ancestors are abbreviated to keep the innermost heading inside
    the embedded prefix."""

    def __init__(self) -> None:
        self._titles: list[tuple[int, str]] = []
        self._leaf: str | None = None

    def enter(self, heading: str, *, follows_heading: bool = False) -> str:
        """The label after `heading`. `follows_heading`: it comes right after another heading with no text between,
        where a bare "Item 7." and its name "Management's Discussion …" (two elements in many filings) are one title."""
        heading = " ".join(heading.split())
        level = heading_level(heading)
        if level is None:
            if follows_heading and self._leaf is None and self._titles and _BARE_TITLE.match(self._titles[-1][1]):
                top_level, top = self._titles[-1]
                self._titles[-1] = (top_level, f"{top} {heading}")
            else:
                self._leaf = heading
        else:
            while self._titles and self._titles[-1][0] >= level:
                self._titles.pop()
            self._titles.append((level, heading))
            self._leaf = None
        return self.label() or heading

    def label(self) -> str | None:
        titles = [title for _, title in self._titles]
        if len(self._titles) > 1 and self._titles[0][0] == 0:
            titles = titles[1:]
        chain = [*titles, self._leaf] if self._leaf else titles
        if not chain:
            return None
        return " › ".join([*(_abbreviate(t) for t in chain[:-1]), chain[-1]])


def combine_sections(labels: Sequence[str]) -> str | None:
    """One label for a chunk that spans several sections: each section once, in order, joined by " | "; a section
    followed by one of its own sub-sections is said once, by the sub-section's label (which names it)."""
    out: list[str] = []
    for label in labels:
        if not label or label in out:
            continue
        if out and label.startswith(out[-1] + " › "):
            out[-1] = label
            continue
        out.append(label)
    return " | ".join(out) if out else None
