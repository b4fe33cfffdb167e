"""Ask: one question through the named stages, emitting typed events (service.ask.events) that every door maps.

    conversation -> scope -> budget -> query + retrieve -> pack -> generate -> cite -> remember

Each stage is a small unit in its own module; this function only passes their results along."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from kb.models import Answer, Passage, SearchFilter
from kb.ports import ConversationStore, DocumentStore, Generator
from kb.settings import GeneratorSettings, RetrievalSettings
from service.ask.citations import cite
from service.ask.conversation import Conversation, ConversationStage
from service.ask.events import AskEvent, Citations, Done, Token, collect
from service.ask.generate import Generation
from service.ask.packing import Budget, Packer
from service.ask.prompt import messages, no_information_answer
from service.ask.query import QueryStage
from service.ask.retrieve import Evidence, RetrieveStage
from service.ask.scope import resolve_scope
from service.search.service import RetrievalService


@dataclass
class Question:
    """What a door hands the pipeline."""

    text: str
    filter: SearchFilter | None = None  # the caller's filter, already narrowed to its groups (service.auth)
    conversation_id: str | None = None
    history: Sequence[dict[str, Any]] | None = None  # a conversation the client holds, instead of the stored one
    reader_groups: list[str] | None = None  # whom the citations are for (None: a reader who sees everything)


class AskPipeline:
    def __init__(
        self,
        retrieval: RetrievalService,
        generator: Generator,
        retrieval_settings: RetrievalSettings,
        generator_settings: GeneratorSettings,
        conversations: ConversationStore | None = None,
        documents: DocumentStore | None = None,
    ) -> None:
        self.packer = Packer(generator, retrieval_settings, generator_settings)
        self.conversation = ConversationStage(conversations, retrieval_settings.max_history_turns)
        self.query = QueryStage(generator, retrieval_settings.followup_rewrite)
        self.retrieve = RetrieveStage(retrieval, self.packer)
        self._generator = generator
        self._max_answer_tokens = generator_settings.max_answer_tokens
        self._documents = documents

    async def stream(self, question: Question) -> AsyncIterator[AskEvent]:
        started = time.perf_counter()
        conversation = self.conversation.load(question.conversation_id, question.history, question.filter)
        scope = resolve_scope(question.text, question.filter, conversation)
        budget = self.packer.budget(question.text, conversation.dialogue)
        evidence = await self.retrieve.gather(scope, budget, lambda: self.query.standalone(question.text, conversation))
        sources = self._sources(evidence, conversation, budget, question.filter)
        if not sources:
            async for event in self._no_information(question, conversation, evidence, started):
                yield event
            return

        generation = Generation(self._generator, messages(question.text, sources, conversation.dialogue),
                                self._max_answer_tokens)  # fmt: skip
        async for delta in generation.deltas():
            yield Token(text=delta)
        answer, citations, invalid = cite(generation.text, sources, question.reader_groups, self._documents)
        yield Citations(citations=citations, invalid_markers=invalid)
        self.conversation.remember(conversation, question.text, answer, sources)
        timings = evidence.timings_ms
        if generation.first_token_at is not None:
            timings["first_token"] = (generation.first_token_at - started) * 1000
        timings["total"] = (time.perf_counter() - started) * 1000
        yield Done(answer=answer, grounded=True, timings_ms=timings, conversation_id=conversation.conversation_id,
                   sources=len(sources), whole_documents=len({p.document_id for p in evidence.whole}))  # fmt: skip

    def _sources(
        self, evidence: Evidence, conversation: Conversation, budget: Budget, filter: SearchFilter | None
    ) -> list[Passage]:
        """Pack stage: whole documents first, else the previous turn's sources first (a follow-up), then the hits."""
        if evidence.whole:
            sources = self.packer.pack(evidence.retrieved, budget, evidence.whole)
        elif evidence.relevant or conversation.previous_sources:
            sources = self.packer.pack(evidence.retrieved, budget, conversation.previous_sources)
        else:
            sources = []
        # Defence in depth: nothing reaches the prompt that the caller may not read, whatever its path here.
        groups = filter.groups if filter is not None else None
        return [p for p in sources if p.visible_to(groups)]

    async def _no_information(
        self, question: Question, conversation: Conversation, evidence: Evidence, started: float
    ) -> AsyncIterator[AskEvent]:
        answer = no_information_answer(question.text)
        yield Token(text=answer)
        yield Citations(citations=[])
        self.conversation.remember(conversation, question.text, answer, [])
        timings = {**evidence.timings_ms, "total": (time.perf_counter() - started) * 1000}
        yield Done(answer=answer, grounded=False, timings_ms=timings, conversation_id=conversation.conversation_id)

    async def ask(self, question: Question | str, filter: SearchFilter | None = None,
                  conversation_id: str | None = None) -> Answer:  # fmt: skip
        """The whole answer (the CLI, benchmarks, tests)."""
        if isinstance(question, str):
            question = Question(question, filter, conversation_id)
        return await collect(self.stream(question))
