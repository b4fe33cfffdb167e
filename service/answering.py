"""Ask: retrieve, pack the numbered sources into the prompt, stream the model's answer, attach citations."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from kb.models import Answer, Passage, SearchFilter
from kb.ports import Generator
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


class AnswerService:
    def __init__(
        self,
        retrieval: RetrievalService,
        generator: Generator,
        retrieval_settings: RetrievalSettings,
        generator_settings: GeneratorSettings,
    ) -> None:
        self._retrieval = retrieval
        self._generator = generator
        self._retrieval_settings = retrieval_settings
        self._generator_settings = generator_settings

    def pack(self, passages: Sequence[Passage], question: str) -> list[Passage]:
        """The best passages that fit the context budget (in the generator's own tokens), deduplicated, then grouped
        by document (documents in order of their best passage) and in document order within each: models read
        sources in their original order better than in relevance order."""
        window = self._generator.max_model_len - self._generator_settings.max_answer_tokens
        budget = min(self._retrieval_settings.context_tokens, window) - self._generator.count_tokens(
            SYSTEM_PROMPT + question
        ) - 64
        kept: list[Passage] = []
        seen: set[str] = set()
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
        return sorted(kept, key=lambda p: (document_rank[p.document_id], p.ordinal))

    @staticmethod
    def messages(question: str, sources: Sequence[Passage]) -> list[dict[str, str]]:
        context = "\n\n".join(format_source(i + 1, p) for i, p in enumerate(sources))
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{context}\n\nUsing the text above, answer briefly: {question}"},
        ]

    async def stream(self, question: str, filter: SearchFilter | None = None) -> AsyncIterator[AskEvent]:
        started = time.perf_counter()
        result = await self._retrieval.search(question, filter=filter)
        timings: dict[str, float] = {"retrieval": result.latency_ms}
        if not result.relevant:
            answer = no_information_answer(question)
            yield AskEvent("token", {"text": answer})
            yield AskEvent("citations", {"citations": []})
            timings["total"] = (time.perf_counter() - started) * 1000
            yield AskEvent("done", {"answer": answer, "grounded": False, "timings_ms": timings})
            return

        sources = self.pack(result.passages, question)
        parts: list[str] = []
        first_token_at: float | None = None
        async for delta in self._generator.stream(
            self.messages(question, sources), self._generator_settings.max_answer_tokens
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
        yield AskEvent(
            "done",
            # The final text: invalid markers dropped, sentences the model left uncited marked with their source.
            {"answer": annotated.text, "grounded": True, "timings_ms": timings},
        )

    async def ask(self, question: str, filter: SearchFilter | None = None) -> Answer:
        citations: list[dict[str, Any]] = []
        done: dict[str, Any] = {}
        async for event in self.stream(question, filter):
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
        )
