"""What the ask pipeline emits, and the only thing a door consumes: `Token`s as the model writes, then `Citations`,
then `Done`; or `Failed` once a stream that had started breaks (service.ask.streaming).

A tagged union of msgspec Structs: a door matches on the type (`match event: case Token(): ...`), never on strings,
and the SSE event name is the tag."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from kb.models import Answer, Citation


class _Event(msgspec.Struct, tag_field="event", kw_only=True):
    pass


class Token(_Event, tag="token"):
    text: str


class Citations(_Event, tag="citations"):
    citations: list[Citation]
    invalid_markers: list[int] = msgspec.field(default_factory=list)  # numbers that refer to no source


class Done(_Event, tag="done"):
    """The final answer. Its text replaces what the tokens spelled: invalid markers dropped, sentences the model left
    uncited marked with their source, or, where the model's answer failed the citation check, the quoted evidence."""

    answer: str
    grounded: bool  # True only when the sources support the answer's claims
    timings_ms: dict[str, float]
    conversation_id: str | None = None
    sources: int = 0  # sources in the prompt
    whole_documents: int = 0  # documents given whole
    # How the answer was made: "generate" (the model wrote it), "extract" (quoted from the sources: configured, the
    # question's language, or the model's answer failed the check), "none" (the no-information text).
    mode: str = "generate"
    unsupported: list[str] = msgspec.field(default_factory=list)  # sentences of `answer` no cited source supports
    # The fallback generator wrote (part of) it: the generator server was failing (kb/adapters/fallback_generator.py).
    degraded: bool = False
    # A structured answer (the question gave a JSON Schema): `answer` parsed, valid against it (service.ask.structured).
    data: Any = None


class Failed(_Event, tag="error", omit_defaults=True):
    """RFC 9457 problem fields of a failure after the stream began."""

    status: int
    title: str
    detail: str
    dependency: str | None = None


AskEvent = Token | Citations | Done | Failed


def event_name(event: AskEvent) -> str:
    return type(event).__struct_config__.tag  # type: ignore[return-value]


def payload(event: AskEvent) -> dict[str, Any]:
    """The event's fields as JSON-ready builtins, without its tag (an SSE message carries that as its name)."""
    data = msgspec.json.decode(msgspec.json.encode(event))  # JSON's own types: a span is a list, as the client sees it
    data.pop("event", None)
    return data


class AnswerFailed(Exception):
    def __init__(self, failure: Failed) -> None:
        super().__init__(failure.detail)
        self.failure = failure


async def collect(events: AsyncIterator[AskEvent]) -> Answer:
    """The whole answer of a stream of events (the JSON doors)."""
    citations: list[Citation] = []
    done: Done | None = None
    async for event in events:
        match event:
            case Citations():
                citations = event.citations
            case Done():
                done = event
            case Failed():
                raise AnswerFailed(event)
    if done is None:
        raise RuntimeError("the answer stream ended without its done event")
    return Answer(done.answer, citations, done.grounded, done.timings_ms, done.conversation_id, done.mode,
                  done.unsupported, done.degraded, done.data)  # fmt: skip
