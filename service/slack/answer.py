"""The threaded answer: a question from Slack through the ask pipeline, into the thread it was asked in.

"Searching…" is posted in the thread at once, then edited in place as the model writes (at most once per
`KB_SLACK__UPDATE_INTERVAL_S`), and finally replaced by the answer in mrkdwn with its sources (file name and page,
each linking to the cited passage in the web page when `KB_PUBLIC_URL` is set), its unsupported sentences marked, and
👍/👎 buttons whose votes go to the feedback store with the question, the answer and its sources. An answer longer than
one message allows (50 blocks; 3000 characters a section) continues in further replies.

Whatever fails is said in words in the thread, never as a stack trace: the generator starting or down, the asker's
rate limit, a database or index that does not answer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from litestar.exceptions import NotFoundException
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from kb.models import Citation, Feedback
from kb.settings import Settings
from service.ask.access import MAX_CONVERSATION_ID_CHARS, count_answer, question_for
from service.ask.citations import parse_markers
from service.ask.events import Citations, Done, Failed, Token
from service.ask.schemas import MAX_QUESTION_CHARS
from service.ask.streaming import opened
from service.auth import Principal
from service.problems import dependency_failure
from service.slack.identity import ChannelUnreadable, SlackDirectory
from service.slack.mrkdwn import escape, link, split_sections, to_mrkdwn
from service.state import Services

log = logging.getLogger(__name__)

PLACEHOLDER = "Searching…"
STARTING = "kb is starting, try again in a minute."
UNEXPECTED = "Something went wrong while answering. Try again; if it happens again, tell your kb administrator."
UNREADABLE_CHANNEL = (
    "I cannot see who is in this channel, so I cannot tell what everyone here may read. "
    "Add me to the channel (`/invite @kb`) and ask again, or ask me in a direct message."
)
REFUSED = "Slack refused to show the answer here ({}); ask on kb's web page instead."
STOPPED = "kb stopped before it finished answering; ask again in a minute."
FOREIGN_THREAD = "This thread's conversation is not yours to continue; ask in a new message."
UNSUPPORTED_MARK = "⚠️"
MAX_BLOCKS = 50  # a message's blocks (Slack's limit)
FALLBACK_CHARS = 3000  # the notification text of a message (shown where blocks are not)
DEPENDENCY_NAMES = {"registry": "database", "index": "search index"}
MAX_BUTTON_VALUE = 2000  # characters of a button's value (Slack's limit)
RATE_LIMIT_RETRIES = 5  # the final answer's edit, retried after Slack's Retry-After beyond the client's own retries
FEEDBACK_ACTIONS = {"kb_feedback_up": "up", "kb_feedback_down": "down"}


@dataclass(frozen=True)
class SlackQuestion:
    """One question asked in Slack, and where its answer goes."""

    team_id: str
    channel_id: str
    user_id: str
    text: str
    thread_ts: str  # the thread's root: the answer is a reply in it, and the thread is one conversation
    direct: bool  # a direct message: the asker's groups; else a channel's (service.slack.identity)

    @property
    def conversation_id(self) -> str:
        return conversation_id(self.team_id, self.channel_id, self.thread_ts)

    @property
    def principal_id(self) -> str:
        """Who owns the conversation: the asker in a DM; the channel in a channel (anyone there may follow up)."""
        return f"slack:{self.team_id}:{self.user_id if self.direct else self.channel_id}"


def conversation_id(team_id: str, channel_id: str, thread_ts: str) -> str:
    """The thread's conversation; hashed where Slack's ids make it longer than a conversation id may be."""
    readable = f"slack-{team_id}-{channel_id}-{thread_ts}"
    if len(readable) <= MAX_CONVERSATION_ID_CHARS:
        return readable
    return "slack-" + hashlib.sha256(readable.encode()).hexdigest()[:48]


def principal(key_id: str, user_id: str, groups: Sequence[str]) -> Principal:
    return Principal(key_id, f"slack user {user_id}", frozenset({"search", "ask"}), tuple(groups))


class AskLimiter:
    """At most `per_minute` questions per Slack user in any 60 seconds (this process's memory); 0: no limit."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._asked: dict[str, deque[float]] = defaultdict(deque)

    def wait_s(self, user_id: str) -> float:
        """0 and the question counts; else the seconds until the user may ask again."""
        if self._per_minute <= 0:
            return 0.0
        now = time.monotonic()
        asked = self._asked[user_id]
        while asked and now - asked[0] >= 60:
            asked.popleft()
        if len(asked) >= self._per_minute:
            return 60 - (now - asked[0])
        asked.append(now)
        return 0.0


def failure_words(dependency: str | None, status: int) -> str:
    if dependency == "generator":
        return STARTING  # the model loading, restarting or down: the reader's remedy is the same
    if dependency is not None:
        name = DEPENDENCY_NAMES.get(dependency, dependency)
        return f"kb cannot reach its {name} right now, so it cannot answer; try again in a minute."
    return UNEXPECTED if status >= 500 else f"kb could not answer this question (error {status})."


def source_url(public_url: str, citation: Citation) -> str | None:
    if not public_url:
        return None
    document, chunk = quote(citation.document_id, safe=""), quote(citation.chunk_id, safe="")
    return f"{public_url.rstrip('/')}/#doc={document}&chunk={chunk}"


# verbatim: Slack does not parse the text (it would link bare URLs and channel names and turn some words into
# mentions); the text holds the links built here and nothing else that acts.
def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text, "verbatim": True}]}


