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
