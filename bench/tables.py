"""PDF table ingestion on TAT-QA tables rendered the way filings look: before (pdf_tables=False) and after.

    python -m bench.tables [--tables N] [--seed S] [--work-dir DIR] [--label NAME]

1. Render: N TAT-QA dev contexts (a seeded sample, default 60), each one HTML page as a filing page prints it: a
   heading ("Note 12. Sales by Contract Type"), the context's paragraphs as text (those up to the one that
   introduces the table, ending in ":", above it; the rest below), and the table without ruling lines (CSS
   border: none), labels left-aligned, numbers right-aligned, header rows as TAT-QA gives them (an empty first
   header cell, a stacked header such as "Years Ended September 30," over the years). All pages become PDFs in ONE
   LibreOffice call; renders are cached under the work directory (by seed and N, made again when a page's HTML
   changes).
2. Parse each PDF with `ingest.partition.partition_file(..., pdf_tables=False)` ("before": today's unstructured fast
   strategy) and `pdf_tables=True` ("after"), each timed per page (wall and CPU time; the two modes alternate which
   goes first), and chunk both with the Chunker ingestion builds (the embedder's tokenizer,
   IngestSettings.chunk_tokens / chunk_overlap_tokens), titled as ingestion titles them (ingest.titles).
3. (a) Cells recovered. The header rows of a source table are its leading rows whose first cell is empty or that
   hold no amount (a number that is not a year or date); every later row with a non-empty first cell (its row
   label) is a body row. Every non-empty body cell holding a digit counts. Its column header is the last header
   cell of its column holding a year, else a digit ("2019", "Dec 29, 2018"; not "(in millions)" below them), else
   the column's last non-empty header cell ("% Change"). A cell is recovered when ONE chunk contains its value, its
   row label and its column header (where its column has no header text: value and label). Texts are compared
   NFKC-folded, case-folded, without "$" and the "|" of Markdown rows, whitespace collapsed, and matched as whole
   tokens ("44.1" is not found in "144.1" nor in "44.15"; "2019" not in "20190").
   "Row intact", stricter: the chunk holds the row as a row, i.e. the label followed by the row's non-empty cells
   up to this one, in order and nothing between ("other 44.1 56.7"), and the column header. The loose rule is met
   by a small table read column by column into ONE chunk ("Fixed Price Other 2019 1,452.4 44.1 2018 ..."), where
   no reader can tell which number is whose; the strict one is not.
4. (b) recall@5 of the table holding the answer, for every question of the sampled contexts whose answer_from is
   "table" or "table-text". All chunks of all PDFs go into one scratch index (before and after separately) built
   as the service's (kb.container.build_scratch_index: Qdrant Edge, the configured hybrid fusion and BM25), chunks
   and sentence vectors embedded as ingestion embeds them (ingest.pipeline.embed_chunks), and each question is
   asked through RetrievalService.search_sync (top 5, no neighbour expansion). A question is a hit when one of its
   top 5 chunks (Passage.text) is from its context's PDF and holds table evidence, i.e. satisfies one of the
   question's evidence requirements, each a set of texts that must all be in that one chunk (matched as in (a)):
   - a body cell the answer uses (its number is in the derivation, e.g. "44.1-56.7", less the constants of the
     arithmetic such as the "/ 2" of an average; or, without a derivation, it equals a span answer): the cell's
     value with its row label;
   - a span answer that is a row label ("Cubic Global Defense"): the label with any number of its row;
   - a span answer that is a column header ("2019" of "Which years does the table cover?"): the header with any
     value of its column and that value's row label.
   "Row intact": the same with each value and label required as the row reads (as in (a)). Questions for which no
   requirement can be located in the table (the derivation's numbers are scaled, or the answer is in the text) are
   left out and counted as "unlocated". A chunk from the right document that names the label without a number of
   its row, or a number without its label (the column-by-column text of the "before" parser puts them in
   different chunks), is not evidence: a reader could not tell what the number is. document@5: the right document
   in the top 5, evidence or not.
5. Output: a table (cells recovered, recall@5, document@5, chunks, chunk tokens p10 / median, chunks under 32
   tokens, parse s/page, before and after), the JSON in bench/results/tables_<label>.json (with the machine line,
   per table and per question outcomes) and one JSON object printed last.
"""

from __future__ import annotations

