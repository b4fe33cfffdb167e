"""Tables on text-based PDF pages, rebuilt from word positions, for financial statements without ruling lines.

unstructured's fast strategy (pdfminer) reads such a statement as loose text boxes: row labels in one element, each
column of numbers in others, the years somewhere else; no chunk then holds a number with its label and its year.
This module finds the shape a statement has on the page and rebuilds its rows:

- value lines: a text label on the left, then only values (numbers, "$ 1,234", "(56)", "12.5%", "—") to its right;
- value columns: the values of those lines stacked in columns whose edges line up (right-aligned numbers);
- header lines just above (years, "Years Ended December 31,"), merged per column into one header row;
- labels wrapped over two lines joined into one cell, also when the values sit between the two lines; section
  lines ("Current assets:") kept as rows of their own, and so are group labels set right-aligned in a value column
  ("Expenses:"), which neither end the table nor become its header.

Why not pdfplumber's own table finder: with its "text" strategies it takes a whole page of prose for one table and
cuts words across its guessed columns on LibreOffice-rendered TAT-QA statements (measured, issue 19). pdfplumber's
word positions are exact, though; the clustering here works on them. ingest.partition searches only pages that
look like they hold a table, and takes their words from unstructured's own pdfminer pass (capture_words) instead of
interpreting those pages a second time.
A page without that shape (prose, multi-column papers, lists, a table of contents: lines with one number, or words
after the numbers) yields nothing.

Coordinates: PDF points from the top-left corner of the page (pdfplumber's `top`/`bottom`), the space unstructured's
fast strategy gives its elements (PixelSpace of the page size in points).
"""

from __future__ import annotations

import html
import itertools
import logging
import re
import statistics
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# A value cell: an amount, a percentage, a ratio, a range, a dash for zero, n/a. Currency signs and parentheses
# (negatives) may wrap it; a footnote star may follow.
_VALUE = re.compile(
    r"""^(?:
        [(]?\s*(?:[A-Z]{0,2}[$€£¥]\s*)?[(]?\s*[-+−]?
        (?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?
        \s*[)]?\s*(?:%|x|bps|pts|p)?\s*[)]?\s*%?\*?
      | [(]?\s*(?:[A-Z]{0,2}[$€£¥]\s*)?[-+−]?\.\d+\s*[)]?\s*%?
      | (?:[A-Z]{0,2}[$€£¥]\s*)?[(]?[—–-]{1,3}[)]?\s*%?
      | \d+(?:\.\d+)?[-–]\d+(?:\.\d+)?  # a range set without spaces ("2-14" years)
      | n/?a | n/?m | nil
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
_CURRENCY = re.compile(r"^[A-Z]{0,2}[$€£¥]$")


def _is_value(text: str) -> bool:
    """A value cell's text. A closing parenthesis without its opening one ends a wrapped label ("(refer to note" /
    "18)"), never an amount: negatives keep both, or the opening one alone until a lone ")" joins them."""
    return bool(_VALUE.match(text)) and text.count(")") <= text.count("(")

_TRAILER = re.compile(r"^(?:%|\)|%\))$")  # a percent sign or closing parenthesis set apart from its number
_YEAR = re.compile(
    r"^(?:FY\s?|F|')(?:19|20)?\d\d[A-Z]?$|^(?:FY\s?)?(?:19|20)\d\d$|^(?:19|20)\d\d\s*[-–]\s*(?:19|20)?\d\d$",
    re.IGNORECASE,
)
# A unit over a column of amounts: "US$000", "$'000", "£m", "$ millions".
_UNIT = re.compile(r"^(?:[A-Z]{0,3}[$€£¥])?\s*'?000s?$|^[A-Z]{0,3}[$€£¥]\s*(?:m|bn|k|millions?|thousands?)$", re.I)
_SPACE_EM = 0.45  # words closer than this (in font sizes) belong to one phrase
_MAX_HEADER_LINES = 7  # stacked header lines, half-line offsets (a wrapped label beside a unit line) counting apart
_MAX_GAP_LINES = 3  # lines without values allowed between two value lines of one table
_PROSE_WORDS = 5  # words left of a gutter that make them another column's prose, not a first label column


@dataclass
class _Cell:
    text: str
    x0: float
    x1: float
    top: float
    bottom: float
    size: float
    value: bool = False
    # right edge of the number itself ("$" glued on the left does not move it)
    anchor: float = 0.0
    # left edge of the number itself: filings set "$" at the left of the column, next to the column before
    start: float = 0.0


@dataclass
class _Line:
    cells: list[_Cell]

    @property
    def top(self) -> float:
        return min(c.top for c in self.cells)

    @property
    def bottom(self) -> float:
        return max(c.bottom for c in self.cells)

    @property
    def center(self) -> float:
        return (self.top + self.bottom) / 2

    @property
    def size(self) -> float:
        return statistics.median(c.size for c in self.cells)

    @property
    def values(self) -> list[_Cell]:
        return [c for c in self.cells if c.value]

    def first_value(self) -> int | None:
        return next((i for i, c in enumerate(self.cells) if c.value), None)

    def is_value_line(self) -> bool:
        """A label (or nothing) on the left, then values only: the shape of a statement's row, never prose."""
        first = self.first_value()
        return first is not None and all(c.value for c in self.cells[first:])

    def label_cells(self) -> list[_Cell]:
        """The phrases left of the values, from the last wide gap on: text further left across a gutter is another
        column's prose (a table set in one column of a two-column paper)."""
        first = self.first_value()
        cells = self.cells if first is None else self.cells[:first]
        for i in range(len(cells) - 1, 0, -1):
            if cells[i].x0 - cells[i - 1].x1 > 1.5 * cells[i].size:
                if sum(len(c.text.split()) for c in cells[:i]) >= _PROSE_WORDS:
                    return cells[i:]
                break
        return cells


