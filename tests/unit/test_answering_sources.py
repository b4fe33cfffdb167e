"""The ask pipeline with fakes: whole documents, neighbour context, "this document", ACL of reused sources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from kb.models import Passage, SearchFilter
from kb.settings import AnswerSettings, GeneratorSettings, RetrievalSettings
from service.ask.pipeline import AskPipeline
from service.ask.scope import documents_of_previous_turn, refers_to_previous_documents
from service.search.service import RetrievalResult
from tests.fakes import FakeConversations, FakeGenerator, FakeRetrieval

pytestmark = pytest.mark.unit


def passage(doc: str, ordinal: int, text: str, groups: Sequence[str] = ("staff",), score: float = 0.5) -> Passage:
    return Passage(chunk_id=f"{doc}-{ordinal}", document_id=doc, filename=f"{doc}.pdf", text=text, score=score,
                   page=ordinal + 1, ordinal=ordinal, groups=list(groups))  # fmt: skip


def build(
    retrieval: FakeRetrieval, answer: str = "An answer.", context_tokens: int = 3000, **settings: Any
) -> tuple[AskPipeline, FakeGenerator, FakeConversations]:
    generator = FakeGenerator(answer)
    conversations = FakeConversations()
    retrieval_settings = RetrievalSettings(context_tokens=context_tokens, **settings)
    # The model's answer as it comes (these tests are about which sources it is given, not about the check).
    service = AskPipeline(retrieval, generator, retrieval_settings, GeneratorSettings(), conversations,  # type: ignore[arg-type]
                          answer_settings=AnswerSettings(mode="generate"))  # fmt: skip
    return service, generator, conversations


def source_lines(prompt: str) -> list[str]:
    return [line for line in prompt.split("\n\nUsing the text above")[0].split("\n\n") if line.startswith("[")]


MANUAL = [passage("manual", i, f"Manual section {i} explains step {i} of the setup.") for i in range(6)]
POLICY = [passage("policy", i, f"Policy clause {i} covers leave rule {i}.") for i in range(3)]
HANDBOOK = [passage("handbook", i, f"Handbook chapter {i} on topic {i}. " + "filler " * 60) for i in range(40)]


async def test_a_document_that_fits_goes_in_whole_and_in_order_without_retrieval() -> None:
    retrieval = FakeRetrieval([MANUAL[4]], documents={"manual": MANUAL, "policy": POLICY})
    answers, generator, _ = build(retrieval)

    answer = await answers.ask("What does it say?", SearchFilter(document_ids=["policy", "manual"]))

    assert answer.mode == "generate"  # the model was asked
    assert source_lines(generator.prompt) == [
        f"[{n + 1}] {p.text}" for n, p in enumerate(POLICY + MANUAL)
    ]
    assert retrieval.searches == []  # nothing left to retrieve: both documents are wholly in the context


async def test_a_document_too_long_for_the_budget_falls_back_to_retrieval_inside_it() -> None:
    hits = [HANDBOOK[30], HANDBOOK[2], MANUAL[1]]
    retrieval = FakeRetrieval(hits, documents={"manual": MANUAL, "handbook": HANDBOOK})
    answers, generator, _ = build(retrieval, context_tokens=800)

    await answers.ask("Which topic?", SearchFilter(document_ids=["manual", "handbook"]))

    lines = source_lines(generator.prompt)
    # The manual whole first; then the handbook's retrieved chunks, in document order.
    assert lines[:6] == [f"[{n + 1}] {p.text}" for n, p in enumerate(MANUAL)]
    assert [line.split("] ", 1)[1][:19] for line in lines[6:]] == ["Handbook chapter 2 ", "Handbook chapter 30"]
    [(_, search_filter, _)] = retrieval.searches
    assert search_filter is not None and search_filter.document_ids == ["handbook"]


async def test_whole_documents_only_hold_chunks_the_caller_may_read() -> None:
    mixed = [passage("mixed", 0, "Public part of the plan."), passage("mixed", 1, "Secret salaries.", groups=["hr"])]
    retrieval = FakeRetrieval([], documents={"mixed": mixed})
    answers, generator, _ = build(retrieval)

    await answers.ask("Summarise", SearchFilter(groups=["staff"], document_ids=["mixed"]))

    assert source_lines(generator.prompt) == ["[1] Public part of the plan."]


async def test_neighbours_are_packed_with_their_hit_once_each_in_document_order() -> None:
    chunks = [passage("guide", i, f"Guide part {i}.") for i in range(8)]
    hit_a = passage("guide", 2, "Guide part 2.", score=0.9)
    hit_a.context = chunks[1:4]
    hit_b = passage("guide", 4, "Guide part 4.", score=0.8)
    hit_b.context = chunks[3:6]  # shares part 3 with the first hit
    retrieval = FakeRetrieval([hit_a, hit_b])
    answers, generator, conversations = build(retrieval, expand_neighbours=1)

    answer = await answers.ask("What do parts 2 and 4 say?")

    assert source_lines(generator.prompt) == [f"[{n}] Guide part {n}." for n in range(1, 6)]
    stored = conversations.messages[answer.conversation_id][1]["sources"]
    assert [s["chunk_id"] for s in stored] == [f"guide-{i}" for i in range(1, 6)]
    assert all(s["context"] == [] for s in stored)


async def test_a_neighbourhood_that_does_not_fit_leaves_its_hit_alone() -> None:
    long_neighbour = passage("guide", 1, "word " * 500)
    hit = passage("guide", 2, "Guide part 2.")
    hit.context = [long_neighbour, hit]
    answers, generator, _ = build(FakeRetrieval([hit]), context_tokens=400, expand_neighbours=1)

    await answers.ask("What does part 2 say?")

    assert source_lines(generator.prompt) == ["[1] Guide part 2."]


def test_references_to_the_previous_documents() -> None:
    for question in ("Summarise this document.", "Who wrote that report?", "这份文件的结论是什么？", "该文档的作者是谁"):
        assert refers_to_previous_documents(question), question
    for question in ("What is a document store?", "Where are documents kept?", "文档上传的大小限制是多少？"):
        assert not refers_to_previous_documents(question), question


def test_documents_of_the_previous_turn_are_those_it_cited_else_all_it_used() -> None:
    sources = [MANUAL[0], POLICY[0], MANUAL[1], HANDBOOK[0]]
    assert documents_of_previous_turn("Leave is 20 days [2]. Setup has steps [3][1].", sources) == ["policy", "manual"]
    assert documents_of_previous_turn("No markers here.", sources) == ["manual", "policy", "handbook"]


async def test_this_document_in_a_conversation_means_the_documents_the_previous_answer_cited() -> None:
    retrieval = FakeRetrieval([MANUAL[3], POLICY[1]], documents={"manual": MANUAL, "policy": POLICY})
    answers, generator, _ = build(retrieval, answer="Step 3 of the setup [1].")
    first = await answers.ask("What is step 3?")

    await answers.ask("Summarise this document.", conversation_id=first.conversation_id)

    # The first answer cited the manual only: the follow-up reads the whole manual, not the policy.
    assert source_lines(generator.prompt) == [f"[{n + 1}] {p.text}" for n, p in enumerate(MANUAL)]


async def test_reused_sources_of_a_conversation_are_checked_against_the_callers_groups() -> None:
    secret = passage("salaries", 0, "Salaries rise by 3 percent in May.", groups=["hr"])
    public = passage("calendar", 0, "The office closes in May for a week.", groups=["staff"])
    retrieval = FakeRetrieval([secret, public])
    answers, generator, _ = build(retrieval)
    first = await answers.ask("What happens in May?", SearchFilter(groups=["hr", "staff"]))
    assert "Salaries rise" in generator.prompt

    # Someone outside "hr" continues the same conversation: the stored salary source must not come back.
    follow_up = await answers.ask("And in June?", SearchFilter(groups=["staff"]), first.conversation_id)

    assert "Salaries" not in generator.prompt
    assert source_lines(generator.prompt) == ["[1] The office closes in May for a week."]
    assert all(c.document_id != "salaries" for c in follow_up.citations)


async def test_a_source_the_caller_may_not_read_never_reaches_the_prompt() -> None:
    class LeakyRetrieval(FakeRetrieval):
        async def search(self, query: str, *args: Any, **kwargs: Any) -> RetrievalResult:
            return RetrievalResult(self.hits, True, 0.8, 1.0, 1.0)  # ignores the filter, as a faulty index might

    secret = passage("salaries", 0, "Salaries rise by 3 percent in May.", groups=["hr"])
    answers, generator, _ = build(LeakyRetrieval([secret]))

    answer = await answers.ask("What rises in May?", SearchFilter(groups=["staff"]))

    assert generator.messages == []  # the model is not even asked
    assert answer.grounded is False and answer.citations == [] and answer.mode == "none"


async def test_retrieval_depth_follows_the_context_budget() -> None:
    retrieval = FakeRetrieval([MANUAL[0]])
    small, _, _ = build(retrieval, context_tokens=1000)
    large, _, _ = build(retrieval, context_tokens=100_000)
    await small.ask("What is step 0?")
    await large.ask("What is step 0?")
    # The window caps the large budget: 4096 - 320 answer tokens - the prompt (~80) leaves ~3700, 18 chunks' worth.
    assert [top_k for _, _, top_k in retrieval.searches] == [5, 18]
