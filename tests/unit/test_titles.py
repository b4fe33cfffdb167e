"""A document's name in retrieval: its title (ingest.titles) and the BM25 text of its chunks (kb.index.plan)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.partition import Block, partition_file
from ingest.titles import document_title, looks_like_title
from kb.index import plan
from kb.index.bm25 import Bm25Encoder, Bm25Terms
from kb.models import Chunk, Passage

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "docs"


@pytest.mark.parametrize(
    "heading",
    ["Norwell Industries Annual Report 2019", "LayoutParser: A Unified Toolkit for Deep Learning", "年度报告",
     "iPhone User Guide", "Integrated Annual Report 2021-22"],
)  # fmt: skip
def test_headings_that_name_a_document_are_titles(heading: str) -> None:
    assert looks_like_title(heading)


@pytest.mark.parametrize(
    "heading",
    ["Table of Contents", "CONTENTS", "Page 3", "3 of 12", "- 2 -", "2019", "March 31, 2020", "31/03/2020", "IV",
     "1.2.3", "UNITED STATES SECURITIES AND EXCHANGE COMMISSION", "FORM 10-K", "Contents ........ 3", "n u J",
     "V C . s c [", "the same", "Title", "", "x" * 151],
)  # fmt: skip
def test_generic_headings_markers_numbers_and_dates_are_not(heading: str) -> None:
    assert not looks_like_title(heading)


def test_the_title_is_the_first_fitting_heading_of_the_first_pages() -> None:
    blocks = [
        Block("text", "Norwell Industries Annual Report", 1),  # body text, not a heading
        Block("heading", "Table of Contents", 1),
        Block("heading", "2019", 1),
        Block("heading", "Norwell  Industries\nAnnual Report", 2),
        Block("heading", "Management's Discussion", 2),
    ]
    assert document_title(blocks, "ar2019.pdf") == "Norwell Industries Annual Report"
    # Past the first pages a heading is a section's, not the document's.
    assert document_title([Block("heading", "Table of Contents", 1), Block("heading", "Results", 3)], "x.pdf") is None
    # Without pages (Word, HTML, text) the first blocks stand for them.
    paged = [Block("text", "body")] * 40 + [Block("heading", "Late Heading")]
    assert document_title([Block("heading", "Travel Policy"), *paged], "p.docx") == "Travel Policy"
    assert document_title(paged, "p.docx") is None


def test_a_title_repeating_the_file_name_is_left_to_the_file_name() -> None:
    blocks = [Block("heading", "Annual Report 2019", 1)]
    assert document_title(blocks, "Norwell_Annual_Report_2019.pdf") is None
    assert document_title(blocks, "norwell.pdf") == "Annual Report 2019"


def test_titles_of_real_pdfs() -> None:
    def title(name: str) -> str | None:
        path = CORPUS / "pdf" / name
        return document_title(partition_file(path, name, pdf_tables=False), name)

    assert title("list-item-example.pdf") == "Module One - Introduction to Product Development and Quality Assurance"
    assert title("header-test-doc.pdf") is None  # its one heading is the placeholder "Title"


@pytest.mark.parametrize(
    ("filename", "words"),
    [
        ("Norwell Industries 2019 Annual Report.pdf", ["Norwell", "Industries", "Annual", "Report"]),
        ("acme_corp-10K.annual-report.docx", ["acme", "corp", "10K", "annual", "report"]),
        ("QuarterlyEarningsXMLParser.txt", ["Quarterly", "Earnings", "XML", "Parser"]),
        ("scan_0003.pdf", ["scan"]),
        ("20190331.pdf", []),
        ("Report v1.2 final", ["Report", "v1", "final"]),  # no extension: ".2 final" is not one
        ("年度报告_2019.pdf", ["年度报告"]),
    ],
)
def test_name_words_split_the_stem_and_drop_numbers_and_the_extension(filename: str, words: list[str]) -> None:
    assert plan.name_words(filename) == words


def chunk(filename: str, title: str | None = None, text: str = "Revenue rose to 4.2 million.") -> Chunk:
    return Chunk(chunk_id="c", document_id="d", ordinal=0, text=text, filename=filename, title=title,
                 embed_text=f"Results\n{text}")  # fmt: skip


def test_the_sparse_text_repeats_the_name_before_the_embedded_text() -> None:
    named = chunk("Norwell_Industries.pdf", title="Integrated Annual Report")
    assert plan.sparse_text(named, 0) == "Results\nRevenue rose to 4.2 million."
    assert plan.sparse_text(named, 2) == (
        "Norwell Industries Integrated Annual Report\nNorwell Industries Integrated Annual Report\n"
        "Results\nRevenue rose to 4.2 million."
    )
    # A title made of the file name's words adds nothing.
    assert plan.document_name(chunk("norwell-annual-report.pdf", title="Norwell Annual Report")) == (
        "norwell annual report"
    )
    assert plan.sparse_text(chunk("2019.pdf"), 3) == "Results\nRevenue rose to 4.2 million."  # no name words


def test_points_index_the_name_in_bm25_only_and_payloads_without_a_title_still_read() -> None:
    encoder = Bm25Encoder(Bm25Terms(name_repeats=1))
    named = chunk("Norwell Industries Annual Report.pdf")
    built = plan.points([named], [[1.0, 0.0]], None, encoder, with_sentences=False)[0]
    off = plan.points([named], [[1.0, 0.0]], None, encoder, with_sentences=False, name_repeats=0)[0]
    norwell = set(encoder.query("Norwell").indices)
    assert norwell <= set(built.sparse.indices) and not norwell & set(off.sparse.indices)
    assert built.dense == off.dense == [1.0, 0.0]
    assert built.payload["title"] is None and built.payload["filename"] == named.filename
    # A point written before titles and boilerplate flags existed.
    legacy = {k: v for k, v in built.payload.items() if k not in ("title", "boilerplate")}
    passage = Passage.from_payload(legacy, 0.5)
    assert passage.filename == named.filename and passage.boilerplate is False