@dataclass(frozen=True)
class PdfTable:
    """One table found on a page: `rows[0]` is the header row (one cell per column, stacked headers merged), every
    later row starts with its label. `bbox` = (x0, top, x1, bottom) in points from the page's top-left corner."""

    page: int
    bbox: tuple[float, float, float, float]
    rows: list[list[str]]

    @property
    def html(self) -> str:
        def cells(row: list[str], tag: str) -> str:
            return "".join(f"<{tag}>{html.escape(cell)}</{tag}>" for cell in row)

        header, body = self.rows[0], self.rows[1:]
        return (
            f"<table><tr>{cells(header, 'th')}</tr>"
            + "".join(f"<tr>{cells(row, 'td')}</tr>" for row in body)
            + "</table>"
        )

    @property
    def text(self) -> str:
        return "\n".join(" ".join(cell for cell in row if cell) for row in self.rows if any(row))


# --- words -> lines -> cells ------------------------------------------------------------------------------------


def _lines(words: list[dict]) -> list[_Line]:
    """Words grouped into lines by their vertical centre (superscript footnote marks stay on their line)."""
    words = [w for w in words if w.get("upright", True) and w["text"].strip()]
    words.sort(key=lambda w: (w["top"] + w["bottom"]) / 2)
    groups: list[list[dict]] = []
    centre = None
    for word in words:
        mid = (word["top"] + word["bottom"]) / 2
        if groups and centre is not None and abs(mid - centre) <= 0.4 * max(word.get("size", 10.0), 1.0):
            groups[-1].append(word)
            continue
        groups.append([word])
        centre = mid
    return [_Line(_cells(sorted(group, key=lambda w: w["x0"]))) for group in groups]


def _cell(word: dict) -> _Cell:
    return _Cell(
        word["text"], word["x0"], word["x1"], word["top"], word["bottom"], float(word.get("size") or 10.0),
        anchor=word["x1"],
        start=word["x0"],
    )


def _extend(cell: _Cell, word: dict, sep: str = " ") -> None:
    cell.text += sep + word["text"]
    cell.x1 = max(cell.x1, word["x1"])
    cell.top = min(cell.top, word["top"])
    cell.bottom = max(cell.bottom, word["bottom"])
    cell.anchor = word["x1"]


def _cells(words: list[dict]) -> list[_Cell]:
    """Words of one line merged into phrases (word gaps) and values: a "$" standing apart is glued to the number
    after it however far (filings set it at the left of the column), a lone "%" or ")" to the number before it;
    two numbers are never one cell."""
    cells: list[_Cell] = []
    pending_currency: dict | None = None
    for word in words:
        text = word["text"]
        size = float(word.get("size") or 10.0)
        if _CURRENCY.match(text):
            if pending_currency is not None:
                cells.append(_cell(pending_currency))
            pending_currency = word
            continue
        if pending_currency is not None:
            if _is_value(text):
                cell = _cell(pending_currency)
                _extend(cell, word)
                cell.value = True
                cell.start = word["x0"]
                cells.append(cell)
                pending_currency = None
                continue
            cells.append(_cell(pending_currency))
            pending_currency = None
        prev = cells[-1] if cells else None
        gap = word["x0"] - prev.x1 if prev else None
        if prev is not None and prev.value and _TRAILER.match(text) and gap is not None and gap <= size:
            _extend(prev, word, sep="")
            continue
        is_value = _is_value(text)
        if (
            prev is not None
            and gap is not None
            and gap <= _SPACE_EM * size
            and not (prev.value and is_value)
            and not (is_value and prev.text.endswith(("$", "€", "£", "¥")))
        ):
            _extend(prev, word)
            prev.value = _is_value(prev.text)
            continue
        cell = _cell(word)
        cell.value = is_value
        cells.append(cell)
    if pending_currency is not None:
        cells.append(_cell(pending_currency))
    return _ranges(cells)


_DASH = ("-", "–", "—")
_PLAIN = re.compile(r"^\d[\d,]*(?:\.\d+)?$")  # a bare number: no currency, sign or parenthesis
_OPEN_RANGE = re.compile(r"^\d[\d,]*(?:\.\d+)? [-–—]$")