import argparse
import html
import inspect
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "eval" / "tatqa" / "tatqa_dataset_dev.json"
RESULTS_DIR = ROOT / "bench" / "results"
WORK_DIR = Path("/tmp/kb-bench-tables")
TOP_K = 5
TABLE_ANSWERS = ("table", "table-text")
MODES = ("before", "after")

# ---------------------------------------------------------------------------------------------------------------
# Source tables (TAT-QA) and how their cells are read


_YEAR = re.compile(r"\b(?:19|20)\d\d\b")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?|\.\d+")
_AMOUNT = re.compile(r"^[(\-–—−]?\s*[$€£¥]?\s*\(?[\d,]*\.?\d+\)?\s*%?\)?$")


_SPACED_PERCENT = re.compile(r"(?<=\d)\s+%")


def normalise(text: str) -> str:
    """The form texts are compared in: NFKC (ligatures such as "ﬁ" folded), case-folded, "$" and the "|" of
    Markdown table rows dropped, whitespace collapsed, "92 %" written "92%"."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("$", " ").replace("|", " ")
    return _SPACED_PERCENT.sub("%", " ".join(text.split()))


def _needle_pattern(needle: str) -> re.Pattern[str]:
    # Whole tokens: no word character just before or after, nor a decimal or thousands part glued to a number.
    return re.compile(r"(?<!\w)(?<!\d[.,])" + re.escape(needle) + r"(?![.,]\d)(?!\w)")


def contains(text: str, needle: str) -> bool:
    """`needle` (normalised) occurs in `text` (normalised) as a whole token sequence."""
    if not needle:
        return True
    return needle in text and _needle_pattern(needle).search(text) is not None


def holds(text: str, needles: Iterable[str]) -> bool:
    """Every one of `needles` is in `text` (both normalised)."""
    return all(contains(text, n) for n in needles)


def is_amount(cell: str) -> bool:
    """A number that is a value, not a header: "1,452.4", "$ (1,234)", "4.00%", not "2019" or "Dec 29, 2018"."""
    stripped = cell.strip()
    return bool(stripped) and bool(_AMOUNT.match(stripped)) and not _YEAR.fullmatch(stripped.strip("()"))


def numbers_in(text: str) -> list[float]:
    """The numbers written in a derivation or answer ("(44.1-56.7)/56.7" -> [44.1, 56.7, 56.7]), commas dropped."""
    found = []
    for match in _NUMBER.finditer(text):
        try:
            found.append(float(match.group().replace(",", "")))
        except ValueError:
            continue
    return found


_CONSTANT = re.compile(r"[/*]\s*(?:[1-9]|1[0-2]|100)(?![\d.,])|-\s*1\s*$")


def derivation_numbers(derivation: str) -> set[float]:
    """The table numbers a derivation uses: its numbers less the constants of the arithmetic around them ("/ 2" of
    an average, "* 100", the "- 1" of "497 / 533 - 1"), which would otherwise match any small cell."""
    return set(numbers_in(_CONSTANT.sub(" ", derivation)))


def cell_number(cell: str) -> float | None:
    """The absolute value a body cell shows ("$ (1,234)" -> 1234.0, "4.00%" -> 4.0); None if it is not a number."""
    if not is_amount(cell):
        return None
    found = numbers_in(cell)
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class Cell:
    row: int
    col: int
    value: str  # normalised
    label: str  # normalised row label
    header: str | None  # normalised column header, None when the column has no header text
    in_row: str  # normalised: the row label and the row's non-empty cells up to this one, in order

    def needles(self, strict: bool = False) -> tuple[str, ...]:
        """What one chunk must hold for the cell to be recovered: its value, label and column header; `strict`:
        its row read as a row (label, then the row's cells up to this one) and its column header."""
        return ((self.in_row,) if strict else (self.value, self.label)) + ((self.header,) if self.header else ())


@dataclass
class SourceTable:
    """One TAT-QA context: its table, paragraphs and questions, and the PDF rendered from it."""

    uid: str
    rows: list[list[str]]
    paragraphs: list[str]
    questions: list[dict[str, Any]]
    heading: str = ""
    header_rows: int = field(init=False)

    def __post_init__(self) -> None:
        width = max(len(r) for r in self.rows)
        self.rows = [[c.strip() for c in r] + [""] * (width - len(r)) for r in self.rows]
        self.header_rows = header_row_count(self.rows)

    @property
    def document_id(self) -> str:
        return self.uid

    @property
    def filename(self) -> str:
        return f"tatqa-{self.uid}.pdf"

    def column_header(self, col: int) -> str | None:
        """The header cell that names the column's period: the last one with a year, else with a digit, else the
        last non-empty one ("(in millions)" under "2019" is not the header of the 2019 column)."""
        cells = [r[col] for r in self.rows[: self.header_rows] if r[col]]
        with_year = [c for c in cells if _YEAR.search(c)]
        with_digit = [c for c in cells if any(ch.isdigit() for ch in c)]
        chosen = (with_year or with_digit or cells or [None])[-1]
        return normalise(chosen) if chosen else None

    def body(self) -> list[tuple[int, list[str]]]:
        return [(i, r) for i, r in enumerate(self.rows) if i >= self.header_rows and r[0]]

    def cells(self) -> list[Cell]:
        """Every non-empty body cell holding a digit, with its row label and column header."""
        found = []
        for i, row in self.body():
            for j in range(1, len(row)):
                if row[j] and any(ch.isdigit() for ch in row[j]):
                    in_row = normalise(" ".join(c for c in row[: j + 1] if c))
                    found.append(Cell(i, j, normalise(row[j]), normalise(row[0]), self.column_header(j), in_row))
        return found

    def table_questions(self) -> list[dict[str, Any]]:
        return [q for q in self.questions if q.get("answer_from") in TABLE_ANSWERS]


def header_row_count(rows: Sequence[Sequence[str]]) -> int:
    """Leading rows that head the table: those whose first cell is empty, or that hold no amount in their other
    cells (years, dates, "Total", "(in millions)"); a row with a label and an amount starts the body. A caption row
    (a label alone) counts only as the first row, as "Revenue:" further down is the label of a group of rows."""
    count = 0
    for i, row in enumerate(rows):
        label, rest = row[0], [c for c in row[1:] if c]
        if label and (any(is_amount(c) for c in rest) or (not rest and i > 0)):
            break
        count += 1
    return min(count, max(len(rows) - 1, 0))


def evidence(table: SourceTable, question: dict[str, Any], strict: bool = False) -> list[tuple[str, ...]]:
    """The question's evidence requirements in its table (see the module docstring): each a tuple of normalised
    texts that one chunk must hold together; [] when none can be located. `strict`: a cell's value and label are
    required as its row reads (Cell.in_row) instead of anywhere in the chunk."""

    def cell_needles(cell: Cell, header: bool = False) -> tuple[str, ...]:
        found = (cell.in_row,) if strict else (cell.value, cell.label)
        return ((cell.header,) if header and cell.header else ()) + found

    requirements: list[tuple[str, ...]] = []
    cells = table.cells()
    used = derivation_numbers(str(question.get("derivation") or ""))
    answers = question.get("answer")
    spans = [str(a) for a in answers] if isinstance(answers, list) else []
    if question.get("answer_type") in ("span", "multi-span", "count") and not used:
        # Spans without a derivation: the cell equal to the answer, wherever it is in the table.
        wanted = {normalise(s) for s in spans if s.strip()}
        for cell in cells:
            if cell.value in wanted:  # a body cell: its value with its row label
                requirements.append(cell_needles(cell))
            elif cell.label in wanted and is_amount(table.rows[cell.row][cell.col]):  # a row label: with a number
                requirements.append(cell_needles(cell))
            elif cell.header in wanted:  # a column header: with a value of the column and its label
                requirements.append(cell_needles(cell, header=True))
    for cell in cells:
        # Derivations: every body cell whose number the derivation uses ("(44.1-56.7)/56.7").
        number = cell_number(table.rows[cell.row][cell.col])
        if number is not None and number in used:
            requirements.append(cell_needles(cell))
    return list(dict.fromkeys(requirements))


def load_tables(path: Path, count: int, seed: int) -> list[SourceTable]:
    """`count` contexts of the TAT-QA set at `path`, a seeded sample in the set's order."""
    contexts = json.loads(path.read_text(encoding="utf-8"))
    picked = sorted(random.Random(seed).sample(range(len(contexts)), min(count, len(contexts))))
    tables = []
    for number, index in enumerate(picked, 1):
        context = contexts[index]
        paragraphs = [p["text"] for p in sorted(context["paragraphs"], key=lambda p: int(p["order"]))]
        table = SourceTable(context["table"]["uid"], context["table"]["table"], paragraphs, context["questions"])
        table.heading = f"Note {number + 3}. {topic(table)}"
        tables.append(table)
    return tables


_LEAD = re.compile(r"^([A-Z][^.:;]{3,60}):\s")


def topic(table: SourceTable) -> str:
    """A heading for the page, as a filing's note would have: the lead phrase of its first paragraph ("Sales by
    Contract Type: ..."), else the label of the table's last row without "Total", else a generic one."""
    for paragraph in table.paragraphs[:1]:
        lead = _LEAD.match(paragraph)
        if lead and len(lead.group(1).split()) <= 8:
            return lead.group(1)
    for _, row in table.body()[::-1]:
        label = re.sub(r"^total\s+", "", row[0], flags=re.IGNORECASE).strip(" :")
        if 2 < len(label) <= 60 and label.casefold() not in ("total", "other", "net"):
            return label[0].upper() + label[1:]
    return "Selected Financial Data"


# ---------------------------------------------------------------------------------------------------------------
# Rendering

_PAGE_STYLE = """
body { font-family: 'Liberation Serif', 'Times New Roman', serif; font-size: 10pt; }
h3 { font-size: 11pt; font-weight: bold; margin: 12pt 0 6pt 0; }
p { text-align: justify; margin: 0 0 6pt 0; }
table { border-collapse: collapse; border: none; width: 100%; margin: 6pt 0 10pt 0; }
td, th { border: none; padding: 1pt 4pt; vertical-align: bottom; }
td, th { font-family: 'Liberation Serif', serif; font-size: 9pt; }
th { font-weight: bold; }
"""


def page_html(table: SourceTable) -> str:
    """One filing-like page: heading, the paragraphs that introduce the table, the table, the other paragraphs."""
    before = 1 if table.paragraphs else 0
    for i, paragraph in enumerate(table.paragraphs):
        if paragraph.rstrip().endswith(":"):
            before = i + 1
            break
    width = len(table.rows[0])
    # LibreOffice's HTML import sizes a table by its attributes, not by CSS: the widths go on the first row's cells.
    label_width = 40 if width > 2 else 60
    widths = [label_width] + [(100 - label_width) // max(1, width - 1)] * (width - 1)
    rows = []
    for i, row in enumerate(table.rows):
        tag = "th" if i < table.header_rows else "td"
        cells = []
        for j, cell in enumerate(row):
            align = "left" if j == 0 else "right"
            size = f' width="{widths[j]}%"' if i == 0 else ""
            cells.append(f'<{tag} align="{align}"{size} style="border: none">{html.escape(cell)}</{tag}>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    paragraphs = [f"<p>{html.escape(p)}</p>" for p in table.paragraphs]
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(table.heading)}</title><style>{_PAGE_STYLE}</style></head><body>\n"
        f"<h3>{html.escape(table.heading)}</h3>\n"
        + "\n".join(paragraphs[:before])
        + '\n<table width="100%" border="0" cellspacing="0" cellpadding="2" style="border: none">\n'
        + "\n".join(rows)
        + "\n</table>\n"
        + "\n".join(paragraphs[before:])
        + "\n</body></html>\n"
    )


def render(tables: Sequence[SourceTable], directory: Path, soffice: str = "soffice") -> list[Path]:
    """The PDF of each table in `directory`, next to the HTML page it was made from. Pages whose PDF is there and
    whose HTML is unchanged are not made again; all the others in ONE LibreOffice call (it starts in seconds, then
    converts a page in a fraction of one), with a private profile so that it neither waits for nor disturbs another
    LibreOffice of the same user."""
    directory.mkdir(parents=True, exist_ok=True)
    pdfs, missing = [], []
    for table in tables:
        source, pdf = directory / Path(table.filename).with_suffix(".html").name, directory / table.filename
        page = page_html(table)
        if not pdf.is_file() or not source.is_file() or source.read_text(encoding="utf-8") != page:
            source.write_text(page, encoding="utf-8")
            pdf.unlink(missing_ok=True)
            missing.append(source)
        pdfs.append(pdf)
    if missing:
        with tempfile.TemporaryDirectory(prefix="kb-bench-tables-lo-") as profile:
            command = [soffice, f"-env:UserInstallation={Path(profile).as_uri()}", "--headless", "--norestore",
                       "--infilter=HTML (StarWriter)", "--convert-to", "pdf:writer_pdf_Export",
                       "--outdir", str(directory), *map(str, missing)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        absent = [p.name for p in pdfs if not p.is_file()]
        if absent:
            raise RuntimeError(f"LibreOffice made no PDF of {absent[:5]} (exit {done.returncode}): "
                               f"{done.stderr[-500:]}")
    return pdfs


# ---------------------------------------------------------------------------------------------------------------
# Parsing and chunking


def partitioner() -> tuple[Callable[..., Any], bool]:
    """`partition_file` and whether it takes `pdf_tables` (without it, before and after are both today's parser)."""
    from ingest.partition import partition_file

    return partition_file, "pdf_tables" in inspect.signature(partition_file).parameters


@dataclass
class Parsed:
    """One PDF as one mode parsed and chunked it."""

    table: SourceTable
    pages: int
    warnings: int  # warnings ingest.partition logged while parsing it (a table finder that failed and fell back)
    parse_s: float  # wall time
    parse_cpu_s: float  # this process's CPU time: less swayed by the other work on a busy machine
    chunks: list[Any]  # kb.models.Chunk

    def texts(self) -> list[str]:
        """The chunks' text as a search returns it (Passage.text), normalised."""
        return [normalise(c.text) for c in self.chunks]


def document_title(blocks: Sequence[Any], filename: str) -> str | None:
    """The title ingestion gives a document's chunks (ingest.titles, where this tree has it; None otherwise)."""
    try:
        from ingest.titles import document_title as title_of
    except ImportError:
        return None
    return title_of(blocks, filename)


def parse_all(pdfs: Sequence[Path], tables: Sequence[SourceTable], chunker: Any) -> dict[str, list[Parsed]]:
    """Each PDF parsed before and after (the two modes interleaved per file, so a change in the machine's load
    falls on both) and chunked."""
    partition_file, has_flag = partitioner()

    def parse(path: Path, after: bool) -> list[Any]:
        return partition_file(path, path.name, pdf_tables=after) if has_flag else partition_file(path, path.name)

    for after in (False, True):  # imports, models and caches warmed outside the timings
        parse(pdfs[0], after)
    parsed: dict[str, list[Parsed]] = {mode: [] for mode in MODES}
    warnings = _WarningCount()
    logging.getLogger("ingest").addHandler(warnings)
    try:
        for number, (path, table) in enumerate(zip(pdfs, tables, strict=True)):
            # The second parse of a file finds it in the page cache: before goes first on every other file.
            for mode in MODES if number % 2 == 0 else MODES[::-1]:
                warnings.count = 0
                started, cpu_started = time.perf_counter(), time.process_time()
                blocks = parse(path, mode == "after")
                seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
                pages = max((b.page or 0 for b in blocks), default=0) or 1
                chunks = chunker.chunk(blocks, document_id=table.document_id, filename=table.filename, groups=[])
                title = document_title(blocks, table.filename)
                for chunk in chunks:
                    chunk.title = title  # as ingest.pipeline.index_blocks titles them (BM25 reads it)
                parsed[mode].append(Parsed(table, pages, warnings.count, seconds, cpu_seconds, chunks))
    finally:
        logging.getLogger("ingest").removeHandler(warnings)
    return parsed


class _WarningCount(logging.Handler):
    """Counts the warnings logged while it is attached: a parser that fell back is measured as such, not hidden."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def cells_recovered(table: SourceTable, chunk_texts: Sequence[str], strict: bool = False) -> tuple[int, int]:
    """(recovered, all) cells of `table` (see the module docstring) in a document's normalised chunk texts."""
    cells = table.cells()
    return sum(any(holds(text, cell.needles(strict)) for text in chunk_texts) for cell in cells), len(cells)


def holds_evidence(text: str, requirements: Sequence[tuple[str, ...]]) -> bool:
    """The normalised chunk text satisfies one of the question's evidence requirements."""
    return any(holds(text, needles) for needles in requirements)


def is_hit(ranked: Sequence[tuple[str, str]], document_id: str, requirements: Sequence[tuple[str, ...]],
           k: int = TOP_K) -> bool:  # fmt: skip
    """One of the first `k` (document id, normalised text) results is from the question's document and holds
    table evidence."""
    return any(doc == document_id and holds_evidence(text, requirements) for doc, text in ranked[:k])


def percentile(values: Sequence[float], q: float) -> float:
    from evaluation.metrics import percentile as numpy_percentile

    return round(numpy_percentile(values, q), 1)


# ---------------------------------------------------------------------------------------------------------------
# Retrieval


class _MemoEmbedder:
    """An embedder that embeds each distinct text once: the paragraphs' chunks are mostly the same before and
    after, every question is asked of both, and embedding is most of the run's time."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder
        self._vectors: dict[str, list[float]] = {}
        self._queries: dict[str, list[float]] = {}

    @property
    def dimension(self) -> int:
        return int(self._embedder.dimension)

    def embed_query(self, text: str) -> list[float]:
        if text not in self._queries:
            self._queries[text] = self._embedder.embed_query(text)
        return self._queries[text]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        self._vectors.update(zip(missing, self._embedder.embed_documents(missing), strict=True))
        return [self._vectors[t] for t in texts]


def retrieval(
    settings: Any, memo: _MemoEmbedder, parsed: Sequence[Parsed], questions: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every question asked against a scratch index of every chunk of `parsed`: per question, whether its document
    is in the top 5 and whether a top-5 chunk of it holds its evidence."""
    from ingest.pipeline import embed_chunks
    from kb.container import build_scratch_index
    from service.search.service import RetrievalService

    languages = settings.embedder.languages if settings.ingest.sentence_vectors else None
    chunks = [c for p in parsed for c in p.chunks]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="kb-bench-tables-index-") as directory:
        index = build_scratch_index(settings, memo.dimension, Path(directory) / "index")
        try:
            for first in range(0, len(chunks), 64):
                batch = chunks[first : first + 64]
                index.upsert(batch, *embed_chunks(memo, batch, languages))  # type: ignore[arg-type]
            service = RetrievalService(
                memo, index, settings.retrieval, languages=settings.embedder.languages  # type: ignore[arg-type]
            )
            for question in questions:
                passages = service.search_sync(question["question"], top_k=TOP_K, expand=0).passages
                ranked = [(p.document_id, normalise(p.text)) for p in passages]
                outcomes.append({
                    "uid": question["uid"],
                    "document": any(doc == question["document_id"] for doc, _ in ranked[:TOP_K]),
                    "hit": is_hit(ranked, question["document_id"], question["requirements"]),
                    "hit_in_row": is_hit(ranked, question["document_id"], question["requirements_in_row"]),
                })  # fmt: skip
        finally:
            index.close()
    return outcomes


# ---------------------------------------------------------------------------------------------------------------
# The run


def _ratio(after: float, before: float) -> float | None:
    return round(after / before, 2) if before else None


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def summarise(
    mode: str, parsed: Sequence[Parsed], outcomes: Sequence[dict[str, Any]], count: Callable[[str], int]
) -> dict[str, Any]:
    """One mode's numbers: cells recovered (in one chunk, and with their row intact), recall@5 (both evidence
    rules, and the document alone), chunk sizes in the embedder's tokens, parse time per page."""
    recovered = in_row = total = 0
    for item in parsed:
        texts = item.texts()
        found, cells = cells_recovered(item.table, texts)
        recovered, total = recovered + found, total + cells
        in_row += cells_recovered(item.table, texts, strict=True)[0]
    tokens = [count(c.text) for item in parsed for c in item.chunks]
    pages = sum(item.pages for item in parsed)
    parse_s = sum(item.parse_s for item in parsed)
    parse_cpu_s = sum(item.parse_cpu_s for item in parsed)
    return {
        "mode": mode,
        "cells": total,
        "cells_recovered": recovered,
        "cells_recovered_share": _share(recovered, total),
        "cells_in_row": in_row,
        "cells_in_row_share": _share(in_row, total),
        "questions": len(outcomes),
        "recall@5": _share(sum(o["hit"] for o in outcomes), len(outcomes)),
        "recall@5_in_row": _share(sum(o["hit_in_row"] for o in outcomes), len(outcomes)),
        "document@5": _share(sum(o["document"] for o in outcomes), len(outcomes)),
        "chunks": len(tokens),
        "tokens_p10": percentile(tokens, 10),
        "tokens_median": percentile(tokens, 50),
        "tokens_p90": percentile(tokens, 90),
        "chunks_under_32_tokens": sum(t < 32 for t in tokens),
        "pages": pages,
        "parse_s": round(parse_s, 2),
        "parse_s_per_page": round(parse_s / pages, 3) if pages else 0.0,
        "parse_cpu_s": round(parse_cpu_s, 2),
        "parse_cpu_s_per_page": round(parse_cpu_s / pages, 3) if pages else 0.0,
        "parse_warnings": sum(item.warnings for item in parsed),
    }


COLUMNS = (("mode", "mode"), ("cells recovered", "cells_recovered_share"), ("cells, row intact", "cells_in_row_share"),
           ("recall@5", "recall@5"), ("recall@5, row intact", "recall@5_in_row"), ("document@5", "document@5"),
           ("chunks", "chunks"), ("median tokens", "tokens_median"), ("p10 tokens", "tokens_p10"),
           ("chunks <32 tokens", "chunks_under_32_tokens"), ("parse s/page", "parse_s_per_page"),
           ("parse CPU s/page", "parse_cpu_s_per_page"))  # fmt: skip
SHARES = {"cells_recovered_share", "cells_in_row_share", "recall@5", "recall@5_in_row", "document@5"}


def _cell(report: dict[str, Any], key: str) -> str:
    value = report[key]
    return f"{value * 100:.1f}%" if key in SHARES else str(value)


def text_table(reports: Sequence[dict[str, Any]]) -> str:
    rows = [[title for title, _ in COLUMNS]] + [[_cell(r, key) for _, key in COLUMNS] for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, key) for _, key in COLUMNS) + " |" for r in reports]
    return "\n".join(lines)


