"""Ask: retrieve, pack the numbered sources into the prompt, stream the model's answer, attach citations."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from kb.models import Answer, Citation, Passage, SearchFilter
from kb.ports import Generator, Registry
from kb.settings import GeneratorSettings, RetrievalSettings
from service.citations import annotate, parse_markers
from service.retrieval import RetrievalService

_CJK = re.compile(r"[\u3400-\u9fff]")
# A question about what the conversation was already about ("summarise this document", "这份文件的结论是什么").
_THIS_DOCUMENT = re.compile(
    r"\b(?:this|that|these|those|the same|the above|the previous)\s+"
    r"(?:documents?|docs?|files?|papers?|reports?|pdfs?|articles?|texts?|manuals?|policy|policies)\b"
    r"|(?:这|那|该|此|本|上述)(?:个|份|篇|些)?(?:文档|文件|文章|报告|手册|资料)",
    re.IGNORECASE,
)
# Sources are joined by a blank line, and a blank line follows the last one.
SOURCE_SEPARATOR = "\n\n"
# Packing cost of one source beyond its text, for a generator that cannot count a text between separators.
_SEPARATOR_TOKENS = 2
# Retrieval depth for an answer: enough hits to fill the context budget with chunks of about this many tokens
# (IngestSettings.chunk_tokens), within these bounds.
_CHUNK_TOKENS_ESTIMATE = 200
_MAX_CANDIDATES = 64
# A document of more chunks than budget / this cannot fit whole: only a document's last chunk and its short
# headings fall far below the chunk size, so fetching more would only read what is then thrown away.
_MIN_CHUNK_TOKENS = 16

# Fixed first so that vLLM's prefix cache reuses it across every question. Kept short and plain: the default
# 135M-parameter model follows it; larger models need no more.
SYSTEM_PROMPT = (
    "You are the company knowledge base assistant. Answer the question briefly using only the context. "
    "Cite the sources you use like [1]."
)
NO_INFORMATION = {
    "en": "The knowledge base has no information on this question.",
    "zh": "知识库中没有关于这个问题的信息。",
}


def no_information_answer(question: str) -> str:
    return NO_INFORMATION["zh" if _CJK.search(question) else "en"]


@dataclass
class AskEvent:
    event: str  # token | citations | done (| error, from `opened`)
    data: dict[str, Any]


async def opened(events: AsyncIterator[AskEvent]) -> AsyncIterator[AskEvent]:
    """A stream of answer events whose first event is already there: retrieval and the generator's first token
    happen before a route commits to a streamed 200, so a dependency that is down fails the request with its problem
    status (503/504). A failure after that ends the stream with an `error` event carrying the same problem fields."""
    from service.problems import dependency_failure

    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise

    async def rest() -> AsyncIterator[AskEvent]:
        try:
            yield first
            async for event in events:
                yield event
        except Exception as exc:
            failure = dependency_failure(exc)
            if failure is None:
                logging.getLogger("kb.errors").error("answer stream failed", exc_info=exc)
                body = {"status": 500, "title": "Internal Server Error",
                        "detail": "an unexpected error occurred; the service log has the details"}  # fmt: skip
            else:
                logging.getLogger("kb.errors").warning("answer stream failed: %s", failure.detail)
                body = failure.body()
            yield AskEvent("error", body)
        finally:
            await events.aclose()

    return rest()


def format_source(n: int, passage: Passage) -> str:
    # Only the number and the text: small models copy any header into the answer. The citation carries the rest.
    return f"[{n}] {passage.text}"


REWRITE_PROMPT = (
    "Rewrite the last question of the conversation as one standalone question that can be understood without the "
    "conversation. Reply with the question only."
)


def _passage_from_dict(data: dict[str, Any]) -> Passage:
    fields = {f.name for f in dataclasses.fields(Passage)} - {"context"}
    passage = Passage(**{k: v for k, v in data.items() if k in fields})
    passage.page_starts = [(int(o), int(p)) for o, p in passage.page_starts]
    return passage


def refers_to_previous_documents(question: str) -> bool:
    return bool(_THIS_DOCUMENT.search(question))


def documents_of_previous_turn(answer: str, sources: Sequence[Passage]) -> list[str]:
    """The documents the previous answer cited, in order of citation; all it was given when it cited none."""
    cited = [sources[n - 1] for n in parse_markers(answer, len(sources)).cited]
    return list(dict.fromkeys(p.document_id for p in cited or sources))


class AnswerService:
    def __init__(
        self,
        retrieval: RetrievalService,
        generator: Generator,
        retrieval_settings: RetrievalSettings,
        generator_settings: GeneratorSettings,
        registry: Registry | None = None,
    ) -> None:
        self._retrieval = retrieval
        self._generator = generator
        self._retrieval_settings = retrieval_settings
        self._generator_settings = generator_settings
        self._registry = registry  # conversations are kept here; without it every question stands alone
        self._number_extra: dict[int, int] = {}

    async def standalone_query(self, question: str, history: Sequence[dict[str, Any]]) -> str:
        """The query to retrieve with: a follow-up ("and for PDFs?") needs what it follows up on."""
        previous = [m["content"] for m in history if m["role"] == "user"]
        mode = self._retrieval_settings.followup_rewrite
        if not previous or mode == "off":
            return question
        if mode == "llm":
            transcript = "\n".join(f"{m['role']}: {m['content'][:500]}" for m in history[-4:])
            messages = [
                {"role": "system", "content": REWRITE_PROMPT},
                {"role": "user", "content": f"{transcript}\nuser: {question}"},
            ]
            rewritten = "".join([d async for d in self._generator.stream(messages, 64)]).strip().splitlines()
            if rewritten and rewritten[0].strip():
                return rewritten[0].strip()
        return f"{previous[-1]} {question}"

    def context_budget(self, question: str, reserved_tokens: int = 0, whole_window: bool = False) -> int:
        """Tokens left for sources: the budget setting (at most the window less the answer; the window itself when
        `whole_window`), less the prompt."""
        window = self._generator.max_model_len - self._generator_settings.max_answer_tokens
        return (
            (window if whole_window else min(self._retrieval_settings.context_tokens, window))
            - self._generator.count_tokens(SYSTEM_PROMPT + question)
            - 64
            - reserved_tokens
        )

    def _costs(self, first_number: int, passages: Sequence[Passage]) -> list[int]:
        """Tokens each passage adds to the prompt as source number `first_number`, the next one, and so on."""
        return self._source_tokens([format_source(first_number + i, p) for i, p in enumerate(passages)])

    def _source_tokens(self, texts: Sequence[str]) -> list[int]:
        count_many = getattr(self._generator, "count_tokens_many", None)
        if count_many is not None:
            # In one batch call, and counted as they stand in the prompt: the generator keeps their tokens, so the
            # prompt's encoding tokenizes none of them again.
            return list(count_many(texts, SOURCE_SEPARATOR))
        return [self._generator.count_tokens(t) + _SEPARATOR_TOKENS for t in texts]

    def _number_tokens(self, n: int) -> int:
        """Tokens of "[n]" beyond those of "[1]" (a source's cost is counted once, as number 1)."""
        extra = self._number_extra.get(n)
        if extra is None:
            extra = self._generator.count_tokens(f"[{n}]") - self._generator.count_tokens("[1]")
            if len(self._number_extra) < 4096:
                self._number_extra[n] = extra
        return extra

    def candidates(self, budget: int) -> int:
        """How many hits to retrieve for an answer: as many as the budget can hold, at least top_k."""
        per_hit = _CHUNK_TOKENS_ESTIMATE * (2 * self._retrieval_settings.expand_neighbours + 1)
        return max(self._retrieval_settings.top_k, min(_MAX_CANDIDATES, budget // per_hit))

    def pack(
        self, passages: Sequence[Passage], question: str, keep_first: Sequence[Passage] = (), reserved_tokens: int = 0
    ) -> list[Passage]:
        """The best passages that fit the context budget (in the generator's own tokens), deduplicated, then grouped
        by document (documents in order of their best passage) and in document order within each: models read
        sources in their original order better than in relevance order.

        A passage expanded with its neighbours (`Passage.context`) brings them along, each chunk once however many
        hits share it; when the neighbourhood does not fit, the hit alone still may.

        `keep_first` (the sources of the previous turn of a conversation, or whole documents) stay first and in
        their order, so that a follow-up's prompt starts with the very same tokens and vLLM's prefix cache skips
        their prefill. They were chosen within the budget, so they stay whole as long as the window holds them
        beside the conversation (which a follow-up adds); new passages get what the budget leaves."""
        budget = self.context_budget(question, reserved_tokens)
        window = self.context_budget(question, reserved_tokens, whole_window=True)
        # Every candidate counted once, in one batch call, not one tokenizer call per candidate on the event loop:
        # 64 questions arriving together otherwise stall each other's streams.
        candidates = list({p.chunk_id: p for p in (*keep_first, *passages, *(c for p in passages for c in p.context))}
                          .values())  # fmt: skip
        as_first = dict(zip((p.chunk_id for p in candidates), self._costs(1, candidates)))

        def cost(n: int, passage: Passage) -> int:
            return as_first[passage.chunk_id] + self._number_tokens(n)

        first: list[Passage] = []
        for passage in keep_first:
            cost_ = cost(len(first) + 1, passage)
            if cost_ > window:
                break
            first.append(passage)
            window -= cost_
            budget -= cost_
        kept: list[Passage] = []
        seen: set[str] = {p.chunk_id for p in first}
        for passage in passages:
            if passage.chunk_id in seen:
                continue
            neighbourhood = [c for c in passage.context if c.chunk_id not in seen]
            if not any(c.chunk_id == passage.chunk_id for c in neighbourhood):
                neighbourhood = [passage]  # not expanded
            for group in (neighbourhood, [passage]) if len(neighbourhood) > 1 else ([passage],):
                costs = [cost(len(first) + len(kept) + 1 + i, c) for i, c in enumerate(group)]
                if sum(costs) <= budget:
                    for member in group:
                        kept.append(dataclasses.replace(member, context=[]))
                        seen.add(member.chunk_id)
                    budget -= sum(costs)
                    break
        document_rank: dict[str, int] = {}
        for passage in kept:
            document_rank.setdefault(passage.document_id, len(document_rank))
        return first + sorted(kept, key=lambda p: (document_rank[p.document_id], p.ordinal))

    async def whole_documents(
        self, document_ids: Sequence[str], filter: SearchFilter | None, budget: int
    ) -> tuple[list[Passage], list[str]]:
        """The chunks of the documents that fit `budget` whole (in the order asked, each in document order), and the
        documents that do not (or that the caller cannot see): those are answered from retrieval inside them."""
        whole: list[Passage] = []
        rest: list[str] = []
        for document_id in dict.fromkeys(document_ids):
            limit = max(1, budget // _MIN_CHUNK_TOKENS) + 1
            # The index call off the loop; token counting stays on it, like all of the generator's other calls.
            chunks: list[Passage] = []
            if budget > 0:
                chunks = await asyncio.to_thread(self._retrieval.document_chunks, document_id, filter, limit)
            costs = self._costs(len(whole) + 1, chunks)
            if chunks and len(chunks) < limit and sum(costs) <= budget:
                whole.extend(chunks)
                budget -= sum(costs)
            else:
                rest.append(document_id)
        return whole, rest

    @staticmethod
    def messages(
        question: str, sources: Sequence[Passage], history: Sequence[dict[str, Any]] = ()
    ) -> list[dict[str, str]]:
        """System prompt, sources, conversation, question: the stable parts first, for the prefix cache."""
        context = SOURCE_SEPARATOR.join(format_source(i + 1, p) for i, p in enumerate(sources))
        conversation = ""
        if history:
            turns = "\n".join(
                f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content'][:600]}" for m in history
            )
            conversation = f"\n\nThe conversation so far:\n{turns}"
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{context}{conversation}\n\nUsing the text above, answer briefly: {question}"},
        ]

    async def stream(
        self,
        question: str,
        filter: SearchFilter | None = None,
        conversation_id: str | None = None,
        history: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[AskEvent]:
        """`history`: the conversation so far as the client holds it ({"role", "content"}; OpenAI-style clients send
        it with every request), instead of the one stored under `conversation_id`."""
        started = time.perf_counter()
        stored: list[dict[str, Any]] = []
        if self._registry is not None:
            conversation_id = conversation_id or uuid.uuid4().hex
            if history is None:
                stored = self._registry.conversation(conversation_id, 2 * self._retrieval_settings.max_history_turns)
        if history is not None:
            stored = [{"role": m["role"], "content": m["content"], "sources": []} for m in history][
                -2 * self._retrieval_settings.max_history_turns:]  # fmt: skip
        history = stored
        previous = next((m for m in reversed(history) if m["role"] == "assistant"), None)
        previous_sources = [_passage_from_dict(d) for d in (previous or {}).get("sources", [])]
        groups = filter.groups if filter is not None else None
        # Stored sources were visible to whoever asked before; this caller may be in other groups (or the
        # document's groups changed): each is checked again, as the index checks what it returns.
        previous_sources = [p for p in previous_sources if p.visible_to(groups)]
        if filter is not None and filter.document_ids is not None:
            previous_sources = [p for p in previous_sources if p.document_id in filter.document_ids]
        document_ids = filter.document_ids if filter is not None else None
        if document_ids is None and previous_sources and refers_to_previous_documents(question):
            # "this document": the documents the previous answer was about, questioned like document_ids.
            document_ids = documents_of_previous_turn(previous["content"] if previous else "", previous_sources)
            filter = dataclasses.replace(filter or SearchFilter(), document_ids=document_ids)

        history_text = [m for m in history if m["role"] in ("user", "assistant")]
        reserved = sum(self._generator.count_tokens(m["content"][:600]) + 4 for m in history_text)
        timings: dict[str, float] = {}
        whole: list[Passage] = []
        retrieve_in = filter
        if document_ids:
            fetch_started = time.perf_counter()
            whole, rest = await self.whole_documents(document_ids, filter, self.context_budget(question, reserved))
            timings["documents"] = (time.perf_counter() - fetch_started) * 1000
            retrieve_in = dataclasses.replace(filter, document_ids=rest) if filter is not None and whole else filter
        retrieved: list[Passage] = []
        relevant = bool(whole)
        if not whole or (retrieve_in is not None and retrieve_in.document_ids):
            query = await self.standalone_query(question, history)
            budget = self.context_budget(question, reserved) - sum(self._costs(1, whole))
            result = await self._retrieval.search(query, top_k=self.candidates(budget), filter=retrieve_in)
            timings["retrieval"] = result.latency_ms
            # Inside documents the reader named, a weak match is still the best part of what they asked about.
            if result.relevant or (document_ids and result.passages):
                retrieved, relevant = result.passages, True
        if whole:
            sources = self.pack(retrieved, question, whole, reserved)
        elif relevant or previous_sources:
            sources = self.pack(retrieved, question, previous_sources, reserved)
        else:
            sources = []
        # Defence in depth: nothing reaches the prompt that the caller may not read, whatever its path here.
        sources = [p for p in sources if p.visible_to(groups)]
        if not sources:
            answer = no_information_answer(question)
            yield AskEvent("token", {"text": answer})
            yield AskEvent("citations", {"citations": []})
            self._remember(conversation_id, question, answer, [])
            timings["total"] = (time.perf_counter() - started) * 1000
            yield AskEvent("done", {"answer": answer, "grounded": False, "timings_ms": timings,
                                    "conversation_id": conversation_id})  # fmt: skip
            return

        parts: list[str] = []
        first_token_at: float | None = None
        async for delta in self._generator.stream(
            self.messages(question, sources, history_text), self._generator_settings.max_answer_tokens
        ):
            if first_token_at is None:
                first_token_at = time.perf_counter()
            parts.append(delta)
            yield AskEvent("token", {"text": delta})
        raw_answer = "".join(parts).strip()
        annotated = annotate(raw_answer, sources)
        invalid = parse_markers(raw_answer, len(sources)).invalid
        yield AskEvent(
            "citations", {"citations": [c.to_dict() for c in annotated.citations], "invalid_markers": invalid}
        )
        now = time.perf_counter()
        if first_token_at is not None:
            timings["first_token"] = (first_token_at - started) * 1000
        timings["total"] = (now - started) * 1000
        self._remember(conversation_id, question, annotated.text, sources)
        yield AskEvent(
            "done",
            # The final text: invalid markers dropped, sentences the model left uncited marked with their source.
            {"answer": annotated.text, "grounded": True, "timings_ms": timings, "conversation_id": conversation_id,
             "sources": len(sources), "whole_documents": len({p.document_id for p in whole})},
        )  # fmt: skip

    def _remember(self, conversation_id: str | None, question: str, answer: str, sources: Sequence[Passage]) -> None:
        if self._registry is None or conversation_id is None:
            return
        self._registry.add_message(conversation_id, "user", question)
        stored = [dataclasses.asdict(dataclasses.replace(p, context=[])) for p in sources]
        self._registry.add_message(conversation_id, "assistant", answer, stored)

    async def ask(
        self, question: str, filter: SearchFilter | None = None, conversation_id: str | None = None
    ) -> Answer:
        citations: list[dict[str, Any]] = []
        done: dict[str, Any] = {}
        async for event in self.stream(question, filter, conversation_id):
            if event.event == "citations":
                citations = event.data["citations"]
            elif event.event == "done":
                done = event.data
        return Answer(
            answer=done["answer"],
            citations=[Citation(**{k: c[k] for k in Citation.__dataclass_fields__}) for c in citations],
            grounded=done["grounded"],
            timings_ms=done["timings_ms"],
            conversation_id=done.get("conversation_id"),
        )