def _ranges(cells: list[_Cell]) -> list[_Cell]:
    """A range set tight in one cell ("5 - 40", "20 - Indefinite" useful lives) is one value: the number, the dash
    and what follows it within a word space. Apart, the dash would be read as a value of its own (a zero) and the
    words after it would end the line's values."""
    out: list[_Cell] = []
    for cell in cells:
        prev = out[-1] if out else None
        close = prev is not None and cell.x0 - prev.x1 <= _SPACE_EM * cell.size
        if close and _PLAIN.match(prev.text) and cell.text.startswith(_DASH) and "$" not in cell.text:
            _merge(prev, cell)  # "5" + "-", or "20" + "- Indefinite"
            continue
        if close and _OPEN_RANGE.match(prev.text) and _PLAIN.match(cell.text):
            _merge(prev, cell)  # "5 -" + "40"
            continue
        out.append(cell)
    return out


def _merge(cell: _Cell, other: _Cell) -> None:
    cell.text += " " + other.text
    cell.x1 = max(cell.x1, other.x1)
    cell.top = min(cell.top, other.top)
    cell.bottom = max(cell.bottom, other.bottom)
    cell.anchor = other.anchor
    cell.value = True


# --- columns ----------------------------------------------------------------------------------------------------


@dataclass
class _Column:
    x0: float
    x1: float
    cells: list[_Cell] = field(default_factory=list)

    def aligned(self) -> bool:
        """Most of the column's values share a right edge (numbers), a centre or a left edge."""
        if len(self.cells) < 2:
            return True
        tol = 0.25 * statistics.median(c.size for c in self.cells)
        for key in (lambda c: c.anchor, lambda c: (c.x0 + c.x1) / 2, lambda c: c.x0):
            edges = sorted(key(c) for c in self.cells)
            best = max(sum(1 for e in edges if abs(e - pivot) <= tol) for pivot in edges)
            if best >= 0.6 * len(edges):
                return True
        return False


def _columns(lines: list[_Line]) -> list[_Column]:
    """Value columns: the horizontal extents of the value cells, merged where they overlap."""
    cells = sorted((c for line in lines for c in line.values), key=lambda c: c.start)
    columns: list[_Column] = []
    for cell in cells:
        if columns and cell.start <= columns[-1].x1:
            columns[-1].x1 = max(columns[-1].x1, cell.x1)
            columns[-1].cells.append(cell)
        else:
            columns.append(_Column(cell.start, cell.x1, [cell]))
    return columns


def _column_of(cell: _Cell, columns: list[_Column]) -> int:
    """Index of the column a cell belongs to: the one it overlaps most, else the nearest by centre."""
    overlaps = [min(cell.x1, col.x1) - max(cell.start, col.x0) for col in columns]
    best = max(range(len(columns)), key=lambda i: overlaps[i])
    if overlaps[best] > 0:
        return best
    mid = (cell.x0 + cell.x1) / 2
    return min(range(len(columns)), key=lambda i: abs(mid - (columns[i].x0 + columns[i].x1) / 2))


def _header_columns(cell: _Cell, columns: list[_Column]) -> list[int]:
    """Columns a header phrase stands over: every column it covers a good part of ("Years Ended December 31,"
    centred over three years), else the nearest one."""
    covered = [
        i
        for i, col in enumerate(columns)
        if min(cell.x1, col.x1) - max(cell.x0, col.x0) >= 0.3 * max(col.x1 - col.x0, 1.0)
        or col.x0 <= (cell.x0 + cell.x1) / 2 <= col.x1
    ]
    return covered or [_column_of(cell, columns)]


# --- tables -----------------------------------------------------------------------------------------------------


def _is_year_line(line: _Line) -> bool:
    """A header line of years or periods ("2019 2018", "FY19 FY18") or of units ("US$000 US$000"), perhaps after
    a unit label on the left."""
    values = line.values
    return (
        line.is_value_line()
        and len(values) >= 2
        and all(_YEAR.match(c.text.strip()) or _UNIT.match(c.text.strip()) for c in values)
    )


def _in_value_column(line: _Line, values: Iterable[_Cell], label_right: float) -> bool:
    """A group label set in a value column ("Expenses:", "% Revenues by" / "Geography:" right-aligned over the first
    column of amounts, where the source table put it in its second cell): one phrase, no value, right of every row
    label, its right edge on the right edge of a column's amounts. (A centred phrase there is a unit or a header:
    "(in millions)" under the years.)"""
    if line.values or len(line.cells) != 1:
        return False
    cell = line.cells[0]
    if cell.x0 <= label_right + cell.size:
        return False
    return any(abs(cell.x1 - v.anchor) <= 0.6 * cell.size for v in values)