SECTION = "## PDF tables (TAT-QA rendered as filings)"


def section(summary: dict[str, Any]) -> str:
    """The bench/RESULTS.md section of a run."""
    machine = summary["machine"]
    before, after = summary["results"]
    return f"""{SECTION}

`python -m bench.tables {' '.join(summary.get('argv', []))}` on {summary['date']}: {machine['cpu']},
{machine['cores']} cores, {machine['memory_gib']} GiB, Python {machine['python']}; 1-minute load average
{summary['load_start']} at the start and {summary['load_end']} at the end (other work shared the cores);
{summary['elapsed_s']} s in all, {summary['process_cpu_s']} s of its own CPU time. {summary['tables']} TAT-QA dev
tables (seed {summary['seed']}) rendered by LibreOffice into {before['pages']} filing-like PDF pages (heading,
paragraphs, the table without ruling lines, numbers right-aligned, TAT-QA's header rows), parsed with
`partition_file(..., pdf_tables=False)` (before) and `pdf_tables=True` (after), chunked by ingestion's Chunker
({summary['chunker_max_tokens']} tokens, overlap {summary['chunk_overlap_tokens']}), indexed in a scratch Qdrant Edge
index with the service's hybrid search and asked through RetrievalService (top {summary['top_k']}).

{markdown(summary['results'])}

- cells recovered: share of the {before['cells']} numeric body cells for which one chunk holds the value, its row
  label and its column header (the year or period); row intact: the chunk holds the row as a row (label, then the
  row's cells up to this one, in order) and the header. A small table read column by column into one chunk meets
  the first rule, not the second.
- recall@5: share of the {before['questions']} table / table-text questions (of {summary['table_questions']};
  {summary['questions_unlocated']} whose evidence cannot be located in the table are left out) with a top-5 chunk from
  the right PDF holding a cell the answer uses (a number of its derivation, or the span answer) together with its row
  label (a row-label answer: with a number of its row; a header answer: with a value of its column and its label);
  row intact: the same with label and value as the row reads. document@5: the right PDF in the top 5 at all.
- recall@5 gain: {summary['recall_gain_points']} points ({summary['recall_in_row_gain_points']} row intact). Parse time
  after / before per page: {summary['parse_ratio']}x wall, {summary['parse_cpu_ratio']}x CPU; the parser logged
  {after['parse_warnings']} warnings (fallbacks) after.
- Chunk tokens: the embedder's tokens of each chunk's text; p10 / median / p90 before {before['tokens_p10']} /
  {before['tokens_median']} / {before['tokens_p90']}, after {after['tokens_p10']} / {after['tokens_median']} /
  {after['tokens_p90']}.
"""


