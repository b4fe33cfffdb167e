import pytest

from ingest.chunk import MAX_SENTENCES, Chunker, chunk_id_for, html_table_rows, sentences
from ingest.partition import Block, looks_like_heading
from tests.fakes import WordTokens

pytestmark = pytest.mark.unit


def chunker(max_tokens: int = 40, overlap: int = 8) -> Chunker:
    return Chunker(WordTokens(), max_tokens, overlap)


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}." if i % 10 == 9 else f"w{i}" for i in range(start, start + n))


def test_no_chunk_exceeds_the_token_budget_and_nothing_is_lost() -> None:
    blocks = [Block("text", words(95, 100 * i), page=i + 1) for i in range(3)]
    chunks = chunker().chunk(blocks, document_id="doc", filename="f.pdf", groups=["g"])
    tok = WordTokens()
    assert all(len(tok.token_spans(c.text)) <= 40 for c in chunks)
    seen = set(" ".join(c.text for c in chunks).replace(".", "").split())
    expected = set(" ".join(b.text for b in blocks).replace(".", "").split())
    assert seen == expected


def test_consecutive_chunks_overlap_a_little() -> None:
    chunks = chunker().chunk([Block("text", words(120), page=1)], document_id="d", filename="f", groups=[])
    assert len(chunks) >= 3
    first_tail = set(chunks[0].text.replace(".", "").split()[-8:])
    second_head = set(chunks[1].text.replace(".", "").split()[:8])
    assert first_tail & second_head


def test_chunk_ids_are_stable_and_ordered() -> None:
    blocks = [Block("text", words(100), page=1)]
    a = chunker().chunk(blocks, document_id="doc", filename="f", groups=[])
    b = chunker().chunk(blocks, document_id="doc", filename="f", groups=[])
    assert [c.chunk_id for c in a] == [c.chunk_id for c in b]
    assert [c.ordinal for c in a] == list(range(len(a)))
    assert a[0].chunk_id == chunk_id_for("doc", 0) != chunk_id_for("other", 0)


def test_headings_start_sections_and_prefix_the_embedded_text() -> None:
    blocks = [
        Block("heading", "Uploads", page=1),
        Block("text", words(30), page=1),
        Block("heading", "Retention", page=2),
        Block("text", "Originals are kept seven years.", page=2),
    ]
    chunks = chunker().chunk(blocks, document_id="d", filename="f", groups=[])
    assert [c.section for c in chunks] == ["Uploads", "Retention"]
    assert chunks[1].embed_text.startswith("Retention\n")
    assert chunks[1].page == 2


def test_page_of_each_part_of_a_chunk_is_kept() -> None:
    blocks = [Block("text", "End of page one", page=1), Block("text", "start of page two.", page=2)]
    chunk = chunker().chunk(blocks, document_id="d", filename="f", groups=[])[0]
    assert chunk.text == "End of page one start of page two."
    assert chunk.page_starts == [(0, 1), (16, 2)]
    assert (chunk.page, chunk.page_end) == (1, 2)


def test_large_table_is_split_by_rows_with_the_header_repeated() -> None:
    rows = "".join(f"<tr><td>item {i}</td><td>{i * 10} units</td></tr>" for i in range(30))
    html = f"<table><tr><th>Item</th><th>Quantity</th></tr>{rows}</table>"
    chunks = chunker().chunk([Block("table", "ignored", page=3, html=html)], document_id="d", filename="f", groups=[])
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.startswith("| Item | Quantity |\n| --- | --- |")
        assert len(WordTokens().token_spans(chunk.text)) <= 40
    body = [line for c in chunks for line in c.text.splitlines()[2:]]
    assert len(body) == 30


def test_small_table_stays_whole_as_markdown() -> None:
    html = "<table><tr><td>a</td><td>b</td></tr><tr><td>1</td><td>2</td></tr></table>"
    (chunk,) = chunker().chunk([Block("table", "a b 1 2", page=1, html=html)], document_id="d", filename="f", groups=[])
    assert chunk.text == "| a | b |\n| --- | --- |\n| 1 | 2 |"
    assert html_table_rows(html) == [["a", "b"], ["1", "2"]]


