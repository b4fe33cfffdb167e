"""Quoted evidence (service.ask.extract) with fake embedders: which sentences are quoted, in what order, with which
[n], and when the evidence is too weak to answer."""

from __future__ import annotations

import pytest

from kb.models import Passage
from service.ask import extract
from service.ask.extract import Extraction, Extractor, Quote, split_sentences
from tests.fakes import FakeEmbedder, word_overlap

TRAVEL = (
    "Travel policy. Employees book flights through the travel desk. Economy class is required for flights under six "
    "hours. Business class may be booked for flights longer than six hours with a manager's approval."
)
EXPENSES = (
    "Expense reports are due within 30 days of the trip. Receipts are required for every expense above 25 euros. "
    "Hotel costs are reimbursed up to 150 euros per night in most cities."
)
LEAVE = (
    "Parental leave lasts sixteen weeks at full pay. It can be taken in up to three blocks within the first two "
    "years. Requests go to the HR department at least eight weeks before the leave starts."
)


def passage(text: str, chunk_id: str) -> Passage:
    return Passage(chunk_id=chunk_id, document_id=f"doc-{chunk_id}", filename=f"{chunk_id}.txt", text=text, score=1.0)


def sources(*texts: str) -> list[Passage]:
    return [passage(text, f"c{i}") for i, text in enumerate(texts, 1)]


def lexical() -> Extractor:
    return Extractor(None, ["en"])


def test_the_sentence_that_answers_is_quoted_with_its_source_number() -> None:
    given = sources(TRAVEL, EXPENSES, LEAVE)
    extraction = lexical().extract("How much are hotel costs reimbursed per night?", given)

    best = max(extraction.quotes, key=lambda q: q.score)
    assert best.sentence == "Hotel costs are reimbursed up to 150 euros per night in most cities."
    assert best.n == 2 and best.passage is given[1]
    assert given[1].text[best.start : best.start + len(best.sentence)] == best.sentence
    assert extraction.score == best.score
    assert f"{best.sentence} [2]" in extraction.text


def test_quotes_are_in_document_order_and_the_text_follows_it() -> None:
    # The best sentence is in the second source; the other sentences that answer are before it.
    given = sources(
        "Long flights over six hours are booked in premium class on Asia routes. Trains are preferred for short trips.",
        "Business class is allowed for flights over six hours. Economy class flights are booked by the travel desk.",
    )
    extraction = lexical().extract("Which class for flights over six hours?", given, max_sentences=3)

    assert len(extraction.quotes) >= 2
    order = [(q.n, q.start) for q in extraction.quotes]
    assert order == sorted(order)
    assert max(extraction.quotes, key=lambda q: q.score) is not extraction.quotes[0]
    positions = [extraction.text.index(f"{q.sentence} [{q.n}]") for q in extraction.quotes]
    assert positions == sorted(positions)
    assert extraction.text == " ".join(f"{q.sentence} [{q.n}]" for q in extraction.quotes)


def test_max_sentences_bounds_the_quotes() -> None:
    given = sources(
        "Flights under six hours use economy class. Flights over six hours may use business class. "
        "Flights are booked through the travel desk. Flights in Europe use economy class."
    )
    question = "Which class do flights use?"

    assert len(lexical().extract(question, given, max_sentences=1).quotes) == 1
    assert len(lexical().extract(question, given, max_sentences=2).quotes) == 2
    assert len(lexical().extract(question, given, max_sentences=3).quotes) == 3
    assert lexical().extract(question, given, max_sentences=0).quotes == []


def test_a_further_sentence_must_answer_too_not_just_be_there() -> None:
    extraction = lexical().extract("How many weeks does parental leave last?", sources(LEAVE, EXPENSES), 3)

    assert [q.sentence for q in extraction.quotes] == ["Parental leave lasts sixteen weeks at full pay."]


def test_a_sentence_that_leans_on_the_one_before_is_quoted_with_it() -> None:
    extraction = lexical().extract("In how many blocks can it be taken within the first two years?", sources(LEAVE), 2)

    assert [q.sentence for q in extraction.quotes] == [
        "Parental leave lasts sixteen weeks at full pay.",
        "It can be taken in up to three blocks within the first two years.",
    ]


def test_headings_and_fragments_are_never_quoted() -> None:
    extraction = lexical().extract("What does the travel policy say?", sources(TRAVEL), 3)

    assert extraction.quotes
    assert all(q.sentence != "Travel policy." for q in extraction.quotes)


def test_a_sentence_repeated_by_overlapping_chunks_is_quoted_once() -> None:
    overlap = "Hotel costs are reimbursed up to 150 euros per night in most cities."
    given = sources(EXPENSES, overlap + " Meals are reimbursed at the daily rate.")
    extraction = lexical().extract("How much are hotel costs reimbursed per night?", given, 3)

    assert [q.sentence for q in extraction.quotes].count(overlap) == 1
    assert next(q for q in extraction.quotes if q.sentence == overlap).n == 1


def test_english_sentences_are_embedded_in_one_call_and_the_dense_side_can_decide() -> None:
    favoured = "The approval comes from the line manager."

    def vector(_call: int, _position: int, text: str) -> list[float]:
        return [1.0, 0.0] if text in (favoured, "Who approves business class?") else [0.0, 1.0]

    embedder = FakeEmbedder(dimension=2, vector=vector)
    given = sources(favoured + " Business class needs an approval form.", "The approval of business class is rare.")
    extraction = Extractor(embedder, ["en"]).extract("Who approves business class?", given, 1)

    assert len(embedder.calls) == 1
    assert set(embedder.calls[0]) == {favoured, "Business class needs an approval form.",
                                      "The approval of business class is rare."}  # fmt: skip
    assert embedder.queries == ["Who approves business class?"]
    assert [q.sentence for q in extraction.quotes] == [favoured]


