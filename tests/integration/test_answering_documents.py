"""Questions about specific documents with every part real: MiniLM embedder, Qdrant Edge, SQLite conversations and
the in-process vLLM engine (SmolLM2)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from kb.adapters.edge_index import EdgeVectorIndex
from kb.adapters.sql_registry import SqlRegistry
from kb.adapters.vllm_engine import VllmEngineGenerator
from kb.container import build_embedder
from kb.models import Chunk, SearchFilter
from kb.settings import GeneratorSettings, RetrievalSettings, Settings
from service.ask.events import Citations, Done, payload
from service.ask.pipeline import AskPipeline, Question
from service.ask.prompt import no_information_answer
from service.ask.scope import documents_of_previous_turn
from service.search.service import RetrievalService

# On the session's loop: the shared in-process engine (tests/conftest.py vllm_engine) runs its requests there.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

HANDBOOK = [
    "Leave policy. Every employee accrues two days of paid leave per month.",
    "Leave requests are approved by the team lead within three working days.",
    "Unused leave expires at the end of March of the following year.",
]
SALARIES = ["Salary bands. Engineers in band 4 earn between 80,000 and 95,000 euros a year."]
# Far longer than the small budget below: questions about it are answered from retrieval inside it.
MANUAL = [
    f"Backup manual, step {i}: the operator checks volume {i} of the nightly backup, verifies its checksum "
    f"against the catalogue entry number {1000 + i}, and records the result in the log book before moving on."
    for i in range(60)
]


def chunks(document_id: str, texts: list[str], groups: list[str]) -> list[Chunk]:
    return [
        Chunk(chunk_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}/{i}")), document_id=document_id, ordinal=i,
              text=text, filename=f"{document_id}.txt", groups=groups)
        for i, text in enumerate(texts)
    ]  # fmt: skip


class Stack:
    def __init__(self, retrieval: RetrievalService, generator: VllmEngineGenerator, registry: SqlRegistry) -> None:
        self.retrieval, self.generator, self.registry = retrieval, generator, registry

    def answers(self, context_tokens: int = 3000) -> AskPipeline:
        settings = RetrievalSettings(context_tokens=context_tokens)
        return AskPipeline(self.retrieval, self.generator, settings, GeneratorSettings(max_answer_tokens=48),
                             self.registry)  # fmt: skip

    def sources(self, conversation_id: str) -> list[dict[str, Any]]:
        return [m for m in self.registry.conversation(conversation_id, 100) if m["role"] == "assistant"][-1]["sources"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory, vllm_engine: VllmEngineGenerator) -> AsyncIterator[Stack]:
    directory = tmp_path_factory.mktemp("documents")
    settings = Settings(data_dir=directory)
    embedder = build_embedder(settings)
    index = EdgeVectorIndex(directory / "index", embedder.dimension)
    for document in (
        chunks("handbook", HANDBOOK, ["staff"]),
        chunks("salaries", SALARIES, ["hr"]),
        chunks("manual", MANUAL, ["staff"]),
    ):
        index.upsert(document, embedder.embed_documents([c.text for c in document]))
    registry = SqlRegistry(f"sqlite:///{directory / 'registry.sqlite3'}")
    retrieval = RetrievalService(embedder, index, RetrievalSettings(), languages=settings.embedder.languages)
    try:
        yield Stack(retrieval, vllm_engine, registry)
    finally:
        registry.close()
        index.close()


async def final(
    answers: AskPipeline, question: str, search_filter: SearchFilter | None, conversation_id: str | None = None
) -> dict[str, Any]:
    events = [event async for event in answers.stream(Question(question, search_filter, conversation_id))]
    assert isinstance(events[-1], Done) and isinstance(events[-2], Citations)
    return {**payload(events[-1]), "citations": payload(events[-2])["citations"]}


async def test_a_named_document_that_fits_is_read_whole_and_in_order(stack: Stack) -> None:
    done = await final(
        stack.answers(), "When does unused leave expire?", SearchFilter(groups=["staff"], document_ids=["handbook"])
    )

    assert done["grounded"] is True and done["answer"].strip()
    assert done["whole_documents"] == 1 and "retrieval" not in done["timings_ms"]
    assert [s["text"] for s in stack.sources(done["conversation_id"])] == HANDBOOK
    assert {c["document_id"] for c in done["citations"]} <= {"handbook"}
    assert stack.generator.engine.get_num_unfinished_requests() == 0


async def test_a_named_document_too_long_for_the_budget_is_searched_inside(stack: Stack) -> None:
    done = await final(
        stack.answers(context_tokens=1000), "What is the catalogue entry number checked in step 42?",
        SearchFilter(groups=["staff"], document_ids=["manual", "handbook"]),
    )  # fmt: skip

    sources = stack.sources(done["conversation_id"])
    assert done["grounded"] is True and done["whole_documents"] == 1 and "retrieval" in done["timings_ms"]
    # The handbook whole first, then the manual's best chunks (not all 60) in document order.
    assert [s["text"] for s in sources[:3]] == HANDBOOK
    manual = [s for s in sources[3:] if s["document_id"] == "manual"]
    assert len(manual) == len(sources) - 3 and 0 < len(manual) < len(MANUAL)
    assert [s["ordinal"] for s in manual] == sorted(s["ordinal"] for s in manual)
    assert MANUAL[42] in [s["text"] for s in manual]


async def test_a_named_document_the_caller_may_not_see_yields_no_information(stack: Stack) -> None:
    question = "What do engineers in band 4 earn?"
    done = await final(stack.answers(), question, SearchFilter(groups=["staff"], document_ids=["salaries"]))

    assert done["grounded"] is False and done["answer"] == no_information_answer(question)
    assert done["citations"] == [] and stack.sources(done["conversation_id"]) == []


async def test_this_document_in_a_follow_up_reads_the_previous_answers_documents_whole(stack: Stack) -> None:
    answers = stack.answers()
    staff = SearchFilter(groups=["staff"])
    first = await final(answers, "How many days of paid leave does an employee accrue per month?", staff)
    first_sources = [SimpleNamespace(**s) for s in stack.sources(first["conversation_id"])]
    assert "handbook" in {s.document_id for s in first_sources}
    # The documents the first answer cited (all it was given if it cited none).
    expected = documents_of_previous_turn(first["answer"], first_sources)  # type: ignore[arg-type]

    follow_up = await final(answers, "Summarise this document.", staff, first["conversation_id"])

    sources = stack.sources(follow_up["conversation_id"])
    assert follow_up["grounded"] is True and follow_up["whole_documents"] >= 1
    assert {s["document_id"] for s in sources} == set(expected)
    if "handbook" in expected:
        assert [s["text"] for s in sources if s["document_id"] == "handbook"] == HANDBOOK