def test_chinese_paragraphs_labelled_title_are_not_headings() -> None:
    assert looks_like_heading("上传文档")
    assert not looks_like_heading("文档通过接口或命令上传。系统支持多种格式。")
    assert not looks_like_heading("A sentence that ends with a full stop.")


def test_long_chinese_text_is_split_at_sentence_ends() -> None:
    text = "".join(f"第{i}句话说明知识库的一个功能。" for i in range(20))
    chunks = chunker(max_tokens=40, overlap=0).chunk([Block("text", text)], document_id="d", filename="f", groups=[])
    assert len(chunks) > 1
    assert all(c.text.endswith("。") for c in chunks)
    assert "".join(c.text for c in chunks) == text


def test_a_heading_directly_followed_by_another_is_kept() -> None:
    blocks = [
        Block("heading", "春节放假通知"),
        Block("heading", "Spring Festival Holiday Notice"),
        Block("text", "庆祝春节假期。"),
        Block("heading", "Trailing heading"),
    ]
    chunks = chunker().chunk(blocks, document_id="doc", filename="f.md", groups=[])
    found = "\n".join(f"{c.section}\n{c.text}" for c in chunks)
    for heading in ("春节放假通知", "Spring Festival Holiday Notice", "Trailing heading"):
        assert heading in found


def test_sentences_of_a_chunk_for_its_sentence_vectors() -> None:
    text = "Setup guide\nInstall the package. Then run it! Does it start? Yes.\n| a | b |\n|---|---|\n| 1 | 2 |"

    assert sentences(text) == [
        "Setup guide", "Install the package.", "Then run it!", "Does it start?", "Yes.", "| a | b |", "| 1 | 2 |",
    ]  # fmt: skip
    # Chinese sentences end at their own punctuation, without a space.
    assert sentences("第一句话。第二句话！第三句话") == ["第一句话。", "第二句话！", "第三句话"]
    # One sentence: the chunk's own vector is its sentence vector.
    assert sentences("A single sentence without an end") == []
    # Repeats count once; the number per chunk is bounded.
    assert sentences("Same line.\nSame line.\nOther line.") == ["Same line.", "Other line."]
    assert len(sentences(" ".join(f"Sentence number {i}." for i in range(100)))) == MAX_SENTENCES


# --- fragments, long documents' sections, boilerplate (issue 19) --------------------------------------------------


def _all_words(texts: list[str]) -> list[str]:
    return " ".join(texts).split()


