"""The rules of ingest/pdf_tables.py on word layouts written out by hand (positions in points, as pdfplumber gives
them), the swap of unstructured's elements for a table (real unstructured element classes), and the words kept
from unstructured's own pdfminer pass (real unstructured on small corpus PDFs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.partition import _numeric_tokens, _replace_with_tables, _share_inside, _table_pages
from ingest.pdf_tables import _VALUE, PageTables, PdfTable, _is_value, tables_from_words

pytestmark = pytest.mark.unit

SIZE = 10.0


def word(text: str, x0: float, top: float, *, right: bool = False, size: float = SIZE) -> dict:
    """A word at `x0` (or ending at `x0` when `right`), about 5 pt per character."""
    width = 5.0 * len(text)
    start = x0 - width if right else x0
    return {"text": text, "x0": start, "x1": start + width, "top": top, "bottom": top + size, "size": size}


def label(text: str, top: float, x0: float = 50.0) -> list[dict]:
    """A label of several words, one word space (2.5 pt) apart."""
    out, x = [], x0
    for part in text.split():
        out.append(word(part, x, top))
        x += 5.0 * len(part) + 2.5
    return out


COLUMNS = (350.0, 450.0, 550.0)  # right edges of the amounts


def row(text: str, top: float, *amounts: str, dollar: bool = False) -> list[dict]:
    out = label(text, top) if text else []
    for right, amount in zip(COLUMNS, amounts, strict=False):
        if dollar:
            out.append(word("$", right - 80, top))  # "$" at the left of its column, far from the number
        out.append(word(amount, right, top, right=True))
    return out


def statement(pitch: float = 12.0) -> list[dict]:
    """A statement without padding: every line `pitch` apart; a label wrapped over two lines (values on its
    second line), a section line."""
    top = 100.0
    words = label("Years Ended December 31,", top, x0=354.0)  # centred over the three columns
    top += pitch
    words += [word(y, right, top, right=True) for y, right in zip(("2019", "2018", "2017"), COLUMNS, strict=True)]
    lines = [
        ("Net sales", ("1,496.5", "1,202.9", "1,107.7"), True),
        ("Operating expenses:", (), False),
        ("Cost of sales", ("(1,010.2)", "(845.3)", "(790.1)"), False),
        ("Selling, general and administrative expenses", (), False),
        ("excluding amortization", ("201.3", "188.0", "176.9"), False),
        ("Restructuring", ("—", "12.4", "—"), False),
        ("Operating income", ("284.9", "157.2", "140.7"), True),
    ]
    for text, amounts, dollar in lines:
        top += pitch
        words += row(text, top, *amounts, dollar=dollar)
    return words


def test_statement_rows_header_and_cells():
    (table,) = tables_from_words(statement(), 3)
    assert table.page == 3
    assert table.rows[0] == [
        "",
        "Years Ended December 31, 2019",
        "Years Ended December 31, 2018",
        "Years Ended December 31, 2017",
    ]
    assert table.rows[1:] == [
        ["Net sales", "$ 1,496.5", "$ 1,202.9", "$ 1,107.7"],
        ["Operating expenses:", "", "", ""],
        ["Cost of sales", "(1,010.2)", "(845.3)", "(790.1)"],
        ["Selling, general and administrative expenses excluding amortization", "201.3", "188.0", "176.9"],
        ["Restructuring", "—", "12.4", "—"],
        ["Operating income", "$ 284.9", "$ 157.2", "$ 140.7"],
    ]
    x0, top, x1, bottom = table.bbox
    assert (x0, top, x1, bottom) == (50.0, 100.0, 550.0, 100.0 + 8 * 12.0 + SIZE)


def test_html_has_one_header_row_then_one_row_per_label():
    table = PdfTable(1, (0, 0, 1, 1), [["", "2019 & 2018"], ["Sales <net>", "$ 5"]])
    assert table.html == (
        "<table><tr><th></th><th>2019 &amp; 2018</th></tr><tr><td>Sales &lt;net&gt;</td><td>$ 5</td></tr></table>"
    )
    assert table.text == "2019 & 2018\nSales <net> $ 5"


def test_padded_rows_tell_a_wrapped_label_from_the_next_row():
    """With cell padding (rows 14 pt apart, lines within a cell 11 pt), a capitalised second line is still the
    label's, and a capitalised section line after a row is a row of its own."""
    words = [word(y, right, 100, right=True) for y, right in zip(("2019", "2018", "2017"), COLUMNS, strict=True)]
    words += row("Revenue", 114, "10", "20", "30")
    words += label("Communications", 128)
    words += row("Solutions", 139, "40", "50", "60")
    words += label("Industrial", 153)
    words += row("Equipment", 167, "70", "80", "90")
    (table,) = tables_from_words(words, 1)
    assert [r[0] for r in table.rows[1:]] == ["Revenue", "Communications Solutions", "Industrial", "Equipment"]