def test_dense_and_lexical_agree_on_the_answer_with_a_word_overlap_embedder() -> None:
    embedder = FakeEmbedder(dimension=256, vector=word_overlap())
    extraction = Extractor(embedder, ["en"]).extract(
        "How much are hotel costs reimbursed per night?", sources(TRAVEL, EXPENSES, LEAVE)
    )

    best = max(extraction.quotes, key=lambda q: q.score)
    assert best.sentence.startswith("Hotel costs are reimbursed")
    assert Extractor(embedder, ["en"]).answerable(extraction)


CHINESE = "差旅政策。员工通过差旅服务台预订机票。六小时以内的航班须乘坐经济舱。酒店费用每晚最多报销一百五十欧元。"
CHINESE_LEAVE = "育儿假为十六周，期间全薪。申请须至少提前八周提交人力资源部。"


def test_a_chinese_question_is_answered_from_lexical_evidence_alone() -> None:
    embedder = FakeEmbedder(dimension=256, vector=word_overlap())
    given = sources(CHINESE, CHINESE_LEAVE)
    extraction = Extractor(embedder, ["en"]).extract("酒店费用每晚报销多少？", given)

    assert embedder.calls == [] and embedder.queries == []  # the embedder does not know Chinese
    best = max(extraction.quotes, key=lambda q: q.score)
    assert best.sentence == "酒店费用每晚最多报销一百五十欧元。"
    assert best.n == 1
    assert "酒店费用每晚最多报销一百五十欧元。[1]" in extraction.text
    assert " [1]" not in extraction.text  # CJK text takes no space before its marker


def test_chinese_quotes_from_two_sources_run_on_in_order() -> None:
    extraction = Extractor(None, ["*"]).extract("育儿假有多少周，须提前多少周申请？", sources(CHINESE_LEAVE, CHINESE))

    assert [q.sentence for q in extraction.quotes][:2] == [
        "育儿假为十六周，期间全薪。",
        "申请须至少提前八周提交人力资源部。",
    ]
    assert extraction.text.startswith("育儿假为十六周，期间全薪。[1]申请须至少提前八周提交人力资源部。[1]")


def test_no_sources_no_sentences_or_no_evidence_quote_nothing() -> None:
    extractor = lexical()
    for extraction in (
        extractor.extract("How long is parental leave?", []),
        extractor.extract("How long is parental leave?", sources("Overview", "  ")),
        extractor.extract("What is the boiling point of tungsten?", sources(TRAVEL, EXPENSES)),
    ):
        assert extraction == Extraction([], 0.0, "")
        assert not extractor.answerable(extraction)


def test_answerable_is_the_evidence_threshold() -> None:
    extractor = lexical()
    quote = Quote(1, passage(LEAVE, "c1"), "Parental leave lasts sixteen weeks at full pay.", 0, 0.0)

    assert extractor.answerable(Extraction([quote], extract.ANSWERABLE_SCORE, "x [1]"))
    assert not extractor.answerable(Extraction([quote], extract.ANSWERABLE_SCORE - 0.01, "x [1]"))
    assert not extractor.answerable(Extraction([], 1.0, ""))


def test_sources_on_the_topic_without_the_answer_are_not_answerable() -> None:
    # The case: parental leave asked of a travel policy that shares some of its words.
    extractor = lexical()
    on_topic = extractor.extract("How many weeks does parental leave last?", sources(LEAVE, TRAVEL))
    off = extractor.extract("How many weeks does parental leave last?", sources(TRAVEL, EXPENSES))

    assert extractor.answerable(on_topic)
    assert not extractor.answerable(off)
    assert off.score < on_topic.score


def test_the_question_s_numbers_and_dates_must_stand_in_the_quoted_passages() -> None:
    extractor = lexical()
    asked = extractor.extract("How many weeks does parental leave last since 2024?", sources(LEAVE, TRAVEL))
    assert asked.unstated == ["2024"] and not extractor.answerable(asked)

    stated = extractor.extract("Does parental leave last sixteen weeks?", sources(LEAVE, TRAVEL))
    assert stated.unstated == [] and extractor.answerable(stated)
    # Written another way in the question than in the passage (16 / sixteen): still stated.
    assert extractor.extract("Does parental leave last 16 weeks?", sources(LEAVE, TRAVEL)).unstated == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The U.S. Army was founded in 1775. It grew.", ["The U.S. Army was founded in 1775.", "It grew."]),
        ("Dr. Smith agreed. So did St. Louis.", ["Dr. Smith agreed.", "So did St. Louis."]),
        (
            "伊维卡·奥利奇（，；），克罗地亚足球运动员。司职前锋。",
            ["伊维卡·奥利奇（，；），克罗地亚足球运动员。", "司职前锋。"],
        ),
        ("One sentence only", ["One sentence only"]),
        ("", []),
    ],
)
def test_sentences_are_cut_as_ingestion_cuts_them_without_breaking_abbreviations_or_brackets(
    text: str, expected: list[str]
) -> None:
    found = split_sentences(text)

    assert [sentence for _, sentence in found] == expected
    assert all(text[start : start + len(sentence)] == sentence for start, sentence in found)