def _runs(lines: list[_Line]) -> Iterable[tuple[int, int]]:
    """Index ranges [start, end] of lines that may form a table body: value lines with two or more values, with at
    most _MAX_GAP_LINES label-only, group-label or one-value lines between them, none far apart."""
    i = 0
    while i < len(lines):
        if not (lines[i].is_value_line() and len(lines[i].values) >= 2):
            i += 1
            continue
        start = end = i
        j = i + 1
        gap_lines = 0
        left = min(c.start for c in lines[i].values)
        seen = [] if _is_year_line(lines[i]) else list(lines[i].values)  # amounts only: years are header
        label_right = max((c.x1 for c in lines[i].label_cells()), default=0.0)
        while j < len(lines):
            line, prev = lines[j], lines[j - 1]
            if line.center - prev.center > 3.5 * max(prev.size, line.size):
                break
            if line.is_value_line():
                if all(c.x1 < left for c in line.label_cells()):
                    left = min(left, min(c.start for c in line.values))
                    if not _is_year_line(line):
                        seen += line.values
                    label_right = max([label_right] + [c.x1 for c in line.label_cells()])
                    if len(line.values) >= 2:
                        end, gap_lines = j, 0
                    else:
                        gap_lines += 1
                else:
                    break
            elif all(c.x1 < left for c in line.cells) or _in_value_column(line, seen, label_right):
                gap_lines += 1  # a label alone: a section line, half of a wrapped label, a group label
            else:
                break
            if gap_lines > _MAX_GAP_LINES:
                break
            j += 1
        yield start, end
        i = end + 1


@dataclass
class _Geometry:
    """What the table's lines say about its layout, for telling a wrapped label from the next row."""

    columns: list[_Column]
    label_left: float
    label_right: float  # right edge of the widest label line: where labels wrap
    size: float
    pitch: float  # median centre distance between consecutive value lines
    # Centre distance up to which two lines are one cell (a label wrapped within its row), where the table has
    # cell padding (rows further apart than lines within a cell); None where every line is equally spaced.
    within_cell: float | None
    value_cells: list[_Cell] = field(default_factory=list)
    row_right: float = 0.0  # right edge of the labels of value lines (group labels in a value column lie beyond)

    def group_line(self, line: _Line) -> bool:
        return _in_value_column(line, self.value_cells, self.row_right)

    @property
    def left(self) -> float:
        return self.columns[0].x0

    @property
    def right(self) -> float:
        return self.columns[-1].x1

    def in_value_region(self, line: _Line) -> bool:
        """A phrase over the value columns that does not start at the labels' margin (prose does)."""
        return any(c.x1 > self.left - 0.5 * c.size and c.x0 > self.label_left + 2 * c.size for c in line.cells)


def _within_cell(lines: list[_Line], size: float) -> float | None:
    """Line spacing inside a cell when rows are visibly further apart (cell padding), else None. Half-line offsets
    (values centred beside a two-line label) are left out."""
    steps = [b.center - a.center for a, b in itertools.pairwise(lines) if b.center - a.center >= 0.9 * size]
    if not steps:
        return None
    tight = min(steps)
    if any(1.15 * tight < step < 2 * tight for step in steps):
        return 1.1 * tight
    return None


@dataclass
class _Row:
    label: list[_Cell]
    values: dict[int, str]
    last: float  # centre of the last line taken into the row
    group: bool = False  # a group label set in a value column

    @property
    def label_text(self) -> str:
        return " ".join(c.text for c in self.label).strip()


def _same_row(row: _Row, line: _Line, geo: _Geometry) -> bool:
    """Whether `line` belongs to `row`: values set beside the middle of a wrapped label (half a line away), a line
    within one cell of a padded table, or, in tables without padding, a label carried on: lower case first, or the
    row's last label line was full (the next word would not have fitted)."""
    distance = line.center - row.last
    if geo.group_line(line):  # a group label wrapped in its value column ("% Revenues by" / "Geography:")
        return row.group and distance <= 1.6 * geo.size and not row.label_text.endswith(":")
    if distance <= 0.75 * geo.size:
        return True
    cells = line.label_cells()
    if row.label_text.endswith(":") or (cells and cells[-1].text.endswith(":")):
        return False  # a section line ("Current assets:") is a row of its own
    if geo.within_cell is not None:
        return distance <= geo.within_cell
    if distance > 1.6 * geo.size:
        return False
    if not cells or not row.label:
        return False
    text = cells[0].text
    if text[:1].islower() or text.startswith(("&", "(")):
        return True
    if row.values:
        return False  # a row is complete once its values are set beside its last label line
    last = row.label[-1]
    word_width = (cells[0].x1 - cells[0].x0) * len(text.split()[0]) / max(len(text), 1)
    return last.x1 + 0.3 * last.size + word_width > geo.label_right


def _assemble(body: list[_Line], geo: _Geometry) -> list[_Row]:
    rows: list[_Row] = []
    for line in body:
        label = line.label_cells()
        values: dict[int, str] = {}
        for cell in line.values:
            index = _column_of(cell, geo.columns)
            values[index] = f"{values[index]} {cell.text}" if index in values else cell.text
        prev = rows[-1] if rows else None
        if prev is not None and not (values and prev.values) and _same_row(prev, line, geo):
            prev.label += label
            prev.values = prev.values or values
            prev.last = line.center
            continue
        if prev is not None and values and not label and not prev.values and not prev.label_text.endswith(":"):
            prev.values, prev.last = values, line.center  # values set at the bottom of a wrapped label
            continue
        rows.append(_Row(list(label), values, line.center, group=geo.group_line(line)))
    return rows