def test_fragments_join_their_neighbours_and_no_text_is_lost() -> None:
    # A PDF statement read element by element: bare amounts, a "$", a date and a footnote marker come out as
    # "headings" and tiny texts between real paragraphs.
    blocks = [
        Block("heading", "Results of operations", page=1),
        Block("text", words(20), page=1),
        Block("heading", "2019", page=1),
        Block("heading", "$", page=1),
        Block("text", "1,234", page=1),
        Block("heading", "December 31, 2019", page=1),
        Block("heading", "(1)", page=2),
        Block("text", words(12, 100), page=2),
    ]
    chunks = chunker().chunk(blocks, document_id="d", filename="f.pdf", groups=[])
    # No number, date or marker became a section, and none is a chunk of its own.
    assert {c.section for c in chunks} == {"Results of operations"}
    assert all(len(WordTokens().token_spans(c.text)) >= 40 // 8 for c in chunks)
    assert len(chunks) == 1
    (chunk,) = chunks
    assert _all_words([chunk.text]) == _all_words([b.text for b in blocks[1:]])
    assert (chunk.page, chunk.page_end) == (1, 2)


def test_a_tiny_chunk_merges_with_its_neighbour_and_pages_stay_right() -> None:
    # A section's last few words, split off by the token budget, join the chunk before them; with overlap the words
    # they share are not repeated.
    blocks = [Block("text", words(36), page=1), Block("text", "Tail words here.", page=2)]
    plain = chunker(max_tokens=40, overlap=8)
    chunks = plain.chunk(blocks, document_id="d", filename="f", groups=[])
    assert len(chunks) == 1
    (chunk,) = chunks
    assert chunk.text == blocks[0].text + " " + blocks[1].text
    assert chunk.page_starts == [(0, 1), (len(blocks[0].text) + 1, 2)]
    assert (chunk.page, chunk.page_end) == (1, 2)
    assert chunk.ordinal == 0


def test_merging_leaves_ordinals_contiguous_and_drops_only_the_overlap_copy() -> None:
    blocks = [Block("text", words(75), page=1), Block("text", "Last line of the document.", page=3)]
    chunks = chunker(max_tokens=40, overlap=8).chunk(blocks, document_id="d", filename="f", groups=[])
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert all(len(WordTokens().token_spans(c.text)) >= 5 for c in chunks)
    assert all(len(WordTokens().token_spans(c.text)) <= 40 for c in chunks)
    assert chunks[-1].text.endswith("Last line of the document.")
    assert chunks[-1].page_end == 3
    assert chunks[-1].page_starts[-1] == (chunks[-1].text.index("Last line"), 3)
    # Every word is somewhere, in order; only overlap repeats.
    seen = [w for c in chunks for w in c.text.split()]
    assert set(seen) == set(_all_words([b.text for b in blocks]))


def test_a_small_table_joins_text_but_a_split_table_stays_with_its_header() -> None:
    small = "<table><tr><td></td><td>2019</td><td>2018</td></tr><tr><td>Revenue</td><td>5</td><td>4</td></tr></table>"
    rows = "".join(f"<tr><td>item {i}</td><td>{i * 10} units</td></tr>" for i in range(60))
    large = f"<table><tr><th>Item</th><th>Quantity</th></tr>{rows}</table>"
    blocks = [
        Block("text", words(40), page=1),
        Block("table", "2019 2018 Revenue 5 4", page=1, html=small),
        Block("table", "ignored", page=2, html=large),
        Block("text", "Short note.", page=3),
    ]
    chunks = chunker(max_tokens=200).chunk(blocks, document_id="d", filename="f", groups=[])
    assert chunks[0].text.endswith(".\n|  | 2019 | 2018 |\n| --- | --- | --- |\n| Revenue | 5 | 4 |")
    table_chunks = [c for c in chunks if "| Item | Quantity |" in c.text]
    assert all(c.text.startswith("| Item | Quantity |\n| --- | --- |") for c in table_chunks)
    assert len(table_chunks) > 1
    assert [line for c in table_chunks for line in c.text.splitlines() if line.startswith("| item ")] == [
        f"| item {i} | {i * 10} units |" for i in range(60)
    ]
    # The short note after the table joins its last piece, after its last row: every piece is still its header
    # and its rows, and no piece but the outer ones takes anything.
    assert chunks[-1].text.endswith("| item 59 | 590 units |\nShort note.")
    assert all(c.text.splitlines()[-1].startswith("| item ") for c in table_chunks[:-1])


def test_sub_sections_of_an_item_keep_the_item_in_their_section() -> None:
    blocks = [
        Block("heading", "PART II", page=10),
        Block("heading", "Item 7. Management's Discussion and Analysis of Financial Condition and Results of Operations"),  # noqa: E501
        Block("text", words(30)),
        Block("heading", "Liquidity and Capital Resources"),
        Block("text", words(30, 100) + " We refer to Item 8 for the statements."),
        Block("heading", "Item 8. Financial Statements and Supplementary Data"),
        Block("heading", "Note 5 — Debt"),
        Block("text", words(30, 200)),
        Block("heading", "Fair value"),
        Block("text", words(30, 300)),
    ]
    chunks = chunker().chunk(blocks, document_id="d", filename="10k.pdf", groups=[])
    sections = [c.section for c in chunks]
    assert sections == [
        "Item 7. Management's Discussion and Analysis of Financial Condition and Results of Operations",
        "Item 7. Management's Discussion and Analysis of … › Liquidity and Capital Resources",
        "Item 8. Financial Statements and Supplementary … › Note 5 — Debt",
        "Item 8. Financial Statements and Supplementary … › Note 5 — Debt › Fair value",
    ]
    assert chunks[1].embed_text.startswith("Item 7. Management's Discussion and Analysis of … › Liquidity")


def test_a_bare_item_number_and_its_name_are_one_title() -> None:
    blocks = [
        Block("heading", "ITEM 7."),
        Block("heading", "MANAGEMENT'S DISCUSSION AND ANALYSIS"),
        Block("text", words(10)),
        Block("heading", "Overview"),
        Block("text", words(10, 50)),
    ]
    chunks = chunker().chunk(blocks, document_id="d", filename="f", groups=[])
    assert chunks[-1].section == "ITEM 7. MANAGEMENT'S DISCUSSION AND ANALYSIS › Overview"
    assert "ITEM 7." in chunks[0].text  # the bare number is kept as text as well


def test_a_chunk_spanning_two_sections_names_both() -> None:
    # The first section is too short to stand alone, so the chunk goes on into the next one.
    blocks = [
        Block("heading", "Chapter 1 Scope"),
        Block("text", "Applies to all staff."),
        Block("heading", "Chapter 2 Leave"),
        Block("text", words(20)),
    ]
    (chunk,) = chunker().chunk(blocks, document_id="d", filename="f", groups=[])
    assert chunk.section == "Chapter 1 Scope | Chapter 2 Leave"
    assert chunk.embed_text.startswith("Chapter 1 Scope | Chapter 2 Leave\n")
    # A section followed by its own sub-section is named once, by the sub-section's label.
    blocks = [Block("heading", "第三章 财务"), Block("text", "见下文。"), Block("heading", "3.1 收入"), Block("text", words(20))]
    (chunk,) = chunker().chunk(blocks, document_id="d", filename="f", groups=[])
    assert chunk.section == "第三章 财务 › 3.1 收入"


def test_page_headers_repeated_on_every_page_are_dropped_after_the_first() -> None:
    blocks = []
    for page in range(1, 6):
        blocks += [
            Block("heading", "ACME Corp Annual Report 2019", page=page),
            Block("text", words(25, page * 100), page=page),
            Block("text", f"Page {page} of 5", page=page),
        ]
    chunks = chunker(max_tokens=200, overlap=0).chunk(blocks, document_id="d", filename="f", groups=[])
    text = "\n".join(c.text for c in chunks)
    assert text.count("ACME Corp Annual Report 2019") + sum(
        (c.section or "").count("ACME Corp Annual Report 2019") > 0 for c in chunks[:1]
    ) >= 1
    assert "ACME Corp Annual Report 2019" not in text.split(words(25, 100))[-1]
    assert text.count("of 5") == 1
    assert all(words(25, p * 100) in text for p in range(1, 6))


def test_chunks_on_contents_pages_are_boilerplate_and_content_pages_are_not() -> None:
    toc = [
        Block("heading", "Table of Contents", page=2),
        *[Block("text", f"Item {n}. {name} {p}", page=2) for n, name, p in [
            (1, "Business", 4), (2, "Properties", 19), (3, "Legal Proceedings", 20), (7, "Management's Discussion", 25)
        ]],
    ]  # fmt: skip
    content = [
        Block("heading", "Item 7. Management's Discussion and Analysis", page=3),
        Block("text", "Revenue grew 12% to $1,234 million; see Item 7 and Note 5 on page 25. " + words(20), page=3),
    ]
    chunks = chunker().chunk([*toc, *content], document_id="d", filename="f", groups=[])
    flagged = {c.boilerplate for c in chunks if c.page == 2}
    assert flagged == {True}
    assert not any(c.boilerplate for c in chunks if c.page == 3)


def test_a_table_whose_header_row_is_too_long_to_repeat_is_split_within_the_budget() -> None:
    # A CSV of long texts: its first row alone is larger than a chunk. Repeating it on every piece made chunks many
    # times the budget (the embedder saw only the header); now the table is cut as text, nothing lost.
    header = "".join(f"<td>{words(30, 100 * i)}</td>" for i in range(3))
    rows = "".join(f"<tr><td>row {i}</td><td>{words(5, 1000 + 10 * i)}</td><td>x</td></tr>" for i in range(10))
    html = f"<table><tr>{header}</tr>{rows}</table>"
    chunks = chunker().chunk([Block("table", "ignored", html=html)], document_id="d", filename="f.csv", groups=[])
    tok = WordTokens()
    assert all(len(tok.token_spans(c.text)) <= 40 for c in chunks)
    assert "".join(c.text for c in chunks).count("| row ") == 10
    assert all(f"w{100 * i + 29}" in " ".join(c.text for c in chunks) for i in range(3))


def test_a_heading_and_the_sentence_introducing_a_table_move_with_its_rows() -> None:
    html = "<table><tr><td></td><td>2019</td><td>2018</td></tr><tr><td>United States</td><td>65.8</td><td>62.8</td></tr></table>"
    lead = "The following table summarizes income before income taxes (in millions):"
    blocks = [Block("heading", "11. Income Tax", page=4), Block("text", lead, page=4),
              Block("table", "2019 2018 United States 65.8 62.8", page=4, html=html)]  # fmt: skip
    (chunk,) = chunker(max_tokens=200).chunk(blocks, document_id="d", filename="f", groups=[])
    assert chunk.text == f"{lead}\n|  | 2019 | 2018 |\n| --- | --- | --- |\n| United States | 65.8 | 62.8 |"
    assert chunk.section == "11. Income Tax"  # the section, as for any chunk: in its embedded text
    assert chunk.embed_text.startswith(f"11. Income Tax\n{lead}\n")


def test_the_lead_in_of_a_table_after_a_paragraph_is_in_both_and_on_every_piece() -> None:
    rows = "".join(f"<tr><td>item {i}</td><td>{i * 10} units</td></tr>" for i in range(60))
    html = f"<table><tr><th>Item</th><th>Quantity</th></tr>{rows}</table>"
    lead = "Stock on hand by item (units):"
    blocks = [Block("text", words(40), page=1), Block("text", lead, page=1), Block("table", "x", page=1, html=html)]
    chunks = chunker(max_tokens=60).chunk(blocks, document_id="d", filename="f", groups=[])
    prose, *pieces = chunks
    assert prose.text.endswith(lead)  # the paragraph keeps its last sentence
    assert len(pieces) > 1
    for piece in pieces:
        assert piece.text.startswith(f"{lead}\n| Item | Quantity |\n| --- | --- |\n| item ")
        assert len(WordTokens().token_spans(piece.text)) <= 60
    assert [line for c in pieces for line in c.text.splitlines() if line.startswith("| item ")] == [
        f"| item {i} | {i * 10} units |" for i in range(60)
    ]


def test_a_lead_in_one_paragraph_back_must_announce_the_table() -> None:
    rows = "".join(f"<tr><td>row {i}</td><td>{i}</td></tr>" for i in range(8))  # a table that stands alone
    html = f"<table><tr><td>a</td><td>b</td></tr>{rows}</table>"
    note = "Customers above 10% of revenue change from year to year, and so do their shares of it. " + words(30)

    def table_chunk(lead: str) -> str:
        blocks = [Block("text", lead, page=1), Block("text", note, page=1), Block("table", "a b 1 2", page=1, html=html)]
        return [c.text for c in chunker(max_tokens=200).chunk(blocks, document_id="d", filename="f", groups=[])
                if "| a | b |" in c.text][0]  # fmt: skip

    assert table_chunk("The following table presents sales by area:").startswith("The following table presents")
    assert table_chunk("Two kinds of customer exist:").startswith("| a | b |")
    # Without a colon, a sentence before a table is not its lead-in.
    blocks = [Block("text", words(40), page=1), Block("table", "a b 1 2", page=1, html=html)]
    chunks = chunker(max_tokens=200).chunk(blocks, document_id="d", filename="f", groups=[])
    assert chunks[-1].text.startswith("| a | b |\n| --- | --- |\n| row 0 | 0 |")
