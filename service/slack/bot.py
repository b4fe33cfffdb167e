"""The Slack bot: a Bolt `AsyncApp` whose listeners turn Slack's events into kb questions (service.slack.answer),
file offers (service.slack.files) and feedback.

- `@kb question` in a channel, a direct message to the bot, and `/kb question` are answered in a thread (the slash
  command first posts the question, so that the thread has a root everyone sees).
- A reply in the thread (mentioning the bot in a channel) continues the thread's conversation.
- `/kb add` adds files shared with the bot in the DM; `/kb help` says all this.
- Every request is acknowledged at once (Slack wants it within 3 s); the work runs afterwards, in tasks this bot
  holds and cancels when it stops.
- Slack's retries are answered once: each event's `event_id` is claimed in the registry (kb.ports.EventLog) before a
  listener sees it, so a retry (`X-Slack-Retry-Num`), even one reaching another replica or a restarted process, is
  acknowledged and dropped.

Both ways in use this app: HTTP (service.slack.routes, POST /slack/events) and Socket Mode
(service.slack.socket_mode)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from kb.settings import Settings
from service.slack.answer import SlackAnswers, SlackQuestion
from service.slack.files import SlackFiles
from service.slack.identity import SlackDirectory
from service.slack.mrkdwn import escape, plain_text
from service.state import Services

log = logging.getLogger(__name__)

HELP = (
    "Ask me about the documents in kb, and I answer in a thread with the sources I used:\n"
    "• mention me in a channel: `@kb How long are backups kept?`\n"
    "• send me a direct message\n"
    "• `/kb How long are backups kept?`\n"
    "Reply in the thread to follow up (in a channel, mention me again). In a channel I answer only from documents "
    "everyone in it may read; in a direct message, from yours.\n"
    "• `/kb add` (in our direct messages) adds the files you shared with me there, if you may add documents."
)
NOT_HERE = "I cannot post here. Invite me to this channel (`/invite @kb`), or ask me in a direct message."
EVENTS_KEPT = timedelta(days=1)  # Slack retries an event for minutes; claimed ids older than this are forgotten
FORGET_EVERY_S = 3600
PERSON_SUBTYPES = {None, "file_share", "thread_broadcast"}  # message subtypes that are a person writing


def is_direct_message(channel_id: str) -> bool:
    """A one-to-one DM with the bot (ids D…). What a payload's `channel_type` or `channel_name` claims is not trusted
    for this: the asker's own groups are used only where the asker alone reads the answer."""
    return channel_id.startswith("D")


