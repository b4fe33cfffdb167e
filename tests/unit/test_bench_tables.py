"""The metrics of bench.tables on hand-made chunks: what counts as a recovered cell and as a retrieval hit."""

from __future__ import annotations

from bench.tables import (
    SourceTable,
    cells_recovered,
    derivation_numbers,
    evidence,
    header_row_count,
    is_hit,
    normalise,
    page_html,
)

# As TAT-QA gives it: an empty first header cell and a stacked header over the years.
ROWS = [
    ["", "", "Years Ended September 30,", ""],
    ["", "2019", "2018", "2017"],
    ["Fixed Price", "$  1,452.4", "$  1,146.2", "$  1,036.9"],
    ["Other", "44.1", "56.7", "70.8"],
    ["Total sales", "$1,496.5", "$1,202.9", "$1,107.7"],
]
CHANGE_IN_OTHER = {
    "uid": "q1",
    "question": "What is the change in Other in 2019 from 2018?",
    "answer": -12.6,
    "derivation": "44.1-56.7",
    "answer_type": "arithmetic",
    "answer_from": "table-text",
}

# The table as a table chunk holds it (ingest.chunk renders a table Block as Markdown rows).
AS_TABLE = """Sales by contract type
| | Years Ended September 30, 2019 | 2018 | 2017 |
| --- | --- | --- | --- |
| Fixed Price | $ 1,452.4 | $ 1,146.2 | $ 1,036.9 |
| Other | 44.1 | 56.7 | 70.8 |
| Total sales | $1,496.5 | $1,202.9 | $1,107.7 |"""
# The same page read column by column (unstructured's fast strategy): labels in one chunk, numbers in another.
LABELS = "Sales by contract type Years Ended September 30, Fixed Price Other Total sales"
NUMBERS = "2019 $ 1,452.4 44.1 $1,496.5 2018 $ 1,146.2 56.7 $1,202.9 2017 $ 1,036.9 70.8 $1,107.7"


def table() -> SourceTable:
    return SourceTable("t1", [list(r) for r in ROWS], ["Sales by Contract Type: substantially all ..."], [])


def test_header_rows_are_the_leading_rows_without_a_labelled_amount() -> None:
    assert header_row_count(ROWS) == 2
    assert header_row_count([["Years Ended December 31,", "2019", "2018"], ["Tax rate", "21.0%", "35.0%"]]) == 1
    assert table().column_header(2) == "2018"  # the year, not the stacked "Years Ended September 30,"


def test_a_cell_is_recovered_with_its_label_and_header_in_one_chunk() -> None:
    source = table()
    assert cells_recovered(source, [normalise(AS_TABLE)]) == (9, 9)
    assert cells_recovered(source, [normalise(AS_TABLE)], strict=True) == (9, 9)


def test_a_cell_is_lost_when_its_label_and_number_are_in_different_chunks() -> None:
    source = table()
    assert cells_recovered(source, [normalise(LABELS), normalise(NUMBERS)]) == (0, 9)
    # In one chunk, scrambled: found by the loose rule, not with its row intact.
    scrambled = normalise(LABELS + " " + NUMBERS)
    assert cells_recovered(source, [scrambled]) == (9, 9)
    assert cells_recovered(source, [scrambled], strict=True) == (0, 9)


def test_numbers_match_as_whole_tokens() -> None:
    source = SourceTable("t2", [["", "2019"], ["Other", "44.1"]], [], [])
    assert cells_recovered(source, [normalise("| | 2019 |\n| Other | 144.1 |")]) == (0, 1)
    assert cells_recovered(source, [normalise("| | 2019 |\n| Other | 44.15 |")]) == (0, 1)
    assert cells_recovered(source, [normalise("| | 2019 |\n| Other | 44.1 |")]) == (1, 1)


def test_evidence_of_a_derivation_is_its_cells_with_their_row_label() -> None:
    source = table()
    assert evidence(source, CHANGE_IN_OTHER) == [("44.1", "other"), ("56.7", "other")]
    assert evidence(source, CHANGE_IN_OTHER, strict=True) == [("other 44.1",), ("other 44.1 56.7",)]
    assert derivation_numbers("(2,515 + 1,310) / 2") == {2515.0, 1310.0}  # the "/ 2" of an average is no cell


def test_a_span_answer_that_is_a_row_label_needs_a_number_of_its_row() -> None:
    question = {"answer": ["Fixed Price"], "derivation": "", "answer_type": "span", "answer_from": "table"}
    requirements = evidence(table(), question)
    assert ("1,452.4", "fixed price") in requirements
    assert all("fixed price" in needles for needles in requirements)


def test_a_hit_is_a_top_chunk_of_the_right_document_holding_evidence() -> None:
    requirements = evidence(table(), CHANGE_IN_OTHER)
    split = [("t1", normalise(LABELS)), ("t1", normalise(NUMBERS))]
    assert is_hit([("t9", "x"), ("t1", normalise(AS_TABLE))], "t1", requirements)
    assert not is_hit(split, "t1", requirements)  # label and number in different chunks
    assert not is_hit([("t9", normalise(AS_TABLE))], "t1", requirements)  # the same table in another document
    assert not is_hit([("t9", "x")] * 5 + [("t1", normalise(AS_TABLE))], "t1", requirements)  # ranked sixth


def test_the_page_has_no_ruling_lines_and_right_aligned_numbers() -> None:
    page = page_html(table())
    assert 'border="0"' in page and "border: none" in page
    assert '<td align="right" style="border: none">$  1,452.4</td>' in page
    assert '<td align="left" style="border: none">Fixed Price</td>' in page