def feedback_value(conversation: str, turn: int, groups: Sequence[str]) -> str:
    """What a 👍/👎 button carries: the answer (conversation, turn) and the groups it was drawn from, which the vote is
    stored with (Slack allows 2000 characters; beyond, the groups are left out and the voter's alone are used)."""
    value = json.dumps({"c": conversation, "t": turn, "g": list(groups)})
    return value if len(value) <= MAX_BUTTON_VALUE else json.dumps({"c": conversation, "t": turn})


def feedback_buttons(value: str) -> dict[str, Any]:
    return {"type": "actions", "block_id": "kb_feedback", "elements": [
        {"type": "button", "action_id": "kb_feedback_up", "value": value,
         "text": {"type": "plain_text", "text": "👍", "emoji": True}},
        {"type": "button", "action_id": "kb_feedback_down", "value": value,
         "text": {"type": "plain_text", "text": "👎", "emoji": True}},
    ]}  # fmt: skip


def mark_unsupported(answer: str, unsupported: Sequence[str]) -> tuple[str, list[str]]:
    """The answer with ⚠️ after each sentence no cited source supports; the sentences not found in it (listed apart)."""
    missing = []
    for sentence in unsupported:
        at = answer.find(sentence)
        if at < 0 or not sentence.strip():
            missing.append(sentence)
            continue
        end = at + len(sentence)
        answer = f"{answer[:end]} {UNSUPPORTED_MARK}{answer[end:]}"
    return answer, missing


def render_answer(done: Done, citations: Sequence[Citation], public_url: str,
                  feedback_value: str | None) -> list[dict[str, Any]]:  # fmt: skip
    """The final answer as Slack messages ({"text", "blocks"}); the first replaces the placeholder, the rest follow
    in the thread; the buttons are on the last."""
    cited = {c.n: c for c in sorted(citations, key=lambda c: c.n)}

    def marker_link(n: int) -> str | None:
        return source_url(public_url, cited[n]) if n in cited else None

    answer, missing = mark_unsupported(done.answer, done.unsupported)
    blocks = [section(piece) for piece in split_sections(to_mrkdwn(answer, marker_link))]
    if cited:
        lines = []
        for n, citation in cited.items():
            url = source_url(public_url, citation)
            name = link(url, citation.filename) if url else escape(citation.filename)
            page = f", p. {citation.page}" if citation.page is not None else ""
            doubt = " _(may not support the answer)_" if not citation.supported else ""
            lines.append(f"[{n}] {name}{page}{doubt}")
        blocks += [section(piece) for piece in split_sections("*Sources*\n" + "\n".join(lines))]
    notes = []
    if len(done.unsupported) > len(missing):
        notes.append(f"{UNSUPPORTED_MARK} marks a sentence its sources do not support.")
    if missing:
        notes.append("Not supported by the sources: " + "; ".join(f"“{escape(s)}”" for s in missing))
    if done.mode == "extract":
        notes.append("Quoted from the sources.")
    for note in split_sections("  ".join(notes)) if notes else []:
        blocks.append(context(note))
    if feedback_value is not None:
        blocks.append(feedback_buttons(feedback_value))
    fallback = escape(done.answer[:FALLBACK_CHARS])  # notifications read it: no mention in it may notify anyone
    return [{"text": fallback, "blocks": blocks[start : start + MAX_BLOCKS]}
            for start in range(0, len(blocks), MAX_BLOCKS)]  # fmt: skip


