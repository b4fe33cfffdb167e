"""Ask: retrieve, pack the numbered sources into the prompt, stream the model's answer, attach citations."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import dataclasses
import uuid

from kb.models import Answer, Passage, SearchFilter
from kb.ports import Generator, Registry
from kb.settings import GeneratorSettings, RetrievalSettings
from service.citations import annotate, parse_markers
from service.retrieval import RetrievalService

_CJK = re.compile(r"[\u3400-\u9fff]")

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
    event: str  # token | citations | done
    data: dict[str, Any]


def format_source(n: int, passage: Passage) -> str:
    # Only the number and the text: small models copy any header into the answer. The citation carries the rest.
    return f"[{n}] {passage.text}"


REWRITE_PROMPT = (
    "Rewrite the last question of the conversation as one standalone question that can be understood without the "
    "conversation. Reply with the question only."
)


def _passage_from_dict(data: dict[str, Any]) -> Passage:
    fields = {f.name for f in dataclasses.fields(Passage)}
    passage = Passage(**{k: v for k, v in data.items() if k in fields})
    passage.page_starts = [(int(o), int(p)) for o, p in passage.page_starts]
    return passage


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

    def pack(
        self, passages: Sequence[Passage], question: str, keep_first: Sequence[Passage] = (), reserved_tokens: int = 0
    ) -> list[Passage]:
        """The best passages that fit the context budget (in the generator's own tokens), deduplicated, then grouped
        by document (documents in order of their best passage) and in document order within each: models read
        sources in their original order better than in relevance order.

        `keep_first` (the sources of the previous turn of a conversation) stay first and in their order, so that a
        follow-up's prompt starts with the very same tokens and vLLM's prefix cache skips their prefill."""
        window = self._generator.max_model_len - self._generator_settings.max_answer_tokens
        budget = min(self._retrieval_settings.context_tokens, window) - self._generator.count_tokens(
            SYSTEM_PROMPT + question
        ) - 64 - reserved_tokens
        first: list[Passage] = []
        for passage in keep_first:
            cost = self._generator.count_tokens(format_source(len(first) + 1, passage)) + 2
            if cost > budget:
                break
            first.append(passage)
            budget -= cost
        kept: list[Passage] = []
        seen: set[str] = {p.chunk_id for p in first}
        for passage in passages:
            if passage.chunk_id in seen:
                continue
            cost = self._generator.count_tokens(format_source(len(kept) + 1, passage)) + 2
            if cost > budget:
                continue
            kept.append(passage)
            seen.add(passage.chunk_id)
            budget -= cost
        document_rank: dict[str, int] = {}
        for passage in kept:
            document_rank.setdefault(passage.document_id, len(document_rank))
        return first + sorted(kept, key=lambda p: (document_rank[p.document_id], p.ordinal))

    @staticmethod
    def messages(
        question: str, sources: Sequence[Passage], history: Sequence[dict[str, Any]] = ()
    ) -> list[dict[str, str]]:
        """System prompt, sources, conversation, question: the stable parts first, for the prefix cache."""
        context = "\n\n".join(format_source(i + 1, p) for i, p in enumerate(sources))
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
        self, question: str, filter: SearchFilter | None = None, conversation_id: str | None = None
    ) -> AsyncIterator[AskEvent]:
        started = time.perf_counter()
        history: list[dict[str, Any]] = []
        if self._registry is not None:
            conversation_id = conversation_id or uuid.uuid4().hex
            history = self._registry.conversation(conversation_id, 2 * self._retrieval_settings.max_history_turns)
        previous_sources = [
            _passage_from_dict(d)
            for d in next((m["sources"] for m in reversed(history) if m["role"] == "assistant"), [])
        ]
        if filter is not None and filter.document_ids is not None:
            previous_sources = [p for p in previous_sources if p.document_id in filter.document_ids]
        query = await self.standalone_query(question, history)
        result = await self._retrieval.search(query, filter=filter)
        timings: dict[str, float] = {"retrieval": result.latency_ms}
        if not result.relevant and not previous_sources:
            answer = no_information_answer(question)
            yield AskEvent("token", {"text": answer})
            yield AskEvent("citations", {"citations": []})
            self._remember(conversation_id, question, answer, [])
            timings["total"] = (time.perf_counter() - started) * 1000
            yield AskEvent("done", {"answer": answer, "grounded": False, "timings_ms": timings,
                                    "conversation_id": conversation_id})  # fmt: skip
            return

        history_text = [m for m in history if m["role"] in ("user", "assistant")]
        reserved = sum(self._generator.count_tokens(m["content"][:600]) + 4 for m in history_text)
        sources = self.pack(result.passages if result.relevant else [], question, previous_sources, reserved)
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
            {"answer": annotated.text, "grounded": True, "timings_ms": timings, "conversation_id": conversation_id},
        )

    def _remember(self, conversation_id: str | None, question: str, answer: str, sources: Sequence[Passage]) -> None:
        if self._registry is None or conversation_id is None:
            return
        self._registry.add_message(conversation_id, "user", question)
        self._registry.add_message(conversation_id, "assistant", answer, [dataclasses.asdict(p) for p in sources])

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
        from kb.models import Citation

        return Answer(
            answer=done["answer"],
            citations=[Citation(**{k: c[k] for k in Citation.__dataclass_fields__}) for c in citations],
            grounded=done["grounded"],
            timings_ms=done["timings_ms"],
            conversation_id=done.get("conversation_id"),
        )
