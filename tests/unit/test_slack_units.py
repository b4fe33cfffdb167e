"""The Slack bot's parts on their own (fakes for Slack's client and the pipeline): mrkdwn and its escapes, Slack's
size limits, the members' groups and their intersection, the per-user limit, the throttled edits, and errors in
words. (The bot against a real app and a local Slack: tests/integration/test_slack_events.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from sqlalchemy.exc import OperationalError

from kb.models import Citation
from kb.ports import GeneratorUnavailable
from kb.settings import Settings, SlackSettings
from service.ask.events import Done
from service.slack.answer import (
    STARTING,
    AskLimiter,
    SlackAnswers,
    SlackQuestion,
    _Progress,
    conversation_id,
    render_answer,
    source_url,
)
from service.slack.identity import ChannelUnreadable, SlackDirectory, intersect
from service.slack.mrkdwn import SECTION_LIMIT, plain_text, split_sections, to_mrkdwn
from tests.fakes import FakeConversations

pytestmark = pytest.mark.unit

BOT = "U0KBBOT"


# --- mrkdwn -------------------------------------------------------------------------------------------------------


def test_markdown_becomes_mrkdwn() -> None:
    markdown = "# Backups\n**Nightly** at 02:00, *kept* 30 days [1].\n- one\n  - nested\n1. first\n> quoted\n~~old~~"
    assert to_mrkdwn(markdown).splitlines() == [
        "*Backups*", "*Nightly* at 02:00, _kept_ 30 days [1].", "• one", "    • nested", "1. first", ">quoted",
        "~old~",
    ]  # fmt: skip


def test_nothing_a_document_or_the_model_writes_becomes_a_slack_control_sequence() -> None:
    text = to_mrkdwn("Ping <!channel> and <@U123> via <https://evil.example|kb> & more")
    assert text == "Ping &lt;!channel&gt; and &lt;@U123&gt; via &lt;https://evil.example|kb&gt; &amp; more"
    assert "<" not in to_mrkdwn("`<!here>` and ```\n<script>\n```")


def test_code_is_kept_verbatim_and_only_http_links_are_links() -> None:
    assert to_mrkdwn("Run `a**b**c_d_` now") == "Run `a**b**c_d_` now"
    assert to_mrkdwn("```\n**not bold**\n```") == "```\n**not bold**\n```"
    assert to_mrkdwn("[docs](https://kb.example.com/a?b=1&c=2)") == "<https://kb.example.com/a?b=1&amp;c=2|docs>"
    assert to_mrkdwn("[x](javascript:alert(1))") == "[x](javascript:alert(1))"
    assert to_mrkdwn("snake_case_name and 2 * 3 * 4") == "snake_case_name and 2 * 3 * 4"


def test_markers_link_to_their_source() -> None:
    def marker_link(n: int) -> str | None:
        return f"https://kb/#doc=d{n}&chunk=c{n}" if n != 3 else None

    text = to_mrkdwn("Nightly [1]. Kept [2, 3].", marker_link)
    assert text == ("Nightly <https://kb/#doc=d1&amp;chunk=c1|[1]>. Kept [<https://kb/#doc=d2&amp;chunk=c2|2>, 3].")


def test_an_unfinished_code_block_is_closed() -> None:
    assert to_mrkdwn("Here:\n```\nkb serve") == "Here:\n```\nkb serve\n```"


def test_a_long_text_is_split_within_slacks_section_limit() -> None:
    text = to_mrkdwn("\n\n".join(f"Paragraph {i} " + "word & <b> " * 120 for i in range(40)))
    pieces = split_sections(text)
    assert len(pieces) > 1 and all(len(p) <= SECTION_LIMIT for p in pieces)
    assert "".join(pieces).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    code = split_sections("```\n" + "x = 1\n" * 1500 + "```")
    assert len(code) > 1 and all(p.count("```") % 2 == 0 and len(p) <= SECTION_LIMIT for p in code)
    unbroken = split_sections("&amp;" * 1000)
    assert all(p.endswith(";") for p in unbroken[:-1])


def test_a_slack_message_reads_as_typed() -> None:
    text = "<@U0KBBOT> is &lt;b&gt; in <#C1|general>? see <https://x.example|site> <@U2|ann> <!here> &amp;"
    assert plain_text(text, drop_user=BOT) == "is <b> in #general? see site @ann @here &"


# --- rendering ----------------------------------------------------------------------------------------------------


def citation(n: int, page: int | None = 1) -> Citation:
    return Citation(n=n, document_id=f"doc{n}", filename=f"file {n} <x>.pdf", page=page, snippet="s",
                    chunk_id=f"chunk{n}")  # fmt: skip


def done(answer: str, unsupported: list[str] | None = None, mode: str = "generate") -> Done:
    return Done(answer=answer, grounded=True, timings_ms={}, mode=mode, unsupported=unsupported or [])


def test_the_answer_has_its_sources_linked_unsupported_sentences_marked_and_buttons() -> None:
    answer = "Backups run nightly [1]. They are kept forever. Restores take an hour [2]."
    messages = render_answer(done(answer, ["They are kept forever."]), [citation(1), citation(2, None)],
                             "https://kb.example.com/", '{"c": "x", "t": 1}')  # fmt: skip
    assert len(messages) == 1
    blocks = messages[0]["blocks"]
    sections = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert "They are kept forever. ⚠️" in sections[0]
    assert "<https://kb.example.com/#doc=doc1&amp;chunk=chunk1|[1]>" in sections[0]
    assert sections[1] == ("*Sources*\n[1] <https://kb.example.com/#doc=doc1&amp;chunk=chunk1|file 1 &lt;x&gt;.pdf>, "
                           "p. 1\n[2] <https://kb.example.com/#doc=doc2&amp;chunk=chunk2|file 2 &lt;x&gt;.pdf>")
    assert any(b["type"] == "context" and "⚠️" in json.dumps(b, ensure_ascii=False) for b in blocks)
    assert blocks[-1]["type"] == "actions"
    assert [e["action_id"] for e in blocks[-1]["elements"]] == ["kb_feedback_up", "kb_feedback_down"]
    assert messages[0]["text"] == answer


def test_without_a_public_url_sources_are_named_not_linked() -> None:
    messages = render_answer(done("Nightly [1]."), [citation(1)], "", None)
    assert "<" not in json.dumps(messages) and "file 1 &lt;x&gt;.pdf, p. 1" in json.dumps(messages)
    notifying = render_answer(done("Tell <!channel> & <@U1> [1]."), [citation(1)], "", None)[0]["text"]
    assert notifying == "Tell &lt;!channel&gt; &amp; &lt;@U1&gt; [1]."  # the notification text too
    assert source_url("", citation(1)) is None


def test_a_very_long_answer_is_split_into_messages_within_slacks_limits() -> None:
    answer = "\n\n".join(f"Point {i}: " + "detail " * 400 + f"[{i % 60 + 1}]" for i in range(80))
    citations = [citation(n) for n in range(1, 61)]
    messages = render_answer(done(answer), citations, "https://kb.example.com", '{"c": "x", "t": 1}')
    assert len(messages) > 1
    for message in messages:
        assert len(message["blocks"]) <= 50 and len(message["text"]) <= 3000
        assert all(len(b["text"]["text"]) <= 3000 for b in message["blocks"] if b["type"] == "section")
    assert messages[-1]["blocks"][-1]["type"] == "actions"
    assert not any(b["type"] == "actions" for m in messages[:-1] for b in m["blocks"])


# --- who sees what ------------------------------------------------------------------------------------------------


def test_the_intersection_of_groups() -> None:
    assert intersect([("eng", "hr"), ("eng",), ("hr", "eng", "ops")]) == ("eng",)
    assert intersect([("eng", "hr"), ("*",)]) == ("eng", "hr")  # a member holding every group narrows nothing
    assert intersect([("*",), ("*",)]) == ("*",)
    assert intersect([("eng",), ()]) == ()


def response(data: dict[str, Any]) -> AsyncSlackResponse:
    return AsyncSlackResponse(client=None, http_verb="POST", api_url="", req_args={}, data=data, headers={},
                              status_code=200)  # fmt: skip


class FakeSlackClient:
    def __init__(self) -> None:
        self.users: dict[str, str] = {}  # id -> email
        self.members: dict[str, list[str]] = {}
        self.usergroups: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def auth_test(self) -> AsyncSlackResponse:
        return response({"ok": True, "user_id": BOT})

    async def users_info(self, user: str) -> AsyncSlackResponse:
        self.calls.append(("users.info", {"user": user}))
        return response({"ok": True, "user": {"id": user, "profile": {"email": self.users.get(user, "")}}})

    async def conversations_members(self, channel: str, limit: int, cursor: str | None = None) -> AsyncSlackResponse:
        self.calls.append(("conversations.members", {"channel": channel, "cursor": cursor}))
        if channel not in self.members:
            raise SlackApiError("not_in_channel", response({"ok": False, "error": "not_in_channel"}))
        start = int(cursor or 0)
        page = self.members[channel][start:start + 2]  # tiny pages: pagination is exercised
        more = start + 2 < len(self.members[channel])
        following = {"next_cursor": str(start + 2) if more else ""}
        return response({"ok": True, "members": page, "response_metadata": following})

    async def usergroups_list(self, include_users: bool) -> AsyncSlackResponse:
        self.calls.append(("usergroups.list", {}))
        return response({"ok": True, "usergroups": self.usergroups})


def directory(client: FakeSlackClient, **settings: Any) -> SlackDirectory:
    return SlackDirectory(client, SlackSettings(**settings))  # type: ignore[arg-type]


async def test_a_users_groups_are_the_union_of_every_mapping_that_matches() -> None:
    client = FakeSlackClient()
    client.users = {"U1": "ann@Example.com", "U2": "bob@other.org"}
    client.usergroups = [{"id": "S1", "handle": "oncall", "users": ["U1"]}, {"id": "S2", "handle": "x", "users": []}]
    people = directory(client, user_groups={"U1": ["staff"]}, email_domain_groups={"example.com": ["eng"]},
                       usergroup_groups={"oncall": ["ops"], "S1": ["pager"]}, ingest_groups=["ops"],
                       default_groups=["public"])  # fmt: skip
    ann = await people.user("U1")
    assert ann.groups == ("staff", "eng", "pager", "ops") and ann.may_ingest and ann.email == "ann@Example.com"
    bob = await people.user("U2")
    assert bob.groups == ("public",) and not bob.may_ingest  # nothing matched: the default
    await people.user("U1")
    assert len([c for c in client.calls if c[0] == "users.info"]) == 2  # cached


async def test_an_unmapped_user_holds_no_group_by_default() -> None:
    assert (await directory(FakeSlackClient()).user("U9")).groups == ()


async def test_a_channel_answer_draws_on_what_every_member_may_read() -> None:
    client = FakeSlackClient()
    client.members = {"C1": ["U1", "U2", BOT, "U3"], "C2": ["U1", BOT]}
    people = directory(client, user_groups={"U1": ["eng", "hr"], "U2": ["eng"], "U3": ["*"]})
    assert await people.channel_groups("C1", "U1") == ("eng",)  # U2 lacks hr; U3 ('*') and the bot narrow nothing
    assert await people.channel_groups("C2", "U1") == ("eng", "hr")
    client.members["C2"].append("U4")  # U4: unmapped
    assert await people.channel_groups("C2", "U1") == ("eng", "hr")  # cached...
    people.forget_channel("C2")  # ...until someone joins (member_joined_channel)
    assert await people.channel_groups("C2", "U1") == ()
    with pytest.raises(ChannelUnreadable):
        await people.channel_groups("C9", "U1")


def test_the_per_user_limit() -> None:
    limiter = AskLimiter(2)
    assert limiter.wait_s("U1") == 0 and limiter.wait_s("U1") == 0
    assert 59 < limiter.wait_s("U1") <= 60
    assert limiter.wait_s("U2") == 0
    assert all(AskLimiter(0).wait_s("U1") == 0 for _ in range(100))


# --- the answer's edits and errors --------------------------------------------------------------------------------


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], float]] = []

    async def _record(self, method: str, **params: Any) -> dict[str, Any]:
        self.calls.append((method, params, time.monotonic()))
        return {"ok": True, "ts": f"1.{len(self.calls):06d}"}

    async def chat_postMessage(self, **params: Any) -> dict[str, Any]:  # noqa: N802 (Slack's method name)
        return await self._record("chat.postMessage", **params)

    async def chat_update(self, **params: Any) -> dict[str, Any]:
        answered = await self._record("chat.update", **params)
        await asyncio.sleep(0.02)  # Slack takes its time
        return answered

    async def chat_postEphemeral(self, **params: Any) -> dict[str, Any]:  # noqa: N802
        return await self._record("chat.postEphemeral", **params)


async def test_edits_while_the_answer_streams_are_throttled() -> None:
    client = RecordingClient()
    progress = _Progress(client, "C1", "1.0", interval_s=0.1)  # type: ignore[arg-type]
    text = ""
    for i in range(60):  # 0.6 s of tokens
        text += f"word{i} "
        progress.offer(text)
        await asyncio.sleep(0.01)
    await progress.settle()
    times = [at for _, _, at in client.calls]
    assert 2 <= len(times) <= 7
    assert all(later - earlier >= 0.08 for earlier, later in zip(times, times[1:]))  # 0.1 s, less the loop's jitter
    assert client.calls[-1][1]["blocks"][-1]["type"] == "context"  # "Writing…"


class Pipeline:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def stream(self, question: Any) -> AsyncIterator[Any]:
        raise self.error
        yield  # a generator


def answers_with(pipeline: Any, groups: dict[str, list[str]] | None = None) -> SlackAnswers:
    services = SimpleNamespace(answers=pipeline, container=SimpleNamespace(registry=FakeConversations(),
                                                                           generator=None))  # fmt: skip
    settings = Settings(slack=SlackSettings(user_groups=groups or {"U1": ["eng"]}, asks_per_minute=5))
    people = directory(FakeSlackClient(), user_groups=groups or {"U1": ["eng"]})
    return SlackAnswers(services, settings, people)  # type: ignore[arg-type]


QUESTION = SlackQuestion(team_id="T1", channel_id="D1", user_id="U1", text="When?", thread_ts="5.0", direct=True)


@pytest.mark.parametrize(("pipeline", "words"), [
    (None, STARTING),
    (Pipeline(GeneratorUnavailable("503 from the model server")), STARTING),
    (Pipeline(OperationalError("SELECT", {}, Exception("database is locked"))), "kb cannot reach its database"),
    (Pipeline(RuntimeError("boom")), "Something went wrong while answering"),
])  # fmt: skip
async def test_failures_are_said_in_words_in_the_thread(pipeline: Any, words: str) -> None:
    client = RecordingClient()
    await answers_with(pipeline).answer(client, QUESTION)  # type: ignore[arg-type]
    posted, updated = client.calls[0], client.calls[-1]
    assert posted[0] == "chat.postMessage" and posted[1]["text"] == "Searching…" and posted[1]["thread_ts"] == "5.0"
    assert updated[0] == "chat.update" and updated[1]["text"].startswith(words)
    assert "Traceback" not in json.dumps([c[1] for c in client.calls])


async def test_past_the_limit_the_asker_is_told_when_to_ask_again() -> None:
    client = RecordingClient()
    answers = answers_with(None)
    in_channel = SlackQuestion(team_id="T1", channel_id="C1", user_id="U1", text="When?", thread_ts="6.0", direct=False)
    answers._limiter = AskLimiter(1)
    answers._directory._channels._values["C1"] = (time.monotonic(), ("U1",))  # C1's members, as if listed
    answers._directory._bot_user_id = BOT
    await answers.answer(client, in_channel)  # type: ignore[arg-type]
    await answers.answer(client, in_channel)  # type: ignore[arg-type]
    method, params, _ = client.calls[-1]
    assert method == "chat.postEphemeral" and params["user"] == "U1" and "try again in" in params["text"]


def test_a_threads_conversation_id_fits_the_registry() -> None:
    assert conversation_id("T1", "C1", "1700000000.000100") == "slack-T1-C1-1700000000.000100"
    long = conversation_id("E" + "0" * 30, "C" + "1" * 30, "1700000000.000100")
    assert len(long) <= 64 and long.startswith("slack-") and long == conversation_id("E" + "0" * 30, "C" + "1" * 30,
                                                                                     "1700000000.000100")


async def test_an_overlong_question_is_refused_in_words() -> None:
    client = RecordingClient()
    overlong = SlackQuestion("T1", "D1", "U1", "why? " * 3000, "7.0", True)
    await answers_with(None).answer(client, overlong)  # type: ignore[arg-type]
    assert [(m, p["text"][:30]) for m, p, _ in client.calls] == [("chat.postMessage", "A question is at most 8000 cha")]
