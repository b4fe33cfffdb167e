import pytest

from kb.models import Passage
from service.citations import build_citations, parse_markers, strip_invalid_markers
from service.lexical import content_terms, coverage

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
    (citation,) = build_citations("The upload limit is 100 MB [2].", sources)
    assert (citation.n, citation.document_id, citation.page) == (2, "d2", 5)
    assert citation.snippet == "The upload limit is 100 MB per file."


def test_answer_without_markers_cites_the_source_it_draws_from() -> None:
    sources = [passage(1, "Backups run nightly at 02:00."), passage(2, "Originals are kept for seven years.")]
    (citation,) = build_citations("Originals are kept seven years.", sources)
    assert citation.n == 2


def test_nothing_cited_when_the_answer_shares_nothing_with_the_sources() -> None:
    assert build_citations("I cannot say.", [passage(1, "Backups run nightly.")]) == []


def test_chinese_terms_are_bigrams() -> None:
    assert {"知识", "识库"} <= content_terms("知识库")
    assert coverage("值班时间是什么", "工作日值班时间为下午三点") == 1.0
    assert coverage("What is the weather on Mars?", "Backups run nightly.") == 0.0