@pytest.mark.parametrize(
    "text",
    ["1,234", "$1,234", "(1,234)", "$(12.5)", "12.5%", "(8)%", "—", "-", "n/a", "0.9", ".25", "2019", "15 bps"],
)
def test_values(text: str):
    assert _VALUE.match(text)


@pytest.mark.parametrize("text", ["Sales", "Note 13", "Item 7.", "December 31, 2019", "1.2.3", "A1"])
def test_not_values(text: str):
    assert not _VALUE.match(text)


def test_prose_with_numbers_is_no_table():
    """Sentences full of figures: words follow the numbers on every line."""
    words = []
    for i in range(6):
        top = 100 + 12 * i
        words += label(f"Revenue rose {i + 3}% to $1,{i}00 million in 2019 from 2018 levels", top)
    assert tables_from_words(words, 1) == []


def test_table_of_contents_is_no_table():
    """One page number per line: no second value column."""
    words = []
    for i, entry in enumerate(["Business", "Risk Factors", "Properties", "Legal Proceedings", "Mine Safety"]):
        words += label(f"Item {i + 1}.", 100 + 12 * i)
        words += label(entry, 100 + 12 * i, x0=100)
        words.append(word(str(10 + 7 * i), 500, 100 + 12 * i, right=True))
    assert tables_from_words(words, 1) == []


def test_misaligned_numbers_are_no_table():
    """Two numbers a line, but nowhere near a common edge: scattered figures, not columns."""
    words = []
    for i in range(5):
        top = 100 + 12 * i
        words += label(f"Line {chr(65 + i)}", top)
        words.append(word("12.5", 200 + 37 * i, top))
        words.append(word("7", 330 + 23 * i, top))
    assert tables_from_words(words, 1) == []


def test_numeric_fragments_pick_the_pages_to_search():
    from unstructured.documents.coordinates import PixelSpace
    from unstructured.documents.elements import CoordinatesMetadata, ElementMetadata, NarrativeText, Text

    def element(cls, text: str, page: int):
        coordinates = CoordinatesMetadata(((0, 0), (0, 10), (10, 10), (10, 0)), PixelSpace(600, 800))
        return cls(text=text, metadata=ElementMetadata(page_number=page, coordinates=coordinates))

    assert _numeric_tokens("$ 1,496.5 $ 1,202.9") == 2
    assert _numeric_tokens("(845.3) — 12.4") == 3
    assert _numeric_tokens("Revenue rose 12% to $1,496 million in 2019") == 0
    elements = [element(Text, "1,496.5 (845.3) 12.4", 1), element(Text, "2019 2018 2017", 1)]
    elements += [element(NarrativeText, "In 2019, 2018 and 2017 sales were 1, 2 and 3 billion.", 2)]
    assert _table_pages(elements) == [1]


