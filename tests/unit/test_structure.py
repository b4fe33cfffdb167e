from pathlib import Path

import pytest

from ingest.chunk import Chunker
from ingest.partition import Block, partition_file
from ingest.structure import (
    SectionPath,
    boilerplate_blocks,
    boilerplate_pages,
    boilerplate_sections,
    combine_sections,
    heading_level,
    is_fragment,
    running_lines,
)
from tests.fakes import WordTokens

pytestmark = pytest.mark.unit


def page(number: int, *lines: str, title: str | None = None) -> list[Block]:
    blocks = [Block("heading", title, page=number)] if title else []
    return blocks + [Block("text", line, page=number) for line in lines]


TOC = page(
    2,
    "Item 1. Business 4",
    "Item 1A. Risk Factors 12",
    "Item 2. Properties 19",
    "Item 3. Legal Proceedings 20",
    "Item 7. Management's Discussion and Analysis 25",
    title="Table of Contents",
)
EXHIBITS = page(
    90,
    "Exhibit No. Description",
    "3.1 Restated Certificate of Incorporation (incorporated by reference)",
    "10.2* Employment Agreement with the Chief Executive Officer",
    "21.1 Subsidiaries of the Registrant",
    "31.1 Certification of the Chief Executive Officer pursuant to Rule 13a-14(a)",
    "101.INS Inline XBRL Instance Document",
    title="EXHIBIT INDEX",
)
GLOSSARY = page(
    3,
    "Bcf — Billion cubic feet",
    "EBITDA — Earnings before interest, taxes, depreciation and amortization",
    "MMBtu — Million British thermal units",
    "NGL — Natural gas liquids",
    title="GLOSSARY OF TERMS",
)
# Content pages that look a little like the above: a paragraph that names items and pages, a statement whose rows
# end in numbers, numbered clauses of a contract.
PROSE = page(
    30,
    "As discussed in Item 7, see Note 5 on page 25, revenue grew 12% in 2019 to $1,234 million, driven by volume.",
    "The contents of the warehouse were insured for their full value of $3 million.",
    title="Contents of the warehouse",
)
STATEMENT = page(
    60,
    "Net sales 274,515 260,174",
    "Cost of sales 169,559 161,782",
    "Gross margin 104,956 98,392",
    "Operating expenses 38,668 34,462",
    "Net income 57,411 55,256",
    title="CONSOLIDATED STATEMENTS OF OPERATIONS",
)
CLAUSES = page(
    40,
    "3.1 The Supplier shall deliver the Goods on the Delivery Date.",
    "3.2 Risk passes to the Buyer on delivery.",
    "3.3 Title passes on payment in full.",
    "10.2 This Agreement is governed by the laws of England.",
    title="Delivery",
)


def test_contents_exhibit_index_and_glossary_pages_are_boilerplate() -> None:
    blocks = [*TOC, *GLOSSARY, *PROSE, *CLAUSES, *STATEMENT, *EXHIBITS]
    assert boilerplate_pages(blocks) == {2, 3, 90}


def test_a_title_alone_makes_no_boilerplate_page() -> None:
    # The running "Table of Contents" link at the top of every page of a filing, over a content page.
    content = page(31, *[line for b in PROSE for line in [b.text]], title="Table of Contents")
    statement = [Block("text", "Table of Contents", page=61), *STATEMENT]
    assert boilerplate_pages([*content, *statement]) == set()


def test_a_contents_list_continued_on_the_next_page_is_boilerplate_too() -> None:
    continued = page(3, "Item 8. Financial Statements 40", "Item 9. Changes in Accountants 80", "Item 10. Directors 81")
    assert boilerplate_pages([*TOC, *continued, *page(4, *[b.text for b in STATEMENT])]) == {2, 3}


def test_dot_leaders_and_chinese_contents() -> None:
    blocks = page(1, "第一章 总则 ........ 1", "第二章 组织机构 ........ 5", "第三章 财务管理 ........ 9", title="目  录")
    assert boilerplate_pages(blocks) == {1}


def test_a_document_without_pages_is_judged_by_section() -> None:
    unpaged = [Block(b.kind, b.text, None, b.html) for b in [*PROSE, *TOC, *STATEMENT, *GLOSSARY]]
    flagged = boilerplate_sections(unpaged)
    assert flagged == set(range(len(PROSE), len(PROSE) + len(TOC))) | set(
        range(len(unpaged) - len(GLOSSARY), len(unpaged))
    )
    assert boilerplate_blocks(unpaged) == flagged


def test_a_contents_table_under_a_running_link_is_boilerplate_a_statement_table_is_not() -> None:
    toc_rows = "".join(
        f"<tr><td>Item {n}.</td><td>{name}</td><td>{p}</td></tr>"
        for n, name, p in [(1, "Business", 4), ("1A", "Risk Factors", 12), (2, "Properties", 19), (7, "MD&A", 25)]
    )
    statement_rows = "".join(
        f"<tr><td>{label}</td><td>{a}</td><td>{b}</td></tr>"
        for label, a, b in [("Net sales", "274,515", "260,174"), ("Gross margin", "104,956", "98,392"),
                            ("Net income", "57,411", "55,256"), ("Shares", "4,648", "4,649")]
    )  # fmt: skip
    blocks = [
        Block("text", "Table of Contents"),
        Block("table", "toc", html=f"<table><tr><td></td><td></td><td>Page</td></tr>{toc_rows}</table>"),
        Block("text", "Table of Contents"),
        Block("text", "The following table shows our results of operations."),
        Block("table", "statement", html=f"<table><tr><td></td><td>2019</td><td>2018</td></tr>{statement_rows}</table>"),  # noqa: E501
    ]
    assert boilerplate_blocks(blocks) == {1}


