"""Ask: one question through the named stages, emitting typed events (service.ask.events) that every door maps.

    conversation -> scope -> budget -> query + retrieve -> pack -> generate -> cite (check) -> remember
                                                               `-> extract (quoted evidence) -´

Each stage is a small unit in its own module; `stream` only passes their results along. How the answer is made
(service.ask.answerability): the model writes it, unless the settings or the question's language say the quoted
evidence answers; in "auto" mode a written answer that fails the citation check (service.ask.verify) gives way to
the quoted evidence, and where that is too weak too, to the no-information text."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from kb.languages import MULTILINGUAL
from kb.models import Answer, Passage, SearchFilter
from kb.ports import ConversationStore, DocumentStore, Generator, GeneratorServerError
from kb.settings import AnswerSettings, GeneratorSettings, RetrievalSettings
from service.ask.answerability import asks_for_more, first_mode, says_no_information
from service.ask.citations import AnnotatedAnswer, StreamedAnswer, annotate, parse_markers, visible_citations
from service.ask.conversation import Conversation, ConversationStage
from service.ask.events import AskEvent, Citations, Done, Token, collect
from service.ask.extract import Extraction, Extractor
from service.ask.generate import Generation
from service.ask.packing import Budget, Packer
from service.ask.prompt import REPLACED_NOTE, messages, no_information_answer
from service.ask.query import QueryStage
from service.ask.retrieve import Evidence, RetrieveStage
from service.ask.scope import resolve_scope
from service.ask.structured import StructuredAnswerError, instruction, parse
from service.search.service import RetrievalService


@dataclass
class Question:
    """What a door hands the pipeline."""

    text: str
    filter: SearchFilter | None = None  # the caller's filter, already narrowed to its groups (service.auth)
    conversation_id: str | None = None
    history: Sequence[dict[str, Any]] | None = None  # a conversation the client holds, instead of the stored one
    reader_groups: list[str] | None = None  # whom the citations are for (None: a reader who sees everything)
    json_schema: dict[str, Any] | None = None  # answer as JSON valid against it (service.ask.structured), checked
    owner: str | None = None  # who claimed the conversation (service.ask.access): its turn is kept while it is theirs


class AskPipeline:
    def __init__(
        self,
        retrieval: RetrievalService,
        generator: Generator,
        retrieval_settings: RetrievalSettings,
        generator_settings: GeneratorSettings,
        conversations: ConversationStore | None = None,
        documents: DocumentStore | None = None,
        answer_settings: AnswerSettings | None = None,
        extractor: Extractor | None = None,
    ) -> None:
        self.packer = Packer(generator, retrieval_settings, generator_settings)
        self.conversation = ConversationStage(conversations, retrieval_settings.max_history_turns)
        self.query = QueryStage(generator, retrieval_settings.followup_rewrite)
        self.retrieve = RetrieveStage(retrieval, self.packer)
        self.extractor = extractor or Extractor(None, [MULTILINGUAL])
        self._generator = generator
        self._max_answer_tokens = generator_settings.max_answer_tokens
        self._top_k = retrieval_settings.top_k
        self._documents = documents
        self._answers = answer_settings or AnswerSettings()

    async def stream(self, question: Question) -> AsyncIterator[AskEvent]:
        started = time.perf_counter()
        conversation = self.conversation.load(question.conversation_id, question.history, question.filter)
        scope = resolve_scope(question.text, question.filter, conversation)
        budget = self.packer.budget(question.text, conversation.dialogue)
        evidence = await self.retrieve.gather(scope, budget, lambda: self.query.standalone(
            question.text, conversation, _session(conversation.conversation_id)))
        sources = self._sources(evidence, conversation, budget, question.filter)
        timings = evidence.timings_ms
        mode = first_mode(question.text, self._answers) if sources else "none"
        # The reader chose the documents, or asks for more of what the previous answer was about: the topic is
        # settled, and the question's own words need not match the sources to be answered from them.
        settled = bool(scope.document_ids or (conversation.previous_sources and asks_for_more(question.text)))

        if question.json_schema is not None:
            async for event in self._structured(question, conversation, sources, timings, started):
                yield event
            return

        text, text_written = "", False
        generator = _Watched(self._generator, _session(conversation.conversation_id))
        if mode == "generate":
            prompt = messages(question.text, sources, conversation.dialogue)
            generation = Generation(cast(Generator, generator), prompt, self._max_answer_tokens)
            # Released as the final text will read (inferred markers in, markers to no source out): a client that
            # only appends, like an OpenAI stream, gets the same text and markers as the whole answer.
            released = StreamedAnswer(sources)
            async for delta in generation.deltas():
                if piece := released.feed(delta):
                    yield Token(text=piece)
            if piece := released.finish():
                yield Token(text=piece)
            if generation.first_token_at is not None:
                timings["first_token"] = (generation.first_token_at - started) * 1000
            text = generation.text
            text_written = bool(text)
            checked = annotate(text, sources)
            if self._answers.mode == "auto" and (says_no_information(text) or not checked.grounded):
                mode = "extract"  # the model fell short: the sources speak for themselves, if they answer at all
            elif self._answers.mode == "auto" and self._answers.require_evidence and not settled:
                # The model's answer passed the check, but do the sources answer the question at all? A small model
                # writes a checkable sentence about the topic for a question the documents do not answer; the
                # evidence that decides is the quoted evidence's, the same as when quoting.
                quotable = self._quotable(sources, evidence, question.filter)
                extraction = await asyncio.to_thread(self._extract, question.text, evidence, quotable)
                if not self.extractor.answerable(extraction):
                    mode = "none"
        if mode == "extract":
            # Quoting reads no prompt: it reads the retrieval's best passages even where the model's window (or its
            # tokenizer, ~1 token a Han character for SmolLM2) packed fewer, and they become the answer's sources.
            sources = self._quotable(sources, evidence, question.filter)
            extraction = await asyncio.to_thread(self._extract, question.text, evidence, sources)
            text = extraction.text if self.extractor.answerable(extraction) else ""
            if not text and settled:
                # The reader chose these documents, or asks for more of what the previous answer was about: the
                # topic is settled, so the best sentences for it are quoted however weakly the words match ("Tell me
                # more", "What does it say?"), and where none match, the opening sentences (whole documents first).
                text = extraction.text or self.extractor.lead(sources, self._answers.extract_sentences).text
            checked = quoted(annotate(text, sources))
            mode = "extract" if text else "none"
        if mode == "none":
            text, checked = no_information_answer(question.text), annotate("", [])
        if mode != "generate":
            # The whole answer at once. After a written answer that failed the check it follows a note, so that a
            # client that only appends tokens still reads which answer stands (Done's text replaces both).
            yield Token(text=(REPLACED_NOTE if text_written else "") + text)

        citations = visible_citations(checked.citations, question.reader_groups, self._documents)
        yield Citations(citations=citations, invalid_markers=parse_markers(text, len(sources)).invalid)
        self.conversation.remember(conversation, question.text, checked.text if mode != "none" else text,
                                   sources if mode != "none" else [], owner=question.owner)  # fmt: skip
        timings["total"] = (time.perf_counter() - started) * 1000
        yield Done(answer=checked.text if mode != "none" else text, grounded=mode != "none" and checked.grounded,
                   timings_ms=timings, conversation_id=conversation.conversation_id, sources=len(sources),
                   whole_documents=len({p.document_id for p in evidence.whole}), mode=mode,
                   unsupported=unsupported_sentences(checked), degraded=generator.degraded)  # fmt: skip

    async def _structured(
        self, question: Question, conversation: Conversation, sources: list[Passage], timings: dict[str, float],
        started: float,
    ) -> AsyncIterator[AskEvent]:  # fmt: skip
        """A structured answer: the model writes JSON under the question's schema (constrained decoding), which is
        validated and cited value by value (service.ask.structured). It comes whole, as one token: a part of a JSON
        text is of no use to a client. Without sources it is the no-information answer (no object made up)."""
        schema = cast(dict[str, Any], question.json_schema)
        generator = _Watched(self._generator, _session(conversation.conversation_id))
        data: Any = None
        if sources:
            prompt = messages(question.text + instruction(schema), sources, conversation.dialogue)
            pieces: list[str] = []
            async for piece in generator.stream(prompt, self._max_answer_tokens, json_schema=schema):
                if not pieces:
                    timings["first_token"] = (time.perf_counter() - started) * 1000
                pieces.append(piece)
            text = "".join(pieces)
            try:
                structured = parse(text, schema, sources)
            except StructuredAnswerError as exc:
                raise GeneratorServerError(str(exc)) from exc
            data, mode, grounded = structured.data, "generate", structured.grounded
            citations = visible_citations(structured.citations, question.reader_groups, self._documents)
            unsupported = structured.unsupported
        else:
            text, mode, grounded, citations, unsupported = no_information_answer(question.text), "none", False, [], []
        yield Token(text=text)
        yield Citations(citations=citations, invalid_markers=parse_markers(text, len(sources)).invalid)
        self.conversation.remember(conversation, question.text, text, sources if mode != "none" else [],
                                   owner=question.owner)  # fmt: skip
        timings["total"] = (time.perf_counter() - started) * 1000
        yield Done(answer=text, grounded=grounded, timings_ms=timings, conversation_id=conversation.conversation_id,
                   sources=len(sources), mode=mode, unsupported=unsupported, degraded=generator.degraded,
                   data=data)  # fmt: skip

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

    def _extract(self, question: str, evidence: Evidence, sources: list[Passage]) -> Extraction:
        """Quoted for the question as asked and, for a follow-up, for what was searched (made standalone with what it
        follows up on: "tell me more"): whichever the sources answer better. The standalone query alone dilutes a
        complete follow-up's own words with the previous question's."""
        n = self._answers.extract_sentences
        best = self.extractor.extract(question, sources, n)
        if evidence.query and evidence.query != question:
            searched = self.extractor.extract(evidence.query, sources, n)
            if searched.score > best.score:
                best = searched
        return best

    def _quotable(self, sources: list[Passage], evidence: Evidence, filter: SearchFilter | None) -> list[Passage]:
        """The packed sources, then the best other hits up to `top_k` passages in all (a written answer's sources keep
        their numbers: they come first)."""
        groups = filter.groups if filter is not None else None
        packed = {p.chunk_id for p in sources}
        more = [p for p in evidence.retrieved if p.chunk_id not in packed and p.visible_to(groups)]
        return [*sources, *more[: max(0, self._top_k - len(sources))]]

    async def ask(self, question: Question | str, filter: SearchFilter | None = None,
                  conversation_id: str | None = None) -> Answer:  # fmt: skip
        """The whole answer (the CLI, benchmarks, tests)."""
        if isinstance(question, str):
            question = Question(question, filter, conversation_id)
        return await collect(self.stream(question))


def _session(conversation_id: str | None) -> str | None:
    """What the generator may pass on to a router for a conversation (Generator.stream's `session`): the same for every
    turn of the conversation, and a hash rather than the id itself, which stays out of other systems' logs."""
    return hashlib.sha256(conversation_id.encode()).hexdigest()[:32] if conversation_id else None


class _Watched:
    """The generator as one answer uses it: remembers whether a stream it handed out was written, in part or whole,
    by a fallback generator (a stream whose `degraded` is set: kb/adapters/fallback_generator.py), for Done."""

    def __init__(self, generator: Generator, session: str | None = None) -> None:
        self._generator = generator
        self._session = session
        self._streams: list[Any] = []

    def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None, *,
        json_schema: dict[str, Any] | None = None,
    ) -> AsyncIterator[str]:  # fmt: skip
        # Only a structured answer passes a schema: a generator of a test that takes none still serves the rest.
        extra: dict[str, Any] = {"json_schema": json_schema} if json_schema is not None else {}
        if self._session is not None:
            extra["session"] = self._session
        stream = self._generator.stream(messages, max_tokens, **extra)
        self._streams.append(stream)
        return stream

    @property
    def degraded(self) -> bool:
        return any(getattr(stream, "degraded", False) for stream in self._streams)


def unsupported_sentences(checked: AnnotatedAnswer) -> list[str]:
    """The sentences of the final answer that no cited source supports, for the doors to show as such."""
    return [checked.text[c.start : c.end].strip() for c in checked.claims if not c.supported]


def quoted(checked: AnnotatedAnswer) -> AnnotatedAnswer:
    """Quoted evidence is the sources' own sentences, each after its own number: supported by construction (the check
    of a written answer's facts would only trip over a quote's own footnote digits or line breaks)."""
    citations = [dataclasses.replace(c, supported=True) for c in checked.citations]
    claims = [dataclasses.replace(c, supported=True, missing=[]) for c in checked.claims]
    return dataclasses.replace(checked, citations=citations, claims=claims, grounded=bool(checked.text.strip()))