def test_elements_inside_a_table_become_one_table_where_the_first_stood():
    from unstructured.documents.coordinates import PixelSpace
    from unstructured.documents.elements import CoordinatesMetadata, ElementMetadata, NarrativeText, Text, Title

    def element(cls, text: str, box: tuple[float, float, float, float]):
        x0, top, x1, bottom = box
        points = ((x0, top), (x0, bottom), (x1, bottom), (x1, top))
        # Twice the page's size in this system: the boxes are scaled into points.
        coordinates = CoordinatesMetadata(tuple((2 * x, 2 * y) for x, y in points), PixelSpace(1200, 1600))
        return cls(text=text, metadata=ElementMetadata(page_number=1, filename="f.pdf", coordinates=coordinates))

    table = PdfTable(1, (50, 100, 500, 200), [["", "2019"], ["Sales", "5"], ["Costs", "(3)"], ["Profit", "2"]])
    words = [(50, 205, 80, 215, "Profit"), (85, 205, 110, 215, "rose."), (50, 150, 80, 160, "Costs")]
    found = {1: PageTables((600, 800), [table], words)}
    before = element(Title, "Results", (50, 50, 200, 60))
    labels = element(Text, "Sales Costs", (50, 110, 80, 160))
    spill = element(NarrativeText, "Profit Profit rose.", (50, 180, 110, 215))  # runs out of the table
    numbers = element(Text, "5 (3) 2", (450, 110, 500, 190))
    nowhere = Text(text="no coordinates", metadata=ElementMetadata(page_number=1))
    out = _replace_with_tables([before, labels, nowhere, numbers, spill], found)
    assert [e.category for e in out] == ["Title", "Table", "UncategorizedText", "NarrativeText"]
    assert out[1].metadata.text_as_html == table.html
    assert out[1].metadata.page_number == 1
    assert out[3].text == "Profit rose."