def render_partial(text: str) -> dict[str, Any]:
    """The answer so far, while the model writes."""
    pieces = split_sections(to_mrkdwn(text + " …"))[: MAX_BLOCKS - 1]
    return {"text": escape(text[:FALLBACK_CHARS]) or PLACEHOLDER,
            "blocks": [section(p) for p in pieces] + [context("_Writing…_")]}  # fmt: skip


class _Progress:
    """Edits the placeholder with the answer so far: at most once per `interval_s`, one edit in flight at a time,
    and never holding up the stream (the model's tokens are read while Slack answers)."""

    def __init__(self, client: AsyncWebClient, channel: str, ts: str, interval_s: float) -> None:
        self._client, self._channel, self._ts, self._interval_s = client, channel, ts, interval_s
        self._last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def offer(self, text: str) -> None:
        if self._task is not None and not self._task.done():
            return
        if time.monotonic() - self._last < self._interval_s or not text.strip():
            return
        self._last = time.monotonic()
        self._task = asyncio.create_task(self._edit(text))

    async def settle(self) -> None:
        """Waits for the edit in flight: the final message must not be overwritten by an older one."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _edit(self, text: str) -> None:
        try:
            await self._client.chat_update(channel=self._channel, ts=self._ts, **render_partial(text))
        except SlackApiError as exc:  # e.g. rate limited: the next edit, or the final one, shows more
            log.info("chat.update of a partial answer failed: %s", exc.response.get("error"))


class SlackAnswers:
    def __init__(self, services: Services, settings: Settings, directory: SlackDirectory) -> None:
        self._services = services
        self._settings = settings
        self._directory = directory
        self._limiter = AskLimiter(settings.slack.asks_per_minute)

    def refusal(self, user_id: str, text: str) -> str | None:
        """Why a question is not taken (the asker's rate limit, its length), in words; None: taken, and counted."""
        if len(text) > MAX_QUESTION_CHARS:
            return f"A question is at most {MAX_QUESTION_CHARS} characters; this one has {len(text)}."
        wait_s = self._limiter.wait_s(user_id)
        if wait_s:
            limit = self._settings.slack.asks_per_minute
            return (f"You have asked {limit} questions in the last minute, kb's limit per person; try again in "
                    f"{max(1, round(wait_s))} s.")  # fmt: skip
        return None

    async def answer(self, client: AsyncWebClient, asked: SlackQuestion, *, taken: bool = False) -> None:
        """Answers in the thread; says in words whatever goes wrong. `taken`: refusal() was asked already."""
        placeholder: str | None = None
        try:
            words = None if taken else self.refusal(asked.user_id, asked.text)
            if words is not None:
                await self._tell(client, asked, words)
                return
            try:
                groups = await self._groups(asked)
            except ChannelUnreadable:
                await self._tell(client, asked, UNREADABLE_CHANNEL)
                return
            posted = await client.chat_postMessage(channel=asked.channel_id, thread_ts=asked.thread_ts,
                                                   text=PLACEHOLDER)  # fmt: skip
            placeholder = posted["ts"]
            for message in await self._answer(client, asked, groups, placeholder):
                await client.chat_postMessage(channel=asked.channel_id, thread_ts=asked.thread_ts, **message)
        except SlackApiError as exc:
            log.warning("Slack refused a reply in %s: %s", asked.channel_id, exc.response.get("error"))
        except asyncio.CancelledError:
            if placeholder is not None:  # kb is stopping: the thread is not left saying "Searching…"
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._replace(client, asked.channel_id, placeholder, STOPPED), 2)
            raise
        except Exception:
            log.exception("answering a Slack question failed")
            if placeholder is not None:
                await self._replace(client, asked.channel_id, placeholder, UNEXPECTED)

    async def _groups(self, asked: SlackQuestion) -> tuple[str, ...]:
        if asked.direct:
            return (await self._directory.user(asked.user_id)).groups
        return await self._directory.channel_groups(asked.channel_id, asked.user_id)

    async def _answer(self, client: AsyncWebClient, asked: SlackQuestion, groups: tuple[str, ...],
                      placeholder: str) -> list[dict[str, Any]]:  # fmt: skip
        """Streams the answer into the placeholder; the messages that follow it in the thread."""
        answers = self._services.answers
        if answers is None:
            await self._replace(client, asked.channel_id, placeholder, STARTING)
            return []
        reader = principal(asked.principal_id, asked.user_id, groups)
        try:
            question = await asyncio.to_thread(question_for, reader, self._services, asked.text,
                                               conversation_id=asked.conversation_id)  # fmt: skip
            events = await opened(answers.stream(question))
        except NotFoundException:
            await self._replace(client, asked.channel_id, placeholder, FOREIGN_THREAD)
            return []
        except Exception as exc:
            failure = dependency_failure(exc)
            if failure is None:
                raise
            log.warning("Slack question not answered: %s", failure.detail)
            await self._replace(client, asked.channel_id, placeholder, failure_words(failure.dependency, 503))
            return []

        progress = _Progress(client, asked.channel_id, placeholder, self._settings.slack.update_interval_s)
        text, citations, done = "", [], None
        try:
            async for event in events:
                match event:
                    case Token():
                        text += event.text
                        progress.offer(text)
                    case Citations():
                        citations = event.citations
                    case Done():
                        done = event
                    case Failed():
                        await progress.settle()
                        await self._replace(client, asked.channel_id, placeholder,
                                            failure_words(event.dependency, event.status))  # fmt: skip
                        return []
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            await progress.settle()
        if done is None:
            raise RuntimeError("the answer stream ended without its done event")
        count_answer("slack", done, self._services.container.generator)
        turn = await asyncio.to_thread(self._turn_of, asked.conversation_id, asked.text, done.answer)
        value = feedback_value(asked.conversation_id, turn, groups) if turn is not None else None
        first, *rest = render_answer(done, citations, self._settings.public_url, value)
        try:
            await self._update_patiently(client, asked.channel_id, placeholder, first)
        except SlackApiError as exc:  # e.g. a block Slack finds invalid: the thread must not stay "Writing…"
            log.warning("Slack refused an answer in %s: %s", asked.channel_id, exc.response.get("error"))
            await self._replace(client, asked.channel_id, placeholder, REFUSED.format(exc.response.get("error")))
            return []
        return rest

    @staticmethod
    async def _update_patiently(client: AsyncWebClient, channel: str, ts: str, message: dict[str, Any]) -> None:
        """chat.update of the finished answer, waiting out Slack's rate limit as often as it takes (within reason): the
        answer must not end as a partial one because Slack was busy."""
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                await client.chat_update(channel=channel, ts=ts, **message)
                return
            except SlackApiError as exc:
                if exc.response.get("error") != "ratelimited" or attempt == RATE_LIMIT_RETRIES:
                    raise
                retry_after = exc.response.headers.get("Retry-After") or exc.response.headers.get("retry-after")
                await asyncio.sleep(min(60.0, float(retry_after)) if str(retry_after or "").isdigit() else 1.0)

    def _turn_of(self, conversation: str, question: str, answer: str) -> int | None:
        """The index of this answer among the conversation's messages (what a feedback button names)."""
        messages = self._services.container.registry.conversation(conversation, limit=100_000)
        for index in range(len(messages) - 1, 0, -1):
            asked, answered = messages[index - 1], messages[index]
            if answered["role"] == "assistant" and answered["content"] == answer and asked["content"] == question:
                return index
        return None

    async def _tell(self, client: AsyncWebClient, asked: SlackQuestion, words: str) -> None:
        """Words for the asker alone in a channel (ephemeral), in the thread in a direct message."""
        if asked.direct:
            await client.chat_postMessage(channel=asked.channel_id, thread_ts=asked.thread_ts, text=words)
        else:
            await client.chat_postEphemeral(channel=asked.channel_id, user=asked.user_id, thread_ts=asked.thread_ts,
                                            text=words)  # fmt: skip

    @staticmethod
    async def _replace(client: AsyncWebClient, channel: str, ts: str, words: str) -> None:
        try:
            await client.chat_update(channel=channel, ts=ts, text=words, blocks=[section(escape(words))])
        except SlackApiError as exc:
            log.warning("Slack refused an update in %s: %s", channel, exc.response.get("error"))

    async def record_feedback(self, client: AsyncWebClient, body: dict[str, Any]) -> None:
        """A 👍/👎 click: stored with the question, the answer and its cited sources (door "slack"), then thanked."""
        action = (body.get("actions") or [{}])[0]
        rating = FEEDBACK_ACTIONS.get(action.get("action_id", ""))
        team_id = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""
        user_id = (body.get("user") or {}).get("id") or ""
        channel_id = (body.get("channel") or {}).get("id") or ""
        thread_ts = (body.get("message") or {}).get("thread_ts") or (body.get("message") or {}).get("ts")
        try:
            value = json.loads(action.get("value") or "")
            conversation, turn = str(value["c"]), int(value["t"])
        except (ValueError, KeyError, TypeError):
            log.warning("a feedback click without a readable value")
            return
        if rating is None or not thread_ts or conversation != conversation_id(team_id, channel_id, thread_ts):
            log.warning("a feedback click that does not match its channel")  # the button is always our own
            return
        voter = await self._directory.user(user_id)
        # Stored with the groups the answer drew on as well as the voter's: an administrator limited to some groups
        # reads a vote only when they hold all of them, so the answer's text never reaches one who could not have
        # read it (a voter who joined the channel later may hold fewer groups than its answer drew on).
        drawn_on = [str(g) for g in value.get("g") or []] if isinstance(value.get("g"), list) else []
        groups = list(dict.fromkeys([*drawn_on, *voter.groups]))
        stored = await asyncio.to_thread(self._store_feedback, conversation, turn, rating, f"slack:{team_id}:{user_id}",
                                         groups)  # fmt: skip
        words = (f"Thanks, your {'👍' if rating == 'up' else '👎'} is recorded." if stored
                 else "That answer is no longer stored, so the vote was not recorded.")  # fmt: skip
        try:
            await client.chat_postEphemeral(channel=channel_id, user=user_id, thread_ts=thread_ts, text=words)
        except SlackApiError as exc:
            log.info("could not thank for feedback: %s", exc.response.get("error"))

    def _store_feedback(self, conversation: str, turn: int, rating: str, voter_id: str, groups: list[str]) -> bool:
        registry = self._services.container.registry
        messages = registry.conversation(conversation, limit=100_000)
        if not 0 < turn < len(messages) or messages[turn]["role"] != "assistant":
            return False
        question, answer = messages[turn - 1]["content"], messages[turn]
        sources = answer["sources"] or []
        cited = sorted(set(parse_markers(answer["content"], len(sources)).cited))
        fields = ("document_id", "filename", "page", "chunk_id")
        citations = [{"n": n, **{name: sources[n - 1].get(name) for name in fields}} for n in cited]
        # One vote per person, answer and rating: a second click on the same button is the same record.
        feedback_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{conversation}#{turn}#{voter_id}#{rating}").hex
        if registry.get_feedback(feedback_id) is None:
            registry.add_feedback(Feedback(
                feedback_id=feedback_id, principal_id=voter_id, rating=rating,  # type: ignore[arg-type]
                question=question,
                answer=answer["content"], citations=citations, conversation_id=conversation, source="slack",
                groups=groups,
            ))  # fmt: skip
        return True
