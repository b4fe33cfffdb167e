"""Tables of text-based PDFs rebuilt at ingestion (issue 19): real PDFs made with LibreOffice from HTML laid out like
a filing (no ruling lines, "$" in its own column, negatives in parentheses, a label wrapped over two lines), read by
the real partition_file and chunked by the real Chunker with the embedding model's tokenizer."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ingest.chunk import Chunker, html_table_rows
from ingest.partition import partition_file

pytestmark = pytest.mark.integration

CORPUS_PDF = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "docs" / "pdf"
if not CORPUS_PDF.is_dir():
    CORPUS_PDF = Path("/work/shared/corpus/docs/pdf")

YEARS = ("2019", "2018", "2017")
WRAPPED = "Selling, general and administrative expenses excluding amortization of acquired intangible assets"
ROWS = [
    ("Net sales", ["$", "1,496.5", "$", "1,202.9", "$", "1,107.7"]),
    ("Cost of sales", ["", "(1,010.2)", "", "(845.3)", "", "(790.1)"]),
    ("Restructuring charges", ["", "—", "", "12.4", "", "—"]),
    (WRAPPED, ["", "201.3", "", "188.0", "", "176.9"]),
    ("Operating income", ["$", "284.9", "$", "157.2", "$", "140.7"]),
]
BEFORE = "Net sales grew in 2019 because of higher volumes in every region, as the statement below shows in detail."
AFTER = "Operating income rose on the higher sales; restructuring ended in 2018 and no further charges are expected."


def _filing_html(valign: str) -> str:
    """A statement the way EDGAR filings set it: a spanning period header over the years, "$" in a cell of its
    own at the left of each amount, amounts right-aligned, no borders; `valign` places the amounts beside a wrapped
    label (middle: between its two lines; bottom: on its last line)."""
    def amount_cells(values: list[str]) -> str:
        out = ""
        for i in range(0, len(values), 2):
            out += f'<td align="left" valign="{valign}">{values[i]}</td>'
            out += f'<td align="right" valign="{valign}" nowrap>{values[i + 1]}</td>'
        return out

    header = (
        '<tr><td width="38%"></td><td colspan="6" align="center">Years Ended December 31,</td></tr>'
        "<tr><td></td>" + "".join(f'<td colspan="2" align="center">{y}</td>' for y in YEARS) + "</tr>"
    )
    body = "".join(f'<tr><td valign="top">{label}</td>{amount_cells(values)}</tr>' for label, values in ROWS)
    return (
        "<html><head><meta charset='utf-8'></head><body style=\"font-family:'Liberation Serif';font-size:10pt\">"
        # unstructured takes the top line of a page for a page header: a title stands there.
        "<p><b>Item 7. Management's Discussion and Analysis</b></p>"
        f"<p>{BEFORE}</p><table width='100%' cellpadding='2' border='0'>{header}{body}</table><p>{AFTER}</p>"
        "</body></html>"
    )


@pytest.fixture(scope="module")
def filings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both layouts rendered by one LibreOffice call (its StarWriter HTML import: the default HTML import puts a
    blank first page in front)."""
    if shutil.which("soffice") is None:
        pytest.fail("LibreOffice (soffice) is required to render the test PDFs")
    folder = tmp_path_factory.mktemp("filings")
    sources = []
    for valign in ("middle", "bottom"):
        source = folder / f"filing-{valign}.html"
        source.write_text(_filing_html(valign), encoding="utf-8")
        sources.append(str(source))
    subprocess.run(
        ["soffice", "--headless", "--infilter=HTML (StarWriter)", "--convert-to", "pdf:writer_pdf_Export",
         "--outdir", str(folder), *sources],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    return {valign: folder / f"filing-{valign}.pdf" for valign in ("middle", "bottom")}


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    """The real Chunker measuring with the default embedding model's own tokenizer (no model weights loaded)."""
    from transformers import AutoTokenizer

    from kb.adapters.st_embedder import HuggingFaceTokenCounting
    from kb.model_store import default_embedder_path

    class Tokens(HuggingFaceTokenCounting):
        _tokenizer = AutoTokenizer.from_pretrained(str(default_embedder_path()))

    return Chunker(Tokens(), 200, 32)


def test_a_statement_uploaded_through_the_api_is_searched_by_its_rows(filings: dict[str, Path], tmp_path: Path):
    """The door a user meets: the statement uploaded with other PDFs through POST /v1/documents, ingested by the
    service's own pipeline, and a question about one row answered by /v1/search with that row under its years."""
    import time

    from litestar.testing import TestClient

    from kb.settings import Settings
    from service.app import create_app

    settings = Settings(data_dir=tmp_path)
    others = [CORPUS_PDF / name for name in ("all-number-table.pdf", "fake-memo.pdf", "emphasis-text.pdf")]
    with TestClient(app=create_app(settings, with_generator=False), timeout=120) as client:
        headers = {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}
        files = [("files", ("acme-annual-report-2019.pdf", filings["middle"].read_bytes(), "application/pdf"))]
        files += [("files", (path.name, path.read_bytes(), "application/pdf")) for path in others]
        upload = client.post("/v1/documents", files=files, headers=headers)
        assert upload.status_code in (200, 201, 202), upload.text
        ids = {d["filename"]: d["document_id"] for d in upload.json()["documents"]}
        deadline = time.monotonic() + 300
        while True:
            statuses = {n: client.get(f"/v1/documents/{i}", headers=headers).json()["status"] for n, i in ids.items()}
            if all(s in ("ready", "failed") for s in statuses.values()):
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(0.3)
        assert set(statuses.values()) == {"ready"}, statuses

        def search(query: str) -> list[dict]:
            response = client.post("/v1/search", json={"query": query, "top_k": 3}, headers=headers)
            assert response.status_code == 200, response.text
            return response.json()["passages"]

        top = search("What were the restructuring charges in 2018?")[0]
        assert top["filename"] == "acme-annual-report-2019.pdf" and top["page"] == 1
        lines = top["text"].splitlines()
        row = next(line for line in lines if line.startswith("| Restructuring charges |"))
        assert "12.4" in row and row.count("—") == 2, row
        header = lines[next(i for i, line in enumerate(lines) if line.startswith("| ---")) - 1]
        assert all(f"Years Ended December 31, {year}" in header for year in YEARS), header
        # The amounts are indexed once, as rows: every passage holding one holds it in its row.
        for passage in search("845.3 1,010.2 cost of sales"):
            for line in passage["text"].splitlines():
                assert "845.3" not in line or line.startswith("| Cost of sales |"), passage["text"]


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d[\d,]*\.\d", text))


@pytest.mark.parametrize("layout", ["middle", "bottom"])
def test_statement_becomes_one_table_with_labelled_rows(filings: dict[str, Path], chunker: Chunker, layout: str):
    blocks = partition_file(filings[layout], "filing.pdf")
    tables = [b for b in blocks if b.kind == "table"]
    assert len(tables) == 1
    rows = html_table_rows(tables[0].html or "")
    header, body = rows[0], rows[1:]
    # One header row: the spanning period merged onto each year.
    for year in YEARS:
        assert any(year in cell and "Years Ended December 31," in cell for cell in header), header
    assert [row[0] for row in body] == [label for label, _ in ROWS]  # the wrapped label is one cell
    for (label, values), row in zip(ROWS, body, strict=True):
        expected = [f"{sign} {amount}".strip() for sign, amount in zip(values[0::2], values[1::2], strict=True)]
        assert row[1:] == expected, row

    # After chunking, each body row is one Markdown row: its label beside its amounts, under the years.
    chunks = chunker.chunk(blocks, document_id="d", filename="filing.pdf", groups=[])
    pieces = [c.text for c in chunks if "| --- |" in c.text]
    assert pieces
    for label, values in ROWS:
        line = next(line for piece in pieces for line in piece.splitlines() if line.startswith(f"| {label} |"))
        assert all(v in line for v in values[1::2]), line
        lines = next(p for p in pieces if line in p).splitlines()
        header_line = lines[next(i for i, text in enumerate(lines) if text.startswith("| ---")) - 1]
        assert all(f"Years Ended December 31, {year}" in header_line for year in YEARS), header_line


@pytest.mark.parametrize("layout", ["middle", "bottom"])
def test_table_text_is_not_indexed_twice_and_prose_stays_text(filings: dict[str, Path], layout: str):
    blocks = partition_file(filings[layout], "filing.pdf")
    table_numbers = _numbers(next(b for b in blocks if b.kind == "table").text)
    texts = [b for b in blocks if b.kind != "table"]
    assert all(not (_numbers(b.text) & table_numbers) for b in texts), [b.text for b in texts]
    assert any(BEFORE in b.text for b in texts)
    assert any(AFTER in b.text for b in texts)
    # The document reads in order: the paragraph, the table, the paragraph.
    kinds = [("table" if b.kind == "table" else "before" if BEFORE in b.text else "after" if AFTER in b.text else "")
             for b in blocks]  # fmt: skip
    order = [k for k in kinds if k]
    assert order == ["before", "table", "after"]


def test_pdf_tables_off_is_the_plain_pdfminer_reading(filings: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    """pdf_tables=False never runs table detection and gives what _blocks makes of unstructured's fast elements:
    the statement's numbers as loose text (the "before" of the benchmark)."""
    import ingest.pdf_tables
    from ingest import partition as partition_module

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("table detection ran with pdf_tables=False")

    monkeypatch.setattr(ingest.pdf_tables, "find_tables", refuse)
    off = partition_file(filings["middle"], "filing.pdf", pdf_tables=False)
    elements = partition_module._partition(filings["middle"], "filing.pdf", "application/pdf", "fast", None)
    assert off == partition_module._blocks(elements)
    assert all(b.kind != "table" for b in off)
    assert "1,496.5" in " ".join(b.text for b in off)


def test_detection_failure_keeps_the_plain_reading(filings: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    import ingest.pdf_tables

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ingest.pdf_tables, "find_tables", broken)
    assert partition_file(filings["middle"], "filing.pdf") == partition_file(
        filings["middle"], "filing.pdf", pdf_tables=False
    )


# Corpus PDFs with no statement in them: prose, papers in two columns, lists, forms, scanned tables (OCR, untouched).
NO_TABLE = [
    "multi-column-2p.pdf",
    "layout-parser-paper-fast.pdf",
    "layout-parser-paper-with-table.pdf",
    "DA-1p.pdf",
    "reliance.pdf",
    "chevron-page.pdf",
    "single_table.pdf",
    "all-number-table.pdf",
    "korean-text-with-tables.pdf",
    "embedded-images-tables.pdf",
    "table-multi-row-column-cells.pdf",
    "list-item-example.pdf",
    "interface-config-guide-p93.pdf",
]


@pytest.mark.parametrize("name", NO_TABLE)
def test_no_table_where_the_corpus_has_none(name: str):
    """Every page searched (not only those partition_file would pick), so nothing can slip through the gate."""
    import pdfplumber

    from ingest.pdf_tables import find_tables

    path = CORPUS_PDF / name
    with pdfplumber.open(str(path)) as pdf:
        count = len(pdf.pages)
    assert find_tables(path, range(1, count + 1)) == {}


def test_partition_of_a_prose_pdf_is_unchanged():
    path = CORPUS_PDF / "layout-parser-paper-fast.pdf"
    assert partition_file(path, path.name) == partition_file(path, path.name, pdf_tables=False)


def test_tables_in_a_two_column_paper_keep_the_other_column_as_text():
    """DPR's paper (multi-column.pdf) page 4 sets its dataset table in the right column beside prose: the table
    holds the datasets and counts; the prose beside it is not pulled into the labels."""
    from ingest.pdf_tables import find_tables

    tables = find_tables(CORPUS_PDF / "multi-column.pdf", [4])[4].tables
    assert len(tables) == 1
    rows = tables[0].rows[1:]
    assert [r[0] for r in rows] == ["Natural Questions", "TriviaQA", "WebQuestions", "CuratedTREC", "SQuAD"]
    assert rows[0][1:] == ["79,168", "58,880", "8,757", "3,610"]
