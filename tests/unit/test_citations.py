import pytest

from kb.models import Passage
from service.ask.citations import StreamedAnswer, annotate, parse_markers, strip_invalid_markers
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


TRAVEL = "Business travel must be approved two weeks in advance. Leave for travel days is reimbursed within 30 days."


def test_a_cited_sentence_with_an_invented_number_is_unsupported_and_the_answer_not_grounded() -> None:
    """The issue's case: a travel policy, and the model's "12 weeks [1]" for parental leave."""
    result = annotate("Parental leave is 12 weeks [1].", [passage(1, TRAVEL)])
    (citation,) = result.citations
    (claim,) = result.claims
    assert citation.supported is False and result.grounded is False
    assert (claim.cited, claim.supported, claim.missing) == ([1], False, ["12 weeks"])
    assert result.text[claim.start : claim.end] == "Parental leave is 12 weeks [1]."


def test_an_answer_whose_every_claim_its_sources_support_is_grounded() -> None:
    sources = [passage(1, "Backups run nightly at 02:00."), passage(2, "Originals are kept for seven years.")]
    result = annotate("Originals are kept 7 years. Backups run nightly [1].", sources)
    assert result.grounded is True
    assert [(c.cited, c.supported, c.missing) for c in result.claims] == [([2], True, []), ([1], True, [])]
    assert all(c.supported for c in result.citations)


def test_one_unsupported_sentence_makes_its_citation_unsupported_though_another_sentence_is_fine() -> None:
    sources = [passage(1, "The upload limit is 100 MB per file. Uploads are scanned for viruses.")]
    result = annotate("The upload limit is 100 MB [1]. Uploads are scanned within 5 minutes [1].", sources)
    (citation,) = result.citations
    assert [c.supported for c in result.claims] == [True, False]
    assert result.claims[1].missing == ["5 minutes"]
    assert citation.supported is False and result.grounded is False


def test_an_uncited_claim_no_source_supports_stays_uncited_and_unsupported() -> None:
    sources = [passage(1, "Backups run nightly at 02:00.")]
    result = annotate("Backups run nightly [1]. The moon is made of cheese.", sources)
    assert result.text == "Backups run nightly [1]. The moon is made of cheese."
    assert [(c.cited, c.supported) for c in result.claims] == [([1], True), ([], False)]
    assert [c.n for c in result.citations] == [1] and result.citations[0].supported is True
    assert result.grounded is False


def test_claim_spans_point_into_the_final_text() -> None:
    """The final text gains inferred markers and loses markers to no source: the spans follow it."""
    sources = [passage(1, "Backups run nightly at 02:00."), passage(2, "Originals are kept for seven years.")]
    result = annotate("Originals are kept seven years. See the archive [7]. Backups run at 02:00 [1].", sources)
    assert result.text == "Originals are kept seven years [2]. See the archive. Backups run at 02:00 [1]."
    assert [result.text[c.start : c.end] for c in result.claims] == [
        "Originals are kept seven years [2].",
        "See the archive.",
        "Backups run at 02:00 [1].",
    ]
    assert [c.supported for c in result.claims] == [True, False, True]


def test_an_answer_that_claims_nothing_is_not_grounded() -> None:
    result = annotate("Yes.", [passage(1, "Backups run nightly.")])
    assert result.claims == [] and result.grounded is False


def test_a_chinese_sentence_with_a_changed_number_is_unsupported() -> None:
    sources = [passage(1, "工作日值班时间为北京时间下午三点至晚上十二点。")]
    good = annotate("值班时间为下午三点至晚上十二点。", sources)
    bad = annotate("值班时间为下午五点至晚上十二点 [1]。", sources)
    assert good.grounded is True and good.citations[0].supported is True
    assert bad.grounded is False and bad.citations[0].supported is False
    assert bad.claims[0].missing == ["五点"]


STREAMED_SOURCES = [
    passage(1, "Uploads are limited to 100 MB per file by default. Larger files are refused."),
    passage(2, "The default upload size limit is 100 MB per file, set by KB_INGEST__MAX_UPLOAD_BYTES."),
    passage(3, "工作日值班时间为上午九点到下午六点。周末由运维小组轮流值班。"),
]


@pytest.mark.parametrize(
    "answer",
    [
        "The default upload size limit is 100 MB per file.",  # uncited: the service adds [2]
        "The default upload size limit is 100 MB per file [2]. Larger files are refused [9].",  # [9]: no source
        "Uploads are limited to 100 MB [1, 2] per file. Larger files are refused. [1] Thanks!",
        "工作日值班时间为上午九点到下午六点。周末由运维小组轮流值班【3】。",
        "  The limit is 100 MB per file , by default [7].\n\nLarger files are refused.\n- 3.5 MB is fine. e.g. this",
        'He said "Uploads are limited to 100 MB per file." Then left [source 2].',
        "Larger files are refused [1][2]. [3] Done.",
    ],
)
def test_a_streamed_answer_reads_as_the_annotated_one_however_it_is_cut(answer: str) -> None:
    final = annotate(answer, STREAMED_SOURCES).text
    for size in (1, 2, 3, 5, 8, len(answer)):
        streamed = StreamedAnswer(STREAMED_SOURCES)
        pieces = [streamed.feed(answer[i : i + size]) for i in range(0, len(answer), size)]
        assert "".join(pieces) + streamed.finish() == final, size
    # Released as it comes, not all at the end: the first sentence is out before the model is done.
    streamed = StreamedAnswer(STREAMED_SOURCES)
    early = "".join(streamed.feed(ch) for ch in answer)
    assert early and final.startswith(early)