def test_section_titles_and_their_levels() -> None:
    assert heading_level("PART II") == 0
    assert heading_level("Item 7. Management's Discussion and Analysis") == 1
    assert heading_level("ITEM 8. FINANCIAL STATEMENTS") == 1
    assert heading_level("Item 1A. Risk Factors") == 1
    assert heading_level("Chapter 3") == heading_level("第三章 总则") == 1
    assert heading_level("Note 5 — Debt") == heading_level("NOTE 12: LEASES") == 2
    assert heading_level("1 Scope") == 1
    assert heading_level("1.2 Scope") == 2
    assert heading_level("1.2.3 Terms") == 3
    for plain in ("Liquidity and Capital Resources", "2019 Compared to 2018", "12 Months Ended", "3.5 Million Units",
                  "2 the rest", "1 apple"):  # fmt: skip
        assert heading_level(plain) is None, plain


def test_layout_debris_is_a_fragment_and_words_are_not() -> None:
    for debris in ("$", "1,234", "(1)", "(12)", "12.5%", "Page 3", "- 3 -", "3 of 10", "第 3 页", "*", "[2]",
                   "December 31, 2019", "2019-12-31", "2019年12月31日", "ii", "—"):  # fmt: skip
        assert is_fragment(debris), debris
    for words in ("Total", "Revenue", "Civil", "Item 7", "Note 5", "2019 Compared to 2018", "总则", "Mix"):
        assert not is_fragment(words), words


def test_section_path_keeps_the_titled_ancestors() -> None:
    path = SectionPath()
    assert path.enter("Introduction") == "Introduction"
    assert path.enter("PART II") == "PART II"
    assert path.enter("Item 7.") == "Item 7."
    assert path.enter("Management's Discussion and Analysis", follows_heading=True) == (
        "Item 7. Management's Discussion and Analysis"
    )
    assert path.enter("Overview") == "Item 7. Management's Discussion and Analysis › Overview"
    assert path.enter("Results") == "Item 7. Management's Discussion and Analysis › Results"
    assert path.enter("Item 8. Financial Statements") == "Item 8. Financial Statements"
    assert path.enter("Note 1 — Summary") == "Item 8. Financial Statements › Note 1 — Summary"
    assert path.enter("Note 2 — Revenue") == "Item 8. Financial Statements › Note 2 — Revenue"
    assert path.enter("PART III") == "PART III"


def test_combined_sections() -> None:
    assert combine_sections(["A", "A", "B"]) == "A | B"
    assert combine_sections(["Item 7", "Item 7 › Liquidity"]) == "Item 7 › Liquidity"
    assert combine_sections([]) is None


def test_running_headers_and_footers_are_found_only_at_page_edges() -> None:
    blocks = []
    for number in range(1, 6):
        blocks += [
            Block("text", "ACME Corp — Annual Report", page=number),
            Block("text", f"Body of page {number} with its own words.", page=number),
            Block("text", "Years Ended December 31,", page=number),  # a statement's column label, mid-page
            Block("text", f"Body continues on page {number}.", page=number),
            Block("text", f"Page {number} of 5", page=number),
        ]
    dropped = running_lines(blocks)
    assert {blocks[i].text for i in dropped} == {"ACME Corp — Annual Report"} | {f"Page {n} of 5" for n in range(2, 6)}
    assert 0 not in dropped and 4 not in dropped  # the first occurrences stay
    # Two pages are too few to call anything a running header.
    assert running_lines(blocks[:10]) == set()


CORPUS = Path("/work/shared/corpus/docs")


@pytest.mark.integration
def test_a_real_filing_contents_table_is_boilerplate_and_its_cover_page_is_not() -> None:
    # The first page of a real 10-K in HTML: the cover page's check boxes and the registrant's name are content;
    # the contents table (items and page numbers, under "TABLE OF CONTENTS") is boilerplate, and nothing else is.
    blocks = partition_file(CORPUS / "html/example-10k-1p.html", "example-10k-1p.html")
    flagged = boilerplate_blocks(blocks)
    assert flagged
    assert all(blocks[i].kind == "table" and "Item 1A." in blocks[i].text for i in flagged)
    chunks = Chunker(WordTokens(), 200, 24).chunk(blocks, document_id="d", filename="10k.html", groups=[])
    assert any(c.boilerplate for c in chunks)
    for chunk in chunks:
        # Every piece of the split contents table starts with its repeated header row; nothing else is flagged.
        assert chunk.boilerplate == chunk.text.startswith("| PART I |"), chunk.text[:200]
