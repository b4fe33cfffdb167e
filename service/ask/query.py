"""Query: what to retrieve with. A follow-up ("and for PDFs?") needs what it follows up on."""

from __future__ import annotations

from typing import Literal

from kb.ports import Generator
from service.ask.conversation import Conversation
from service.ask.prompt import rewrite_messages

REWRITE_MAX_TOKENS = 64


class QueryStage:
    def __init__(self, generator: Generator, mode: Literal["off", "concat", "llm"] | str) -> None:
        self._generator = generator
        self._mode = mode  # RetrievalSettings.followup_rewrite

    async def standalone(self, question: str, conversation: Conversation, session: str | None = None) -> str:
        """`session`: the conversation as the generator passes it on to a router (Generator.stream's), so that the
        rewrite reaches the replica that holds the conversation's prefix cache, as its answers do."""
        previous = conversation.questions
        if not previous or self._mode == "off":
            return question
        if self._mode == "llm":
            messages = rewrite_messages(question, conversation.turns)
            extra = {"session": session} if session is not None else {}
            deltas = [d async for d in self._generator.stream(messages, REWRITE_MAX_TOKENS, **extra)]
            lines = "".join(deltas).strip().splitlines()
            if lines and lines[0].strip():
                return lines[0].strip()
        return f"{previous[-1]} {question}"
