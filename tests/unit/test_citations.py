import pytest

from kb.models import Passage
from service.ask.citations import annotate, parse_markers, strip_invalid_markers
from service.search.lexical import content_terms, coverage

pytestmark = pytest.mark.unit


def passage(n: int, text: str, page: int = 1, starts=()) -> Passage:
    return Passage(chunk_id=f"c{n}", document_id=f"d{n}", filename=f"f{n}.pdf", text=text, score=0.5,
                   page=page, page_starts=list(starts))


def test_markers_in_every_common_form() -> None:
    parsed = parse_markers("A [1]. B [2, 3]. C 【2】. D [9]. E [source 1].", source_count=3)
    assert parsed.cited == [1, 2, 3]
    assert parsed.invalid == [9]


def test_invalid_markers_are_removed_from_the_text() -> None:
    assert strip_invalid_markers("Yes [1]. No [7].", 2) == "Yes [1]. No."
    assert strip_invalid_markers("Both [1, 5].", 2) == "Both [1]."


def test_citations_follow_markers_and_name_the_page_of_the_snippet() -> None:
    sources = [
        passage(1, "Unrelated text about lunch."),
        passage(2, "Intro on page four. The upload limit is 100 MB per file.", page=4, starts=[(0, 4), (20, 5)]),
    ]
    result = annotate("The upload limit is 100 MB [2].", sources)
    (citation,) = result.citations
    assert (citation.n, citation.document_id, citation.page, citation.inferred) == (2, "d2", 5, False)
    assert citation.snippet == "The upload limit is 100 MB per file."
    assert result.text == "The upload limit is 100 MB [2]."


def test_uncited_sentences_get_the_source_that_supports_them() -> None:
    sources = [passage(1, "Backups run nightly at 02:00."), passage(2, "Originals are kept for seven years.")]
    result = annotate("Originals are kept seven years. Backups run nightly [1].", sources)
    assert result.text == "Originals are kept seven years [2]. Backups run nightly [1]."
    assert [(c.n, c.inferred) for c in result.citations] == [(2, True), (1, False)]


def test_invalid_markers_are_dropped_from_the_final_answer() -> None:
    result = annotate("Backups run nightly [1]. See also [7].", [passage(1, "Backups run nightly at 02:00.")])
    assert result.text == "Backups run nightly [1]. See also."
    assert [c.n for c in result.citations] == [1]


def test_nothing_cited_when_the_answer_shares_nothing_with_the_sources() -> None:
    result = annotate("I cannot say.", [passage(1, "Backups run nightly.")])
    assert result.citations == [] and result.text == "I cannot say."


def test_chinese_sentences_are_matched_to_their_source() -> None:
    sources = [passage(1, "工作日值班时间为北京时间下午三点至晚上十二点。"), passage(2, "备份每天凌晨两点进行。")]
    result = annotate("值班时间为下午三点至晚上十二点。", sources)
    assert [c.n for c in result.citations] == [1]
    assert result.text == "值班时间为下午三点至晚上十二点 [1]。"


def test_chinese_terms_are_bigrams() -> None:
    assert {"知识", "识库"} <= content_terms("知识库")
    assert coverage("值班时间是什么", "工作日值班时间为下午三点") == 1.0
    assert coverage("What is the weather on Mars?", "Backups run nightly.") == 0.0


def test_a_citation_to_a_source_that_does_not_support_the_sentence_is_flagged() -> None:
    sources = [passage(1, "Backups run nightly at 02:00."), passage(2, "Originals are kept for seven years.")]
    result = annotate("Originals are kept for seven years [1].", sources)
    (citation,) = result.citations
    assert citation.n == 1 and citation.supported is False and citation.inferred is False


def test_the_span_locates_the_snippet_in_the_chunk() -> None:
    text = "Intro sentence here. The upload limit is 100 MB per file. Trailing words."
    (citation,) = annotate("The upload limit is 100 MB [1].", [passage(1, text)]).citations
    start, end = citation.span
    assert text[start:end] == citation.snippet == "The upload limit is 100 MB per file."
    assert citation.supported is True