def _header(lines: list[_Line], above: int, geo: _Geometry) -> tuple[int, list[str]]:
    """Header lines directly above line index `above`: the first index taken and one merged header cell per
    column (index 0 = the label column). A label-column line joins only when it sits within half a line of a
    header line (a wrapped "(Dollars in thousands)" beside the years)."""
    taken: list[_Line] = []
    j = above - 1
    below = lines[above]
    while j >= 0 and len(taken) < _MAX_HEADER_LINES:
        line = lines[j]
        if below.center - line.center > max(1.5 * geo.pitch, 1.6 * max(line.size, below.size)):
            break
        if line.is_value_line() and not _is_year_line(line):
            break
        if not geo.in_value_region(line):
            beside_below = bool(taken) and below.center - line.center <= 0.75 * line.size
            beside_above = j > 0 and geo.in_value_region(lines[j - 1]) and (
                line.center - lines[j - 1].center <= 0.75 * line.size
            )
            if not (beside_below or beside_above):
                break
        prose = any(
            (c.x0 < geo.label_left + 2 * c.size and c.x1 > max(geo.label_right, geo.left - 2 * c.size) + c.size)
            or c.x1 > geo.right + 3 * c.size
            or len(c.text) > 60
            for c in line.cells
        )
        if prose:
            break
        taken.append(line)
        below = line
        j -= 1
    merged: list[list[str]] = [[] for _ in range(len(geo.columns) + 1)]
    for line in reversed(taken):
        labels = [c for c in line.cells if c.x1 <= geo.left - 0.2 * c.size and c.x0 < geo.label_right]
        merged[0] += [c.text for c in labels]
        heads = [c for c in line.cells if c not in labels]
        spans = [_header_columns(c, geo.columns) for c in heads]
        for k, (cell, span) in enumerate(zip(heads, spans, strict=True)):
            aligned = _right_aligned(cell, geo.columns)
            if aligned is not None:
                merged[aligned + 1].append(cell.text)
                continue
            claimed = {i for other, s in enumerate(spans) if other != k for i in s}
            span = _centred_span(cell, span, geo.columns, claimed - set(span))
            for index in span:
                merged[index + 1].append(cell.text)
    return above - len(taken), [" ".join(parts) for parts in merged]


def _right_aligned(cell: _Cell, columns: list[_Column]) -> int | None:
    """The column whose amounts end where the header phrase ends: a right-aligned header wider than its numbers
    ("Year-ended 31 March 2018" over one column) stands over that column alone, not over the neighbours it
    reaches into."""
    tol = 0.5 * cell.size
    aligned = [i for i, col in enumerate(columns) if abs(cell.x1 - col.x1) <= tol]
    return aligned[0] if len(aligned) == 1 else None


def _centred_span(cell: _Cell, span: list[int], columns: list[_Column], claimed: set[int]) -> list[int]:
    """The columns a header phrase stands over: a spanning one ("Years Ended December 31," over three years) is
    wider than one column and centred over its group. Of the runs of columns that hold the ones it covers, no
    column another phrase of its line covers, and room for the phrase, the one centred nearest the phrase; on a
    tie the narrowest (a phrase centred over the middle one of three columns that fits in it stands over it
    alone)."""
    middle = (cell.x0 + cell.x1) / 2
    width = cell.x1 - cell.x0 - 0.5 * cell.size

    def left(i: int) -> float:  # a "$" set at the left of the column is part of the cell the header is centred on
        return min(c.x0 for c in columns[i].cells)

    best, best_offset = span, float("inf")
    for i in range(span[0], -1, -1):
        if i in claimed:
            break
        for j in range(span[-1], len(columns)):
            if j in claimed:
                break
            if columns[j].x1 - left(i) < width:
                continue
            offset = abs((left(i) + columns[j].x1) / 2 - middle)
            if offset < best_offset - 0.5:
                best, best_offset = list(range(i, j + 1)), offset
    return best


def _label_only(line: _Line, geo: _Geometry) -> bool:
    return not line.values and all(c.x1 < geo.left for c in line.cells)


def _clipped(lines: list[_Line], start: int, end: int) -> tuple[list[_Line], list[int], int, int]:
    """The page's lines without what lies left of the table's labels (another column's prose), the original index
    of each line kept, and `start`/`end` in the new list."""
    firsts = [line.label_cells()[0].x0 for line in lines[start : end + 1] if line.values and line.label_cells()]
    if not firsts:
        return lines, list(range(len(lines))), start, end
    bound = statistics.median(firsts) - statistics.median(line.size for line in lines[start : end + 1])
    kept: list[_Line] = []
    index: list[int] = []
    for i, line in enumerate(lines):
        cells = [c for c in line.cells if c.x0 >= bound]
        if cells:
            kept.append(_Line(cells))
            index.append(i)
    return kept, index, index.index(start), index.index(end)


_PERIOD = re.compile(r"\b(?:19|20)\d\d\b|\bFY\s?\d\d\b|\bQ[1-4]\b|\bquarter\b", re.IGNORECASE)


