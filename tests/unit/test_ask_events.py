"""The typed events are the wire: SSE names and JSON fields stay what clients (web page, CLI, bots) read."""

from __future__ import annotations

import pytest

from kb.models import Citation
from service.ask.events import AnswerFailed, Citations, Done, Failed, Token, collect, event_name, payload

pytestmark = pytest.mark.unit

CITATION = Citation(n=1, document_id="d", filename="a.pdf", page=2, snippet="Backups run nightly.", chunk_id="c",
                    section="Ops", score=0.8, inferred=False, span=(0, 20), supported=True)  # fmt: skip


def test_each_event_has_its_sse_name_and_plain_json_fields() -> None:
    assert [event_name(e) for e in (Token(text="x"), Citations(citations=[]), Done(answer="", grounded=False,
            timings_ms={}), Failed(status=503, title="Service Unavailable", detail="d"))] == [
        "token", "citations", "done", "error"]  # fmt: skip
    assert payload(Token(text="Back")) == {"text": "Back"}
    cited = payload(Citations(citations=[CITATION], invalid_markers=[7]))
    assert cited["invalid_markers"] == [7]
    assert cited["citations"][0] == {
        "n": 1, "document_id": "d", "filename": "a.pdf", "page": 2, "snippet": "Backups run nightly.",
        "chunk_id": "c", "section": "Ops", "score": 0.8, "inferred": False, "span": [0, 20], "supported": True,
    }  # fmt: skip
    done = payload(Done(answer="A [1].", grounded=True, timings_ms={"total": 3.5}, conversation_id="c1", sources=2))
    assert done == {"answer": "A [1].", "grounded": True, "timings_ms": {"total": 3.5}, "conversation_id": "c1",
                    "sources": 2, "whole_documents": 0, "mode": "generate", "unsupported": [],
                    "degraded": False, "data": None}  # fmt: skip
    # A failure without a dependency (an internal error) has no such field, as before.
    assert payload(Failed(status=500, title="Internal Server Error", detail="x")) == {
        "status": 500, "title": "Internal Server Error", "detail": "x"}  # fmt: skip


async def test_collect_makes_the_whole_answer_and_a_failure_raises() -> None:
    async def events(*items):  # type: ignore[no-untyped-def]
        for item in items:
            yield item

    answer = await collect(events(Token(text="A "), Token(text="[1]."), Citations(citations=[CITATION]),
                                  Done(answer="A [1].", grounded=True, timings_ms={"total": 1.0})))  # fmt: skip
    assert (answer.answer, answer.citations, answer.grounded) == ("A [1].", [CITATION], True)
    with pytest.raises(AnswerFailed, match="generator down"):
        await collect(events(Token(text="A"), Failed(status=503, title="Service Unavailable", detail="generator down")))
    with pytest.raises(RuntimeError, match="without its done event"):
        await collect(events(Token(text="A")))