def run(count: int, seed: int, work_dir: Path, dataset: Path = DATASET) -> dict[str, Any]:
    from evaluation.run import RetrievalEvaluation
    from kb.container import build_embedder
    from kb.settings import Settings

    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    tables = load_tables(dataset, count, seed)
    render_started = time.perf_counter()
    pdfs = render(tables, work_dir / f"seed{seed}-n{count}", shutil.which("soffice") or "soffice")
    render_s = time.perf_counter() - render_started

    settings = Settings()
    embedder = build_embedder(settings)
    chunker = RetrievalEvaluation(settings, embedder).chunker()  # as ingest.pipeline builds it
    _, has_flag = partitioner()
    print(f"[tables] {len(pdfs)} PDFs under {pdfs[0].parent} ({render_s:.1f} s); parsing", file=sys.stderr, flush=True)
    parsed = parse_all(pdfs, tables, chunker)

    questions = []
    unlocated = 0
    for table in tables:
        for question in table.table_questions():
            requirements = evidence(table, question)
            if not requirements:
                unlocated += 1
                continue
            questions.append({**question, "document_id": table.document_id, "requirements": requirements,
                              "requirements_in_row": evidence(table, question, strict=True)})

    memo = _MemoEmbedder(embedder)
    reports, outcomes = [], {}
    for mode in MODES:
        print(f"[tables] {mode}: embedding, indexing, {len(questions)} questions", file=sys.stderr, flush=True)
        mode_started = time.perf_counter()
        outcomes[mode] = retrieval(settings, memo, parsed[mode], questions)
        report = summarise(mode, parsed[mode], outcomes[mode], chunker.count)
        report["retrieval_s"] = round(time.perf_counter() - mode_started, 1)
        reports.append(report)
    before, after = reports
    table_questions = sum(len(t.table_questions()) for t in tables)
    return {
        "bench": "tables",
        "date": date.today().isoformat(),
        "machine": describe(),
        "dataset": str(dataset),
        "tables": len(tables),
        "seed": seed,
        "pdf_tables_flag": has_flag,
        "table_questions": table_questions,
        "questions_unlocated": unlocated,
        "chunk_tokens": settings.ingest.chunk_tokens,
        "chunk_overlap_tokens": settings.ingest.chunk_overlap_tokens,
        "chunker_max_tokens": chunker.max_tokens,
        "top_k": TOP_K,
        "render_s": round(render_s, 1),
        "results": reports,
        "parse_ratio": _ratio(after["parse_s_per_page"], before["parse_s_per_page"]),
        "parse_cpu_ratio": _ratio(after["parse_cpu_s_per_page"], before["parse_cpu_s_per_page"]),
        "recall_gain_points": round((after["recall@5"] - before["recall@5"]) * 100, 1),
        "recall_in_row_gain_points": round((after["recall@5_in_row"] - before["recall@5_in_row"]) * 100, 1),
        "per_table": [
            {"uid": b.table.uid, "pages": b.pages, "cells": cells_recovered(b.table, b.texts())[1],
             "before": cells_recovered(b.table, b.texts())[0], "after": cells_recovered(a.table, a.texts())[0],
             "chunks_before": len(b.chunks), "chunks_after": len(a.chunks)}
            for b, a in zip(parsed["before"], parsed["after"], strict=True)
        ],  # fmt: skip
        "questions": [
            {"uid": q["uid"], "answer_from": q["answer_from"], "before": ob["hit"], "after": oa["hit"],
             "before_in_row": ob["hit_in_row"], "after_in_row": oa["hit_in_row"]}
            for q, ob, oa in zip(questions, outcomes["before"], outcomes["after"], strict=True)
        ],
        "elapsed_s": round(time.perf_counter() - started, 1),
        # The run's own CPU time (all its threads; LibreOffice not counted): what it costs on a machine to itself.
        "process_cpu_s": round(time.process_time(), 1),
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=60, help="TAT-QA contexts to render (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="of the sample of contexts (default 0)")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR, help=f"rendered PDFs, cached (default {WORK_DIR})")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--label", default=None, help="write bench/results/tables_<label>.json")
    parser.add_argument("--section", type=Path, default=None, help="write the bench/RESULTS.md section text here")
    args = parser.parse_args()
    summary = run(args.tables, args.seed, args.work_dir, args.dataset)
    summary["argv"] = sys.argv[1:]
    print(text_table(summary["results"]))
    print(f"parse after/before per page: {summary['parse_ratio']}x wall, {summary['parse_cpu_ratio']}x CPU;"
          f" recall@5 gain: {summary['recall_gain_points']} points ({summary['recall_in_row_gain_points']} row"
          f" intact); {summary['questions_unlocated']} of {summary['table_questions']} table questions unlocated")
    failed = {r["mode"]: r["parse_warnings"] for r in summary["results"] if r["parse_warnings"]}
    if failed:
        print(f"the parser logged warnings (a fallback?): {failed}; see the log above", file=sys.stderr)
    if not summary["pdf_tables_flag"]:
        print("partition_file has no pdf_tables yet: before and after are the same parser", file=sys.stderr)
    if args.label:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        target = RESULTS_DIR / f"tables_{args.label}.json"
        target.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {target.relative_to(ROOT)}", file=sys.stderr)
    if args.section:
        args.section.write_text(section(summary), encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("per_table", "questions")}, ensure_ascii=False))


if __name__ == "__main__":
    main()