def _rows_needed(header: list[str]) -> int:
    """Rows with values a table must have: two under column headers naming periods ("April 27, 2019", "FY18"), a
    shape prose does not take; three under other headers; four without any, where only a longer run of aligned
    rows tells a table from figures that happen to line up."""
    if all(_PERIOD.search(cell) for cell in header[1:] if cell) and sum(1 for cell in header[1:] if cell) >= 2:
        return 2
    return 3 if any(header) else 4


def _labelled(line: _Line, lines: list[_Line], start: int, end: int) -> bool:
    """Whether a value line has a row label: its own, or a label wrapped over two lines with the values set
    between them (a label-only line within half a line above or below)."""
    if line.label_cells():
        return True
    left = min(c.x0 for c in line.values)
    return any(
        not other.values
        and abs(other.center - line.center) <= 0.75 * line.size
        and all(c.x1 < left for c in other.cells)
        for other in lines[max(start - 1, 0) : end + 2]
    )


def _table(lines: list[_Line], start: int, end: int, page: int) -> tuple[PdfTable, int] | None:
    lines, index, start, end = _clipped(lines, start, end)
    while start <= end and _is_year_line(lines[start]):
        start += 1  # year lines on top of the run are its header
    if start > end:
        return None
    value_lines = [line for line in lines[start : end + 1] if line.values]
    columns = _columns(value_lines)
    if len(columns) < 2 or len(value_lines) < 2 or sum(1 for line in value_lines if len(line.values) >= 2) < 2:
        return None
    if sum(1 for col in columns if len(col.cells) >= 2) < 2 or not all(col.aligned() for col in columns):
        return None
    crowded = sum(
        1 for line in value_lines if len({_column_of(c, columns) for c in line.values}) < len(line.values)
    )
    if crowded > 0.2 * len(value_lines):
        return None  # values of one line falling into one column: the columns do not line up
    if sum(1 for line in value_lines if _labelled(line, lines, start, end)) < 0.5 * len(value_lines):
        return None  # a grid of numbers without row labels: nothing here to rebuild
    value_cells = [c for line in value_lines for c in line.values]
    row_labels = [c for line in value_lines for c in line.label_cells()]
    row_right = max((c.x1 for c in row_labels), default=0.0)
    labels = [
        c
        for line in lines[start : end + 1]
        if not _in_value_column(line, value_cells, row_right)
        for c in line.label_cells()
    ]
    size = statistics.median(line.size for line in value_lines)
    geo = _Geometry(
        columns,
        min((c.x0 for c in labels), default=columns[0].x0),
        max((c.x1 for c in labels), default=columns[0].x0),
        size,
        statistics.median(b.center - a.center for a, b in itertools.pairwise(value_lines)),
        _within_cell(lines[start : end + 1], size),
        value_cells,
        row_right,
    )
    # Label-only lines just above the first value line (a section line, the top of a wrapped label) belong to the
    # body when column headers stand above them; one within half a line under a header line is the header's.
    first = start
    while first > 0 and start - first < 4:
        line, upper = lines[first - 1], lines[first - 2] if first > 1 else None
        if not _label_only(line, geo) or lines[first].center - line.center > 2.6 * size:
            break
        if upper is not None and geo.in_value_region(upper) and line.center - upper.center <= 0.75 * size:
            break
        first -= 1
    # A group label set in a value column just above the first row ("Cloud and" / "License" / "Revenues:" under
    # the years) is the first row's group, not part of the header: its last line ends with a colon.
    if first == start and first > 0 and geo.group_line(lines[first - 1]):
        if lines[first - 1].cells[0].text.rstrip().endswith(":"):
            while (
                first > 0
                and start - first < _MAX_GAP_LINES
                and geo.group_line(lines[first - 1])
                and lines[first].center - lines[first - 1].center <= 1.6 * size
            ):
                first -= 1
    head_start, header = _header(lines, first, geo)
    if first != start and head_start == first:
        first = start  # no header above: those label lines are prose, not the table's
        head_start, header = _header(lines, first, geo)
    # The last part of a wrapped label under the last value line.
    stop = end
    while stop + 1 < len(lines) and _label_only(lines[stop + 1], geo):
        below = lines[stop + 1]
        if below.center - lines[stop].center > 0.75 * size and not below.cells[0].text[:1].islower():
            break
        stop += 1
    rows = _assemble(lines[first : stop + 1], geo)
    if sum(1 for row in rows if row.values) < _rows_needed(header):
        return None
    out = [header if any(header) else [""] * (len(columns) + 1)]
    out += [[row.label_text] + [row.values.get(i, "") for i in range(len(columns))] for row in rows]
    cells = [c for line in lines[head_start : stop + 1] for c in line.cells]
    bbox = (min(c.x0 for c in cells), min(c.top for c in cells), max(c.x1 for c in cells), max(c.bottom for c in cells))
    return PdfTable(page, bbox, out), index[stop]


def tables_from_words(words: list[dict], number: int) -> list[PdfTable]:
    """Tables among one page's words (pdfplumber's extract_words with extra_attrs=["size"], in points from the
    page's top-left corner); `number` is the 1-based page number stored in each table."""
    lines = _lines(words)
    tables: list[PdfTable] = []
    done = -1
    for start, end in _runs(lines):
        if start <= done:
            continue
        found = _table(lines, start, end, number)
        if found is not None:
            tables.append(found[0])
            done = found[1]
    return tables