def test_share_inside():
    assert _share_inside((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert _share_inside((0, 0, 10, 10), (0, 5, 10, 20)) == pytest.approx(0.6)
    assert _share_inside((5, 5, 5, 5), (0, 0, 10, 10)) == 1.0
    assert _share_inside((50, 50, 60, 60), (0, 0, 10, 10)) == 0.0


def test_unit_line_joins_the_header_and_a_finished_row_keeps_its_label():
    """ "US$000" under the years is header, not a row of amounts; without padding, a capitalised label-only line
    after a row that has its values starts the next row (the values sit beside a label's last line)."""
    words = [word(y, right, 100, right=True) for y, right in zip(("2019", "2018"), COLUMNS, strict=False)]
    words += [word("US$000", right, 112, right=True) for right in COLUMNS[:2]]
    words += row("Office rent", 124, "4,339", "3,538")
    words += label("Operating lease obligations for", 136)
    words += row("vehicles", 148, "51", "96")
    words += row("Purchase obligations", 160, "1,483", "1,195")
    words += label("Equipment and", 172)
    words += row("other contracts", 184, "12", "16")
    (table,) = tables_from_words(words, 1)
    assert table.rows == [
        ["", "2019 US$000", "2018 US$000"],
        ["Office rent", "4,339", "3,538"],
        ["Operating lease obligations for vehicles", "51", "96"],
        ["Purchase obligations", "1,483", "1,195"],
        ["Equipment and other contracts", "12", "16"],
    ]


def years(top: float, *labels: str) -> list[dict]:
    labels = labels or ("2019", "2018", "2017")
    return [word(y, right, top, right=True) for y, right in zip(labels, COLUMNS, strict=False)]


def amounts(top: float, *values: str) -> list[dict]:
    return [word(v, right, top, right=True) for v, right in zip(values, COLUMNS, strict=False)]


def test_label_wrapped_around_its_values_keeps_the_header():
    """Each label wraps over two lines with its values set between them (half a line down), the first one ending
    below its values with "18)": the table still starts at its first row, under its years, and a closing
    parenthesis alone is a label's end, not an amount."""
    words = years(100)
    words += label("Cash generated by operations (refer to note", 112) + amounts(117, "14,182", "13,860", "13,781")
    words += label("18)", 122)
    for i, (text, rest) in enumerate([("Additions based on tax positions", "during a prior period"),
                                      ("Reductions based on tax positions", "during the current period"),
                                      ("Reductions related to a lapse", "of applicable statute")]):  # fmt: skip
        top = 133 + 21 * i
        words += label(text, top) + amounts(top + 5, str(10 + i), "(4,295)", "—") + label(rest, top + 10)
    (table,) = tables_from_words(words, 1)
    assert table.rows[0] == ["", "2019", "2018", "2017"]
    assert table.rows[1:] == [
        ["Cash generated by operations (refer to note 18)", "14,182", "13,860", "13,781"],
        ["Additions based on tax positions during a prior period", "10", "(4,295)", "—"],
        ["Reductions based on tax positions during the current period", "11", "(4,295)", "—"],
        ["Reductions related to a lapse of applicable statute", "12", "(4,295)", "—"],
    ]
    assert not _is_value("18)") and _is_value("(18)") and _is_value("(18")


def test_group_labels_set_in_a_value_column_stay_rows_of_one_table():
    """Group labels right-aligned over the first column of amounts ("Cloud and" / "License" / "Revenues:" under
    the years, "Expenses:" further down): rows of their own in the one table under the years, never a header."""
    words = years(100)
    words += [word("Cloud and", COLUMNS[0], 111, right=True), word("License", COLUMNS[0], 122, right=True)]
    words += [word("Revenues:", COLUMNS[0], 133, right=True)]
    words += label("Americas", 144) + amounts(144, "18,410", "18,030", "17,100")
    words += label("EMEA", 155) + amounts(155, "9,168", "9,163", "9,000")
    words += [word("Expenses:", COLUMNS[0], 166, right=True)]
    words += label("Sales and marketing", 177) + amounts(177, "7,398", "7,213", "7,000")
    words += label("Total expenses", 188) + amounts(188, "10,995", "10,654", "10,500")
    (table,) = tables_from_words(words, 1)
    assert table.rows == [
        ["", "2019", "2018", "2017"],
        ["Cloud and License Revenues:", "", "", ""],
        ["Americas", "18,410", "18,030", "17,100"],
        ["EMEA", "9,168", "9,163", "9,000"],
        ["Expenses:", "", "", ""],
        ["Sales and marketing", "7,398", "7,213", "7,000"],
        ["Total expenses", "10,995", "10,654", "10,500"],
    ]


def test_right_aligned_headers_wider_than_their_column_stand_over_it_alone():
    """Right-aligned period headers wider than their numbers, reaching over the next column, set half a line apart
    (a note line under one), over a unit line beside a wrapped label: each column keeps its own period."""
    words = [word("Year-ended 31 March 2018", COLUMNS[1], 100, right=True)]
    words += [word("Year-ended 31 March 2019", COLUMNS[0], 105, right=True)]
    words += [word("Restated", COLUMNS[1], 110, right=True)]
    words += label("Revenue from customers by", 121) + [word("$M", right, 126, right=True) for right in COLUMNS[:2]]
    words += label("country", 131)
    for i, (name, a, b) in enumerate([("UK", "83.2", "73.5"), ("USA", "222.2", "199.0"), ("Other", "1.7", "8.1")]):
        words += label(name, 143 + 11 * i) + amounts(143 + 11 * i, a, b)
    (table,) = tables_from_words(words, 1)
    assert table.rows == [
        ["Revenue from customers by country", "Year-ended 31 March 2019 $M", "Year-ended 31 March 2018 Restated $M"],
        ["UK", "83.2", "73.5"],
        ["USA", "222.2", "199.0"],
        ["Other", "1.7", "8.1"],
    ]


def test_two_rows_make_a_table_only_under_period_headers():
    """Two rows of amounts are a table under dates ("April 27, 2019"), not under other headers or none."""

    def two_rows(head: tuple[str, str]) -> list[dict]:
        words = label("Fiscal Year Ended", 100, x0=290.0) + label("(Dollars in Millions)", 111)
        words += [word(h, right, 111, right=True) for h, right in zip(head, COLUMNS, strict=False)]
        words += label("Revenues", 122) + amounts(122, "$1,073.3", "$1,095.0")
        return words + label("Net Income", 133) + amounts(133, "$106.4", "$70.5")

    (table,) = tables_from_words(two_rows(("April 27, 2019", "April 28, 2018")), 1)
    assert table.rows[1:] == [["Revenues", "$1,073.3", "$1,095.0"], ["Net Income", "$106.4", "$70.5"]]
    assert "April 27, 2019" in table.rows[0][1] and table.rows[0][2].endswith("April 28, 2018")
    assert tables_from_words(two_rows(("Domestic", "Foreign")), 1) == []
    assert tables_from_words(two_rows(("", "")), 1) == []


def test_ranges_in_a_column_are_one_value_each():
    """Useful lives beside the amounts ("5 - 40", "20 - Indefinite", "2-14"): each one value in its column, not
    a dash read as a zero with words after the line's values."""
    lives = [("Land", "20 - Indefinite"), ("Buildings", "5 - 40"), ("Software", "2-14"), ("Construction", "n/a")]
    words = years(100, "2019", "2018", "Lives")
    for i, (name, life) in enumerate(lives):
        top = 112 + 11 * i
        words += label(name, top) + amounts(top, f"{i + 1}.5", f"{i + 2}.5")
        parts = life.split(" ")
        x = COLUMNS[2] - sum(5.0 * len(part) for part in parts) - 2.5 * (len(parts) - 1)
        for part in parts:  # the parts one word space apart, the whole right-aligned on the column
            words.append(word(part, x, top))
            x += 5.0 * len(part) + 2.5
    (table,) = tables_from_words(words, 1)
    assert [r[3] for r in table.rows[1:]] == ["20 - Indefinite", "5 - 40", "2-14", "n/a"]
    assert [r[0] for r in table.rows[1:]] == ["Land", "Buildings", "Software", "Construction"]


def test_unit_centred_under_the_years_and_dollar_dashes_stay_apart():
    """"(in millions)" centred under a year is header, not a group label; "$ -" (a zero) and the next column's
    "$ 3,795" are two values however close, never a range."""
    words = years(100) + [word("(in millions)", 305.0, 111)]  # centred on the first column
    words += label("Cash", 122) + [word("$", 270, 122), word("3,795", COLUMNS[0], 122, right=True)]
    words += [word("$", 380, 122), word("-", COLUMNS[1], 122, right=True)]
    words += [word("$", COLUMNS[1] + 3, 122), word("3,795", COLUMNS[2], 122, right=True)]
    words += label("Inventories", 133) + amounts(133, "149", "-", "149")
    words += label("Goodwill", 144) + amounts(144, "725", "12", "737")
    (table,) = tables_from_words(words, 1)
    assert table.rows[0][1] == "2019 (in millions)"
    assert table.rows[1:] == [
        ["Cash", "$ 3,795", "$ -", "$ 3,795"],
        ["Inventories", "149", "-", "149"],
        ["Goodwill", "725", "12", "737"],
    ]


# --- words kept from unstructured's own pdfminer pass (capture_words) ---------------------------------------------

CORPUS_PDF = Path("/work/shared/corpus/docs/pdf")


def _read_with_capture(path: Path, gate) -> dict:
    from ingest.partition import _partition
    from ingest.pdf_tables import capture_words

    with capture_words(gate) as captured:
        _partition(path, path.name, "application/pdf", "fast", None)
    return captured


@pytest.mark.parametrize(
    "name",
    [
        "fake-bold-sample.pdf",  # every character drawn twice: word building depends on the characters' order
        "rotated-page-90.pdf",  # /Rotate 90: the page's boxes turned as pdfplumber turns them
        "negative-coords.pdf",  # a media box not at the origin
        "figure-overlay-text.pdf",  # text inside a form XObject (a figure), walked into
    ],
)
def test_captured_words_are_the_words_of_a_second_pdfplumber_pass(name: str):
    """Every page captured (a gate that takes all) holds exactly the words (text, box, size) and page size that
    reading the page again with pdfplumber gives, so table detection sees the same page either way."""
    import pdfplumber

    from ingest.pdf_tables import _WORD_KEYS, _words

    path = CORPUS_PDF / name
    captured = _read_with_capture(path, lambda elements: True)
    with pdfplumber.open(str(path)) as pdf:
        assert sorted(captured) == [page.page_number for page in pdf.pages]
        for page in pdf.pages:
            words = [tuple(w[k] for k in _WORD_KEYS) for w in _words(page)]
            assert words, f"{name} page {page.page_number} has words"
            assert captured[page.page_number].words == words
            assert captured[page.page_number].size == (float(page.width), float(page.height))


def test_capture_keeps_only_the_pages_the_gate_takes_and_then_unhooks():
    """A 2-page paper: the gate sees each page's own elements; a refused page keeps nothing. Outside the block
    (and in other threads during it) unstructured runs unhooked."""
    import threading

    from unstructured.partition import pdf
    from unstructured.partition.pdf_image import pdfminer_utils

    originals = (pdf._pdfminer_page_elements, pdfminer_utils.init_pdfminer)
    path = CORPUS_PDF / "multi-column-2p.pdf"
    seen: list[int] = []

    def second_page_only(elements: list) -> bool:
        pages = {e.metadata.page_number for e in elements}
        assert len(pages) == 1
        seen.extend(pages)
        return pages == {2}

    assert sorted(_read_with_capture(path, second_page_only)) == [2]
    assert seen == [1, 2]
    assert (pdf._pdfminer_page_elements, pdfminer_utils.init_pdfminer) == originals

    from ingest.partition import _partition
    from ingest.pdf_tables import capture_words

    PDF = "application/pdf"  # noqa: N806
    read: list = []
    with capture_words(lambda elements: True) as captured:
        # Another thread reading meanwhile, outside any capture: its pages are nobody's.
        thread = threading.Thread(target=lambda: read.extend(_partition(path, path.name, PDF, "fast", None)))
        thread.start()
        thread.join()
    assert read and captured == {}
    assert (pdf._pdfminer_page_elements, pdfminer_utils.init_pdfminer) == originals


def test_find_tables_reads_captured_pages_from_their_words_alone():
    """A captured page is not read again: the file need not even exist."""
    from ingest.pdf_tables import _WORD_KEYS, PageWords, find_tables

    words = [tuple(w[k] for k in _WORD_KEYS) for w in statement()]
    found = find_tables(Path("/nonexistent.pdf"), [3], {3: PageWords((612.0, 792.0), words)})
    (table,) = found[3].tables
    assert table.rows == tables_from_words(statement(), 3)[0].rows
    assert found[3].size == (612.0, 792.0)


def _statement_pdf(path: Path) -> Path:
    """A one-page PDF written with pikepdf: a sentence, then a statement in Courier (10 pt, 6 pt a character, so
    amounts are right-aligned exactly) under its years, without ruling lines."""
    import pikepdf

    rows = [
        ("", ("2019", "2018", "2017")),
        ("Net sales", ("1,496.5", "1,202.9", "1,107.7")),
        ("Cost of sales", ("(1,010.2)", "(845.3)", "(790.1)")),
        ("Restructuring", ("-", "12.4", "-")),
        ("Operating income", ("284.9", "157.2", "140.7")),
    ]
    ops = ["BT /F1 10 Tf 72 720 Td (Results of operations are set out below.) Tj ET"]
    for i, (name, values) in enumerate(rows):
        y = 690 - 14 * i
        if name:
            ops.append(f"BT /F1 10 Tf 72 {y} Td ({name}) Tj ET")
        for right, value in zip((350, 430, 510), values, strict=True):
            ops.append(f"BT /F1 10 Tf {right - 6 * len(value)} {y} Td ({value}) Tj ET")
    pdf = pikepdf.new()
    font = pikepdf.Dictionary(Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1, BaseFont=pikepdf.Name.Courier)
    page = pdf.add_blank_page(page_size=(612, 792))
    page.obj.Resources = pikepdf.Dictionary(Font=pikepdf.Dictionary(F1=pdf.make_indirect(font)))
    page.obj.Contents = pdf.make_stream("\n".join(ops).encode())
    pdf.save(path)
    return path


def test_partition_with_captured_words_equals_the_second_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A statement page's words are captured during unstructured's pass (table detection gets them), and the
    blocks are the same as when pdfplumber reads the page again (capture switched off)."""
    import contextlib

    import ingest.partition as partition_module
    import ingest.pdf_tables
    from ingest.partition import partition_file

    path = _statement_pdf(tmp_path / "statement.pdf")
    given: list[set[int]] = []
    find_tables = ingest.pdf_tables.find_tables

    def noting(path: Path, pages, captured=None):
        given.append(set(captured or {}))
        return find_tables(path, pages, captured)

    monkeypatch.setattr(ingest.pdf_tables, "find_tables", noting)
    captured = partition_file(path, path.name)
    assert given == [{1}]
    (table,) = [b for b in captured if b.kind == "table"]
    assert "<td>Cost of sales</td><td>(1,010.2)</td><td>(845.3)</td><td>(790.1)</td>" in table.html

    @contextlib.contextmanager
    def nothing_captured(pdf_tables: bool):
        yield {}

    monkeypatch.setattr(partition_module, "_page_words_capture", nothing_captured)
    assert captured == partition_file(path, path.name)
    assert given[1] == set()