class SlackBot:
    def __init__(self, services: Services, settings: Settings, client: AsyncWebClient | None = None) -> None:
        slack = settings.slack
        self.signing_secret = slack.signing_secret.get_secret_value()
        self.client = client or AsyncWebClient(token=slack.bot_token.get_secret_value(), base_url=slack.api_url,
                                               timeout=30)  # fmt: skip
        # Slack answers 429 with Retry-After when a method's rate is exceeded: wait and retry, twice at most.
        self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
        self.app = AsyncApp(client=self.client, signing_secret=self.signing_secret, name="kb",
                            process_before_response=False)  # fmt: skip
        self.directory = SlackDirectory(self.client, slack)
        self.answers = SlackAnswers(services, settings, self.directory)
        self.files = SlackFiles(services, settings, self.directory)
        self._services = services
        self._tasks: set[asyncio.Task[Any]] = set()
        self._forgotten_at = 0.0
        self._register()

    # --- tasks -----------------------------------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Until every answer in hand is posted (tests; a clean shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.files.aclose()  # its watches of files being ingested

    # --- listeners -------------------------------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.use(self._claim_event)
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.event("member_joined_channel")(self._on_membership)
        app.event("member_left_channel")(self._on_membership)
        app.command("/kb")(self._on_command)
        app.action(re.compile(r"^kb_feedback_(up|down)$"))(self._on_feedback)
        self.files.register(app)
        app.error(self._on_error)

    async def _claim_event(self, body: dict[str, Any], context: Any, next: Any) -> BoltResponse | None:
        """Global middleware (`next` is Bolt's name): a request from another workspace is dropped, and an event is
        handled only by the first delivery that claims its id."""
        ours = context.authorize_result.team_id if context.authorize_result is not None else None
        if ours and context.team_id and context.team_id != ours:
            # The signing secret is the app's, not the workspace's: an app installed in several workspaces (or a
            # leaked secret) is sent their requests too. This bot's token, groups and threads are one workspace's.
            log.warning("a Slack request from workspace %s, not this bot's %s: ignored", context.team_id, ours)
            return BoltResponse(status=200, body="")
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if event_id:
            registry = self._services.container.registry
            try:
                first = await asyncio.to_thread(registry.claim_event, str(event_id))
            except Exception:
                # Not knowing whether it was handled: let Slack deliver it again later rather than answer twice.
                log.exception("cannot claim Slack event %s", event_id)
                return BoltResponse(status=503, body="")
            if not first:
                log.info("Slack event %s was already handled (a retry)", event_id)
                return BoltResponse(status=200, body="")
            self._forget_old_events()
        await next()
        return None

    def _forget_old_events(self) -> None:
        now = time.monotonic()
        if now - self._forgotten_at < FORGET_EVERY_S:
            return
        self._forgotten_at = now
        registry = self._services.container.registry
        before = datetime.now(UTC) - EVENTS_KEPT

        async def forget() -> None:
            try:
                await asyncio.to_thread(registry.forget_events, before)
            except Exception:
                log.exception("forgetting old Slack events failed")

        self.spawn(forget())

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
        if event.get("bot_id") or not event.get("user"):
            return  # another bot: bots do not ask kb
        text = plain_text(event.get("text") or "", drop_user=context.bot_user_id)
        asked = SlackQuestion(
            team_id=body.get("team_id") or context.team_id or "", channel_id=event["channel"], user_id=event["user"],
            text=text, thread_ts=event.get("thread_ts") or event["ts"], direct=is_direct_message(event["channel"]),
        )  # fmt: skip
        self.spawn(self._ask(asked))

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
        """Direct messages only (a message in a channel is a question only when it mentions the bot)."""
        if event.get("channel_type") != "im" or event.get("subtype") not in PERSON_SUBTYPES:
            return
        if not is_direct_message(event.get("channel") or ""):
            log.warning("a direct message event from channel %s, which is no DM: ignored", event.get("channel"))
            return
        if event.get("bot_id") or not event.get("user") or event.get("user") == context.bot_user_id:
            return
        if event.get("files"):
            self.spawn(self.files.offer(event, self.client))
            return
        text = plain_text(event.get("text") or "", drop_user=context.bot_user_id)
        asked = SlackQuestion(
            team_id=body.get("team_id") or context.team_id or "", channel_id=event["channel"], user_id=event["user"],
            text=text, thread_ts=event.get("thread_ts") or event["ts"], direct=True,
        )  # fmt: skip
        self.spawn(self._ask(asked))

    async def _on_membership(self, event: dict[str, Any]) -> None:
        # Someone joined or left: who may read an answer there changed, now, not when the cache ends.
        if event.get("channel"):
            self.directory.forget_channel(event["channel"])

    async def _on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        text = (command.get("text") or "").strip()
        word = text.split(maxsplit=1)[0].lower() if text else ""
        if not text or word == "help":
            await ack(text=HELP)
            return
        if word == "add":
            await ack()
            self.spawn(self.files.add_command(command, self.client, respond))
            return
        await ack()
        self.spawn(self._slash_question(command, text, respond))

    async def _on_feedback(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        self.spawn(self.answers.record_feedback(self.client, body))

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        log.error("Slack listener failed (%s)", body.get("type") or body.get("command"), exc_info=error)

    # --- the work --------------------------------------------------------------------------------------------------

    async def _ask(self, asked: SlackQuestion) -> None:
        if asked.text.strip(" ?!.").lower() in ("", "help"):
            await self._say(asked.channel_id, HELP, asked.thread_ts, user_id=None if asked.direct else asked.user_id)
            return
        await self.answers.answer(self.client, asked)

    async def _slash_question(self, command: dict[str, Any], text: str, respond: Any) -> None:
        """`/kb question`: the question is posted in the channel (the thread's root, so that everyone sees what was
        asked), and answered in its thread."""
        channel, user_id = command["channel_id"], command["user_id"]
        question = plain_text(text)
        refusal = self.answers.refusal(user_id, question)
        if refusal is not None:  # said to the asker alone, before anything is posted in the channel
            try:
                await respond(text=refusal, response_type="ephemeral")
            except Exception:
                log.warning("could not tell the asker why their /kb question was not taken")
            return
        try:
            root = await self.client.chat_postMessage(channel=channel, text=f"<@{user_id}> asked: {escape(question)}")
        except SlackApiError as exc:
            # Not a member of the channel, or a direct message between other people: only the asker hears of it.
            log.info("cannot post a slash command's question in %s: %s", channel, exc.response.get("error"))
            try:
                await respond(text=NOT_HERE, response_type="ephemeral")
            except Exception:
                log.warning("could not tell the asker why their /kb question went unanswered")
            return
        asked = SlackQuestion(
            team_id=command.get("team_id") or "", channel_id=channel, user_id=user_id, text=question,
            thread_ts=root["ts"], direct=is_direct_message(channel),
        )  # fmt: skip
        await self.answers.answer(self.client, asked, taken=True)

    async def _say(self, channel: str, text: str, thread_ts: str | None, user_id: str | None = None) -> None:
        try:
            if user_id is None:
                await self.client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text)
            else:
                await self.client.chat_postEphemeral(channel=channel, user=user_id, thread_ts=thread_ts, text=text)
        except SlackApiError as exc:
            log.warning("Slack refused a reply in %s: %s", channel, exc.response.get("error"))


def build_slack_app(services: Services, settings: Settings) -> AsyncApp:
    """The Bolt app with every listener registered (the design's entry point; SlackBot keeps its tasks too)."""
    return SlackBot(services, settings).app