@dataclass(frozen=True)
class PageTables:
    """The tables of one page, with the page's size and its words (x0, top, x1, bottom, text) for rebuilding the
    text of anything that runs out of a table (pdfminer sometimes joins a table's labels and the next paragraph)."""

    size: tuple[float, float]
    tables: list[PdfTable]
    words: list[tuple[float, float, float, float, str]]

    def text_outside(self, box: tuple[float, float, float, float], table: PdfTable) -> str:
        """The words within `box` but not within `table`, line by line."""
        x0, top, x1, bottom = table.bbox
        inside_box = [
            {"x0": w[0], "top": w[1], "x1": w[2], "bottom": w[3], "text": w[4]}
            for w in self.words
            if box[0] - 1 <= (w[0] + w[2]) / 2 <= box[2] + 1 and box[1] - 1 <= (w[1] + w[3]) / 2 <= box[3] + 1
            and not (x0 - 1 <= (w[0] + w[2]) / 2 <= x1 + 1 and top - 1 <= (w[1] + w[3]) / 2 <= bottom + 1)
        ]
        return "\n".join(" ".join(c.text for c in line.cells) for line in _lines(inside_box))


def _chars(objects: Iterable, height: float, mediabox: tuple) -> list[dict]:
    """The characters among pdfminer layout `objects` (in the order pdfminer made them, figures walked into) with
    only what word building reads (text, box, upright, size), computed as pdfplumber computes them for a page of
    `height` and `mediabox`. `page.chars` turns every character into a dict of all its attributes (colours,
    graphic state, font name resolved) first: half of the cost of reading a page's words, for nothing the tables
    use."""
    from pdfminer.layout import LTChar, LTContainer

    height = float(height)
    mb_x0, mb_top = float(mediabox[0]), float(mediabox[1])
    chars: list[dict] = []
    stack = list(reversed(list(objects)))
    while stack:
        obj = stack.pop()
        if isinstance(obj, LTChar):
            top = height - obj.y1 + mb_top
            chars.append(
                {
                    "text": obj.get_text(),
                    "x0": obj.x0 + mb_x0,
                    "x1": obj.x1 + mb_x0,
                    "top": top,
                    "bottom": height - obj.y0 + mb_top,
                    "doctop": top,
                    "upright": obj.upright,
                    "size": obj.size,
                }
            )
        elif isinstance(obj, LTContainer):
            stack.extend(reversed(list(obj)))
    return chars


def _words_of(objects: Iterable, page) -> list[dict]:
    """The words of pdfminer layout `objects` laid out on `page` (a pdfplumber Page: its boxes, not its layout)."""
    from pdfplumber.utils.text import WordExtractor

    extractor = WordExtractor(x_tolerance=1.5, y_tolerance=2, keep_blank_chars=False, extra_attrs=["size"])
    words = extractor.extract_words(_chars(objects, page.height, page.mediabox))
    if page.bbox[0] or page.bbox[1]:  # a page whose box does not start at the origin: coordinates from its corner
        for w in words:
            w["x0"] -= page.bbox[0]
            w["x1"] -= page.bbox[0]
            w["top"] -= page.bbox[1]
            w["bottom"] -= page.bbox[1]
    return words


def _words(page) -> list[dict]:
    return _words_of(page.layout, page)


# What table detection reads of a word, in this order: a captured page keeps its words as tuples of these (a
# word's dict from WordExtractor holds twice as many entries).
_WORD_KEYS = ("text", "x0", "x1", "top", "bottom", "size")


@dataclass(frozen=True)
class PageWords:
    """One page's words as table detection reads them, kept from unstructured's own pdfminer pass."""

    size: tuple[float, float]
    words: list[tuple]

    def dicts(self) -> list[dict]:
        return [dict(zip(_WORD_KEYS, w)) for w in self.words]


def find_tables(
    path: Path, pages: Iterable[int], captured: Mapping[int, PageWords] | None = None
) -> dict[int, PageTables]:
    """Tables on the given 1-based pages of the PDF at `path`, by page number; pages without any are left out.
    A page in `captured` (capture_words during unstructured's pass) is not read again; the others are read with
    pdfplumber."""
    captured = captured or {}
    wanted = sorted(set(pages))
    found: dict[int, PageTables] = {}

    def add(number: int, size: tuple[float, float], words: list[dict]) -> None:
        tables = tables_from_words(words, number)
        if tables:
            found[number] = PageTables(
                size, tables, [(w["x0"], w["top"], w["x1"], w["bottom"], w["text"]) for w in words]
            )

    for number in wanted:
        if number in captured:
            add(number, captured[number].size, captured[number].dicts())
    missing = [number for number in wanted if number not in captured]
    if not missing:
        return found
    import pdfplumber

    with pdfplumber.open(str(path), pages=missing) as pdf:
        for page in pdf.pages:
            add(page.page_number, (float(page.width), float(page.height)), _words(page))
            page.close()
    return dict(sorted(found.items()))


