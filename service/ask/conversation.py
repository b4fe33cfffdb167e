"""Conversation (first stage) and remember (last stage): the turns a question follows, with the previous answer's
sources checked again for this reader; and the question and its answer kept for the next turn."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kb.models import Passage, SearchFilter
from kb.ports import ConversationStore

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    conversation_id: str | None
    turns: list[dict[str, Any]] = field(default_factory=list)  # {"role", "content", "sources"}, oldest first
    previous_answer: str = ""
    previous_sources: list[Passage] = field(default_factory=list)  # only those this reader may still see

    @property
    def dialogue(self) -> list[dict[str, Any]]:
        """The user and assistant turns, as the prompt quotes them."""
        return [m for m in self.turns if m["role"] in ("user", "assistant")]

    @property
    def questions(self) -> list[str]:
        return [m["content"] for m in self.turns if m["role"] == "user"]


def _passage_from_dict(data: dict[str, Any]) -> Passage:
    fields = {f.name for f in dataclasses.fields(Passage)} - {"context"}
    passage = Passage(**{k: v for k, v in data.items() if k in fields})
    passage.page_starts = [(int(o), int(p)) for o, p in passage.page_starts]
    return passage


class ConversationStage:
    """Without a store every question stands alone, unless the client sends the conversation itself."""

    def __init__(self, store: ConversationStore | None, max_turns: int) -> None:
        self._store = store
        self._max_messages = 2 * max_turns

    def load(
        self,
        conversation_id: str | None,
        history: Sequence[dict[str, Any]] | None,
        filter: SearchFilter | None,
    ) -> Conversation:
        """`history`: the conversation as the client holds it ({"role", "content"}; OpenAI-style clients send it with
        every request), instead of the one stored under `conversation_id`."""
        turns: list[dict[str, Any]] = []
        if self._store is not None:
            conversation_id = conversation_id or uuid.uuid4().hex
            if history is None:
                # Only the newest answer's sources: a follow-up reuses no others (load, below).
                turns = self._store.conversation(conversation_id, self._max_messages, sources="last")
        if history is not None:
            turns = [{"role": m["role"], "content": m["content"], "sources": []} for m in history][-self._max_messages:]
        previous = next((m for m in reversed(turns) if m["role"] == "assistant"), None)
        sources = [_passage_from_dict(d) for d in (previous or {}).get("sources", [])]
        # Stored sources were visible to whoever asked before; this caller may be in other groups (or the document's
        # groups changed): each is checked again, as the index checks what it returns.
        groups = filter.groups if filter is not None else None
        sources = [p for p in sources if p.visible_to(groups)]
        if filter is not None and filter.document_ids is not None:
            sources = [p for p in sources if p.document_id in filter.document_ids]
        return Conversation(conversation_id, turns, (previous or {}).get("content", ""), sources)

    def remember(
        self, conversation: Conversation, question: str, answer: str, sources: Sequence[Passage],
        owner: str | None = None,
    ) -> None:
        """`owner`: who claimed the conversation (service.ask.access); the turn is kept only while it is still
        theirs. Deleted while the answer was written (by its owner, or by retention), it keeps nothing: a turn
        without its owner would be nobody's, and the conversation is gone for its owner anyway."""
        if self._store is None or conversation.conversation_id is None:
            return
        if not self._store.add_message(conversation.conversation_id, "user", question, owner=owner):
            log.info("conversation %s was deleted while its answer was written: the turn is not kept",
                     conversation.conversation_id)  # fmt: skip
            return
        stored = [dataclasses.asdict(dataclasses.replace(p, context=[])) for p in sources]
        self._store.add_message(conversation.conversation_id, "assistant", answer, stored, owner=owner)
