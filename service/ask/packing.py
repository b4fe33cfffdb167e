"""Pack: which passages the prompt holds, within one question's token budget, counted in the generator's own tokens.

The budget is computed once per question (`Packer.budget`) and handed to every stage that spends it (whole
documents, retrieval depth, packing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kb.models import Passage
from kb.ports import Generator
from kb.settings import GeneratorSettings, RetrievalSettings
from service.ask.prompt import PROMPT_OVERHEAD_TOKENS, SOURCE_SEPARATOR, SYSTEM_PROMPT, TURN_CHARS, format_source

# Retrieval depth for an answer: enough hits to fill the context budget with chunks of about this many tokens
# (IngestSettings.chunk_tokens), within these bounds.
_CHUNK_TOKENS_ESTIMATE = 200
_MAX_CANDIDATES = 64
# Tokens of a conversation turn beyond its text (role, separators).
_TURN_OVERHEAD_TOKENS = 4


@dataclass(frozen=True)
class Budget:
    """Tokens left for sources in one question's prompt, after the system prompt, the question and the conversation.

    `context`: what new sources may use (the context_tokens setting, at most the window less the answer).
    `window`: what the sources kept first (the previous turn's, whole documents) may use: the whole window less the
    answer, so a follow-up keeps them although the conversation grew."""

    context: int
    window: int


class Packer:
    def __init__(
        self, generator: Generator, retrieval_settings: RetrievalSettings, generator_settings: GeneratorSettings
    ) -> None:
        self._generator = generator
        self._retrieval_settings = retrieval_settings
        self._generator_settings = generator_settings
        self._number_extra: dict[int, int] = {}

    def budget(self, question: str, turns: Sequence[dict[str, Any]] = ()) -> Budget:
        window = self._generator.max_model_len - self._generator_settings.max_answer_tokens
        prompt = self._generator.count_tokens(SYSTEM_PROMPT + question) + PROMPT_OVERHEAD_TOKENS
        conversation = sum(
            self._generator.count_tokens(m["content"][:TURN_CHARS]) + _TURN_OVERHEAD_TOKENS for m in turns
        )
        spent = prompt + conversation
        return Budget(context=min(self._retrieval_settings.context_tokens, window) - spent, window=window - spent)

    def costs(self, first_number: int, passages: Sequence[Passage]) -> list[int]:
        """Tokens each passage adds to the prompt as source number `first_number`, the next one, and so on: in one
        batch call, counted as they stand in the prompt (the generator keeps their tokens, so the prompt's encoding
        tokenizes none of them again)."""
        texts = [format_source(first_number + i, p) for i, p in enumerate(passages)]
        return list(self._generator.count_tokens_many(texts, SOURCE_SEPARATOR)) if texts else []

    def _number_tokens(self, n: int) -> int:
        """Tokens of "[n]" beyond those of "[1]" (a source's cost is counted once, as number 1)."""
        extra = self._number_extra.get(n)
        if extra is None:
            extra = self._generator.count_tokens(f"[{n}]") - self._generator.count_tokens("[1]")
            if len(self._number_extra) < 4096:
                self._number_extra[n] = extra
        return extra

    def candidates(self, tokens: int) -> int:
        """How many hits to retrieve for an answer: as many as `tokens` can hold, at least top_k."""
        per_hit = _CHUNK_TOKENS_ESTIMATE * (2 * self._retrieval_settings.expand_neighbours + 1)
        return max(self._retrieval_settings.top_k, min(_MAX_CANDIDATES, tokens // per_hit))

    def pack(self, passages: Sequence[Passage], budget: Budget, keep_first: Sequence[Passage] = ()) -> list[Passage]:
        """The best passages that fit the budget, deduplicated, then grouped by document (documents in order of their
        best passage) and in document order within each: models read sources in their original order better than in
        relevance order.

        A passage expanded with its neighbours (`Passage.context`) brings them along, each chunk once however many
        hits share it; when the neighbourhood does not fit, the hit alone still may.

        `keep_first` (the sources of the previous turn of a conversation, or whole documents) stay first and in
        their order, so that a follow-up's prompt starts with the very same tokens and vLLM's prefix cache skips
        their prefill. They were chosen within the budget, so they stay whole as long as the window holds them
        beside the conversation; new passages get what the budget leaves."""
        context, window = budget.context, budget.window
        # Every candidate counted once, in one batch call, not one tokenizer call per candidate on the event loop:
        # 64 questions arriving together otherwise stall each other's streams.
        candidates = list({p.chunk_id: p for p in (*keep_first, *passages, *(c for p in passages for c in p.context))}
                          .values())  # fmt: skip
        as_first = dict(zip((p.chunk_id for p in candidates), self.costs(1, candidates)))

        def cost(n: int, passage: Passage) -> int:
            return as_first[passage.chunk_id] + self._number_tokens(n)

        first: list[Passage] = []
        for passage in keep_first:
            cost_ = cost(len(first) + 1, passage)
            if cost_ > window:
                break
            first.append(passage)
            window -= cost_
            context -= cost_
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
                if sum(costs) <= context:
                    for member in group:
                        kept.append(dataclasses.replace(member, context=[]))
                        seen.add(member.chunk_id)
                    context -= sum(costs)
                    break
        document_rank: dict[str, int] = {}
        for passage in kept:
            document_rank.setdefault(passage.document_id, len(document_rank))
        return first + sorted(kept, key=lambda p: (document_rank[p.document_id], p.ordinal))