# --- words from unstructured's own pdfminer pass -----------------------------------------------------------------
#
# unstructured's fast strategy interprets every page with pdfminer (pdfminer_utils.open_pdfminer_pages_generator)
# and then drops the layout; reading a table page's words again with pdfplumber interprets the page a second time,
# about half of table detection's cost. capture_words keeps, for the pages that pass a gate, the words of that
# first interpretation instead. Two hooks, both looked up by name at call time inside unstructured:
# - pdfminer_utils.init_pdfminer: the device it makes notes each page's objects before pdfminer's layout analysis
#   regroups them into text boxes (pdfplumber reads a page without that analysis: the same characters, in the order
#   of the page's content stream, which word building depends on);
# - pdf._pdfminer_page_elements: once a page's elements are built, a page the gate accepts gets its words.
# Both hooks act only for the thread inside capture_words and are in place only while some thread is; a change in
# unstructured that bypasses them leaves nothing captured, and find_tables then reads those pages again.

_capture_state = threading.local()
_hooks_lock = threading.Lock()
_hooks_users = 0
_hooks_originals: list[tuple[object, str, object]] = []


@dataclass
class _Capture:
    gate: Callable[[list], bool]
    found: dict[int, PageWords]
    # the page pdfminer interpreted last: (its LTPage, its PDFPage, its objects before layout analysis)
    last: tuple | None = None


def _current() -> _Capture | None:
    return getattr(_capture_state, "capture", None)


def _hooked_init_pdfminer(original: Callable) -> Callable:
    def init_pdfminer(*args, **kwargs):
        device, interpreter = original(*args, **kwargs)
        capture = _current()
        end_page = getattr(device, "end_page", None)
        if capture is not None and end_page is not None:

            def noting_end_page(page, *rest, **kw):
                layout = getattr(device, "cur_item", None)  # the page's LTPage, set by begin_page
                capture.last = None if layout is None else (layout, page, list(layout))
                return end_page(page, *rest, **kw)

            device.end_page = noting_end_page
        return device, interpreter

    return init_pdfminer


def _hooked_page_elements(original: Callable) -> Callable:
    def page_elements(page, page_layout, *args, **kwargs):
        elements = original(page, page_layout, *args, **kwargs)
        capture = _current()
        if capture is None or capture.last is None or capture.last[0] is not page_layout:
            return elements
        _, pdf_page, objects = capture.last
        capture.last = None
        number = kwargs.get("page_number", args[0] if args else None)
        try:
            if isinstance(number, int) and capture.gate(elements):
                capture.found[number] = _page_words(pdf_page, objects, number)
        except Exception:  # noqa: BLE001 - never fail unstructured's reading; find_tables reads the page itself
            logging.getLogger(__name__).debug("words of page %s not captured", number, exc_info=True)
        return elements

    return page_elements


def _page_words(pdf_page, objects: list, number: int) -> PageWords:
    from pdfplumber.page import Page

    page = Page(None, pdf_page, number)  # pdfplumber's boxes of the page (read from its dictionary alone)
    words = _words_of(objects, page)
    return PageWords(
        (float(page.width), float(page.height)), [tuple(w[k] for k in _WORD_KEYS) for w in words]
    )


def _install_hooks() -> None:
    global _hooks_users
    with _hooks_lock:
        if _hooks_users == 0:
            from unstructured.partition import pdf
            from unstructured.partition.pdf_image import pdfminer_utils

            targets = [
                (pdfminer_utils, "init_pdfminer", _hooked_init_pdfminer),
                (pdf, "_pdfminer_page_elements", _hooked_page_elements),
            ]
            originals = [(module, name, getattr(module, name)) for module, name, _ in targets]
            for (module, name, hook), (_, _, original) in zip(targets, originals, strict=True):
                setattr(module, name, hook(original))
            _hooks_originals[:] = originals
        _hooks_users += 1


def _remove_hooks() -> None:
    global _hooks_users
    with _hooks_lock:
        _hooks_users -= 1
        if _hooks_users == 0:
            for module, name, original in _hooks_originals:
                setattr(module, name, original)
            _hooks_originals.clear()


@contextmanager
def capture_words(gate: Callable[[list], bool]) -> Iterator[dict[int, PageWords]]:
    """While inside, unstructured's fast PDF reading in this thread keeps the words (PageWords, by 1-based page
    number) of each page whose elements `gate` accepts; other pages keep nothing (a long filing's pages would cost
    memory for nothing). The dict yielded fills as unstructured reads; it may miss pages (unstructured read the
    file another way, or a page failed), which find_tables then reads itself."""
    found: dict[int, PageWords] = {}
    try:
        _install_hooks()
    except Exception:  # noqa: BLE001 - unstructured moved: table detection reads the pages itself
        logging.getLogger(__name__).debug("cannot capture pdfminer's pages", exc_info=True)
        hooked = False
    else:
        hooked = True
    if not hooked:
        yield found
        return
    outer = _current()
    _capture_state.capture = _Capture(gate, found)
    try:
        yield found
    finally:
        _capture_state.capture = outer
        _remove_hooks()
