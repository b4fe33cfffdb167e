"""Quoted evidence with the real default embedder (all-MiniLM-L6-v2 on torch): the sentence that answers an English
question is the one quoted, and sources on the topic that lack the answer are not enough to answer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kb.models import Passage
from kb.ports import Embedder
from service.ask.extract import Extractor

NORMANS = (
    "The Normans were a people of northern France descended from Norse settlers. Their leader Rollo swore fealty to "
    "King Charles III of West Francia in 911 and received lands along the lower Seine. Over the following century "
    "the settlers adopted the Frankish language and Christianity. In 1066 Duke William of Normandy crossed the "
    "Channel and defeated the English king Harold at Hastings."
)
TRAVEL = (
    "Travel policy. Employees book flights through the travel desk. Economy class is required for flights under six "
    "hours. Business class may be booked for longer flights with a manager's approval. Hotel costs are reimbursed up "
    "to 150 euros per night."
)
BENEFITS = (
    "Benefits for employees. New parents receive sixteen weeks of parental leave at full pay, which can be taken in "
    "up to three blocks. Employees also receive 28 days of paid holiday a year. Requests for leave go to the HR "
    "department eight weeks in advance."
)


def passage(text: str, n: int) -> Passage:
    return Passage(chunk_id=f"c{n}", document_id=f"d{n}", filename=f"d{n}.txt", text=text, score=1.0)


@pytest.fixture(scope="module")
def extractor(embedder_on: Callable[[str], Embedder]) -> Extractor:
    return Extractor(embedder_on("torch"), ["en"])


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("Which king did Rollo swear fealty to?", "Their leader Rollo swore fealty to King Charles III"),
        ("What language did the settlers take up?", "Over the following century the settlers adopted the Frankish"),
        ("How many weeks of parental leave do employees get?", "New parents receive sixteen weeks of parental leave"),
        ("What is the limit for hotel costs per night?", "Hotel costs are reimbursed up to 150 euros per night."),
    ],
)
def test_the_sentence_that_answers_an_english_question_is_quoted_first(
    extractor: Extractor, question: str, answer: str
) -> None:
    sources = [passage(text, n) for n, text in enumerate((TRAVEL, NORMANS, BENEFITS), 1)]

    extraction = extractor.extract(question, sources, max_sentences=1)

    assert [q.sentence[: len(answer)] for q in extraction.quotes] == [answer]
    assert extraction.text.startswith(answer)
    quote = extraction.quotes[0]
    assert extraction.text.endswith(f"[{quote.n}]") and sources[quote.n - 1].text[quote.start :].startswith(answer)
    assert extractor.answerable(extraction)


def test_more_quotes_stay_in_document_order_behind_the_best(extractor: Extractor) -> None:
    sources = [passage(text, n) for n, text in enumerate((TRAVEL, NORMANS, BENEFITS), 1)]

    extraction = extractor.extract("Who did Duke William defeat at Hastings in 1066?", sources, max_sentences=3)

    best = max(extraction.quotes, key=lambda q: q.score)
    assert best.sentence.startswith("In 1066 Duke William of Normandy")
    assert [(q.n, q.start) for q in extraction.quotes] == sorted((q.n, q.start) for q in extraction.quotes)


def test_sources_on_the_topic_that_lack_the_answer_do_not_answer(extractor: Extractor) -> None:
    # The case: the parental leave question against a travel policy (employees, weeks, leave nearby).
    question = "How many weeks of parental leave do employees get?"
    answered = extractor.extract(question, [passage(TRAVEL, 1), passage(BENEFITS, 2)])
    lacking = extractor.extract(question, [passage(TRAVEL, 1), passage(NORMANS, 2)])

    assert extractor.answerable(answered)
    assert not extractor.answerable(lacking)
    assert lacking.score < answered.score
