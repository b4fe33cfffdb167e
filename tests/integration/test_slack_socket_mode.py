"""The Slack bot over Socket Mode against the local Slack (tests/slack_fake.py: a real WebSocket speaking Slack's
envelope protocol, and the Web API over HTTP).

- The runner (service.slack.socket_mode.SocketModeRunner) on a small Bolt app: start() never waits for Slack, an
  envelope is acked by its envelope_id, a dropped connection is opened again, a token Slack refuses is said in
  words, stop() closes the connection.
- The bot as `kb slack` runs it (socket_mode_bot: SQLite, Qdrant Edge, MiniLM, answers from the session's vLLM
  server): an `events_api` app_mention and a `slash_commands` envelope are acked and end in a threaded, cited answer
  (chat.postMessage, then chat.update, recorded by the fake); a retried envelope of the same event is not answered
  again.
- `kb slack` itself: without its tokens it says which are missing and exits 2; with them it connects, answers in
  words while the model is off ("kb is starting"), and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from kb.container import Container
from kb.settings import GeneratorSettings, Settings, SlackSettings
from service.slack.socket_mode import SocketModeRunner, socket_mode_bot
from service.state import Services
from tests.conftest import SERVER_MAX_MODEL_LEN
from tests.slack_fake import SlackFake, event_body
from tests.support import free_port, log_tail, stop_process_group

pytestmark = pytest.mark.integration

BOT_TOKEN, APP_TOKEN = "xoxb-test", "xapp-test"
ENG, HR = "U0ENG", "U0HR"
RUNBOOK = b"Deployment runbook. Deploys run on Tuesdays after the canary has been green for an hour. The deployment "
SALARIES = b"Salary bands for 2026. Band four starts at 82,000 euros per year. The salary bands codeword is "
DOCS = {
    "eng-deploy-runbook.txt": ("eng", RUNBOOK + b"codeword is AMBER-FALCON-238."),
    "hr-salary-bands.txt": ("hr", SALARIES + b"TEAL-OTTER-552."),
}
_ts = iter(range(1, 1_000_000))


def new_ts() -> str:
    return f"{int(time.time())}.{next(_ts):06d}"


def mention(channel: str, user: str, text: str) -> dict[str, Any]:
    return {"type": "app_mention", "user": user, "text": f"<@{SlackFake.bot_user_id}> {text}", "ts": new_ts(),
            "channel": channel, "event_ts": new_ts()}  # fmt: skip


def direct_message(channel: str, user: str, text: str) -> dict[str, Any]:
    return {"type": "message", "channel_type": "im", "user": user, "text": text, "ts": new_ts(), "channel": channel,
            "event_ts": new_ts()}  # fmt: skip


def shown(message: dict[str, Any]) -> str:
    return message["text"] + json.dumps(message.get("blocks") or [], ensure_ascii=False)


def final_answer(slack: SlackFake, channel: str, thread_ts: str, timeout: float = 180) -> dict[str, Any]:
    """The bot's first reply in the thread (its placeholder), once edited into the answer with 👍/👎 buttons."""
    slack.wait_for("chat.postMessage", lambda p: p.get("channel") == channel and p.get("thread_ts") == thread_ts)
    placeholder = next(m for m in slack.messages(channel) if m.get("thread_ts") == thread_ts)

    def done(params: dict[str, Any]) -> bool:
        return params.get("ts") == placeholder["ts"] and "kb_feedback_up" in json.dumps(params.get("blocks") or "")

    slack.wait_for("chat.update", done, timeout=timeout)
    return next(m for m in slack.messages(channel) if m["ts"] == placeholder["ts"])


def slack_settings(api_url: str, **overrides: Any) -> Settings:
    tokens = {"bot_token": BOT_TOKEN, "app_token": APP_TOKEN, **overrides}
    return Settings(slack=SlackSettings(api_url=api_url, **tokens))


# ---------------------------------------------------------------------------------------------------------------
# The runner, on a small Bolt app


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    with SlackFake(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as fake:
        yield fake


def small_app(api_url: str, heard: list[dict[str, Any]]) -> AsyncApp:
    app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=api_url), signing_secret="unused-in-socket-mode")

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        heard.append(event)
        await say(text=f"heard: {event['text']}", thread_ts=event["ts"])

    return app


async def test_an_envelope_is_acked_by_its_id_and_the_connection_is_kept(slack: SlackFake) -> None:
    heard: list[dict[str, Any]] = []
    runner = SocketModeRunner(small_app(slack.api_url, heard), slack_settings(slack.api_url), ping_interval=1)
    await runner.start()
    try:
        await asyncio.to_thread(slack.wait_connected, 1)
        first = mention("C1", ENG, "one")
        envelope = await asyncio.to_thread(slack.send_envelope, "events_api", event_body(first, "Ev1"))
        assert await asyncio.to_thread(slack.wait_ack, envelope) == {"envelope_id": envelope}
        in_thread = lambda p: p.get("thread_ts") == first["ts"]
        replied = await asyncio.to_thread(slack.wait_for, "chat.postMessage", in_thread)
        assert replied["text"] == f"heard: <@{SlackFake.bot_user_id}> one"

        await asyncio.to_thread(slack.drop_connections)  # a network failure: slack-sdk opens a new connection
        await asyncio.to_thread(slack.wait_connected, 2)
        second = mention("C1", ENG, "two")
        envelope = await asyncio.to_thread(slack.send_envelope, "events_api", event_body(second, "Ev2"))
        assert (await asyncio.to_thread(slack.wait_ack, envelope))["envelope_id"] == envelope
        await asyncio.to_thread(slack.wait_for, "chat.postMessage", lambda p: p.get("thread_ts") == second["ts"])
        assert runner.connected and runner.failure is None
        assert [e["text"] for e in heard] == [first["text"], second["text"]]
    finally:
        await runner.stop()
    await asyncio.to_thread(lambda: time.sleep(0.2))
    assert slack.connections == 0 and not runner.connected


async def test_start_never_waits_for_slack_and_stop_ends_the_attempts() -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/api/"  # nothing listens there
    runner = SocketModeRunner(small_app(unreachable, []), slack_settings(unreachable))
    started = time.monotonic()
    await runner.start()
    assert time.monotonic() - started < 0.5
    await asyncio.sleep(1.5)  # the event loop keeps running while it tries
    assert not runner.connected and runner.failure is None
    started = time.monotonic()
    await runner.stop()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("tokens", "failure"),
    [
        ({"app_token": "xapp-wrong"}, "Slack refused the app-level token (KB_SLACK__APP_TOKEN): invalid_auth"),
        ({"bot_token": "xoxb-wrong"}, "Slack refused the bot token (KB_SLACK__BOT_TOKEN): invalid_auth"),
        ({"app_token": BOT_TOKEN}, "Slack refused the app-level token (KB_SLACK__APP_TOKEN): not_allowed_token_type"),
    ],
)
async def test_a_token_slack_refuses_is_said_in_words_not_retried(
    slack: SlackFake, tokens: dict[str, str], failure: str
) -> None:
    runner = SocketModeRunner(small_app(slack.api_url, []), slack_settings(slack.api_url, **tokens))
    await runner.start()
    try:
        assert await asyncio.wait_for(runner.wait_failed(), timeout=10) == failure
        assert not runner.connected and slack.connections_opened == 0
    finally:
        await runner.stop()


# ---------------------------------------------------------------------------------------------------------------
# The bot as `kb slack` runs it, with the real engine


@pytest.fixture(scope="module")
def slack_for_bot() -> Iterator[SlackFake]:
    with SlackFake(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as fake:
        for user in (ENG, HR):
            fake.users[user] = {"id": user, "name": user.lower(), "profile": {"email": f"{user.lower()}@example.com"}}
        fake.channel_members.update({"C0ENG": [ENG, fake.bot_user_id], "D0ENG": [ENG, fake.bot_user_id]})
        yield fake


@pytest.fixture(scope="module")
def bot_settings(tmp_path_factory: pytest.TempPathFactory, vllm_server: str, slack_for_bot: SlackFake) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("slack-socket-mode"),
        generator=GeneratorSettings(backend="openai", base_url=vllm_server, max_model_len=SERVER_MAX_MODEL_LEN),
        slack=SlackSettings(bot_token=BOT_TOKEN, app_token=APP_TOKEN, api_url=slack_for_bot.api_url,
                            update_interval_s=0.3, user_groups={ENG: ["eng"], HR: ["hr"]}),
    )  # fmt: skip


def ingest(settings: Settings) -> None:
    """The documents, ingested into the data directory before the bot opens it (as `kb ingest` would)."""

    async def run() -> None:
        container = await asyncio.to_thread(Container.open, settings)
        try:
            services = await Services.open(container, with_generator=False)
            for name, (group, text) in DOCS.items():
                services.pipeline.submit(name, text, groups=[group])
            await asyncio.to_thread(services.worker.drain)
            statuses = {d.filename: d.status.value for d in container.registry.list_documents()}
            assert statuses == dict.fromkeys(DOCS, "ready"), statuses
        finally:
            await container.aclose()

    asyncio.run(run())


@contextmanager
def bot_running(settings: Settings) -> Iterator[dict[str, Any]]:
    """The bot as `kb slack` opens it (socket_mode_bot) on an event loop of its own in a thread, until the end."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def serve() -> None:
        async with socket_mode_bot(settings) as running:
            outcome["bot"] = running
            await stop.wait()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture that waits for the bot
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="kb-slack-under-test", daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(120)
        loop.close()
    assert not thread.is_alive() and "error" not in outcome, outcome


@pytest.fixture(scope="module")
def bot(bot_settings: Settings, slack_for_bot: SlackFake) -> Iterator[SlackFake]:
    ingest(bot_settings)
    with bot_running(bot_settings) as outcome:
        deadline = time.monotonic() + 300

        def ready() -> bool:  # connected, and the generator started (as /readyz says of `kb serve`)
            assert "error" not in outcome and time.monotonic() < deadline, outcome or "the bot did not start"
            running = outcome.get("bot")
            return running is not None and running.runner.connected and running.services.answers is not None

        while not ready():
            time.sleep(0.2)
        assert outcome["bot"].runner.failure is None
        yield slack_for_bot


def test_a_mention_envelope_is_acked_and_answered_in_its_thread_once(bot: SlackFake) -> None:
    asked = mention("C0ENG", ENG, "What is the deployment codeword?")
    started = time.monotonic()
    envelope = bot.send_envelope("events_api", event_body(asked, "Ev0SOCKET0001"))
    assert bot.wait_ack(envelope, timeout=3) == {"envelope_id": envelope}  # within Slack's 3 seconds
    assert time.monotonic() - started < 3
    # Slack delivers the same event again (a retry, on a new envelope): acked, never answered a second time.
    retry = bot.send_envelope("events_api", event_body(asked, "Ev0SOCKET0001"), retry_attempt=1, retry_reason="timeout")
    assert bot.wait_ack(retry, timeout=3)["envelope_id"] == retry

    placeholder = bot.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == asked["ts"], timeout=30)
    assert placeholder["channel"] == "C0ENG" and placeholder["text"] == "Searching…"
    reply = final_answer(bot, "C0ENG", asked["ts"])
    assert "eng-deploy-runbook.txt" in shown(reply) and "hr-salary-bands.txt" not in shown(reply)
    time.sleep(1)
    in_thread = [p for _, p in bot.calls("chat.postMessage") if p.get("thread_ts") == asked["ts"]]
    assert len(in_thread) == 1, in_thread  # one answer: the placeholder, edited into it


def test_a_slash_command_envelope_is_acked_and_answered_under_the_question(bot: SlackFake) -> None:
    command = bot.command_body("What is the deployment codeword?", ENG, "C0ENG")
    envelope = bot.send_envelope("slash_commands", command, accepts_response_payload=True)
    assert bot.wait_ack(envelope, timeout=3)["envelope_id"] == envelope
    root = bot.wait_for("chat.postMessage", lambda p: p.get("channel") == "C0ENG" and not p.get("thread_ts")
                        and "deployment codeword" in p.get("text", ""), timeout=30)  # fmt: skip
    root_ts = next(m["ts"] for m in bot.messages("C0ENG") if m["text"] == root["text"])
    assert "eng-deploy-runbook.txt" in shown(final_answer(bot, "C0ENG", root_ts))


def test_the_bot_answers_after_slack_drops_its_connection(bot: SlackFake) -> None:
    opened = bot.connections_opened
    bot.drop_connections()
    bot.wait_connected(opened + 1, timeout=60)
    asked = direct_message("D0ENG", ENG, "help")
    envelope = bot.send_envelope("events_api", event_body(asked, "Ev0SOCKET0003"))
    assert bot.wait_ack(envelope, timeout=3)["envelope_id"] == envelope
    said = bot.wait_for("chat.postMessage", lambda p: p.get("channel") == "D0ENG" and p.get("thread_ts") == asked["ts"])
    assert "/kb" in said["text"]


# ---------------------------------------------------------------------------------------------------------------
# `kb slack`, the command

KB = [sys.executable, "-m", "service.cli"]


def kb_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_SLACK__")}
    return {**env, "KB_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200", **settings}


@pytest.mark.parametrize(
    ("tokens", "missing"),
    [({}, "KB_SLACK__BOT_TOKEN and KB_SLACK__APP_TOKEN are not set"),
     ({"KB_SLACK__BOT_TOKEN": BOT_TOKEN}, "KB_SLACK__APP_TOKEN is not set")],
)  # fmt: skip
def test_kb_slack_without_its_tokens_says_which_and_exits_2(
    tmp_path: Path, tokens: dict[str, str], missing: str
) -> None:
    env = kb_env(tmp_path, **tokens)
    ran = subprocess.run([*KB, "slack"], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 2, ran.stderr
    assert missing in " ".join(ran.stderr.split()) and "Traceback" not in ran.stderr
    assert not (tmp_path / "data").exists()  # nothing opened


def test_kb_slack_runs_the_bot_until_sigterm(tmp_path: Path, slack: SlackFake) -> None:
    slack.users[ENG] = {"id": ENG, "name": "eng", "profile": {"email": "eng@example.com"}}
    slack.channel_members["D0ENG"] = [ENG, slack.bot_user_id]
    log_path = tmp_path / "kb-slack.log"
    env = kb_env(tmp_path, KB_SLACK__BOT_TOKEN=BOT_TOKEN, KB_SLACK__APP_TOKEN=APP_TOKEN,
                 KB_SLACK__API_URL=slack.api_url, KB_GENERATOR__ENABLED="false")  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen([*KB, "slack"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        try:
            slack.wait_connected(1, timeout=180)
        except TimeoutError:
            raise AssertionError(f"kb slack did not connect:\n{log_tail(log_path)}") from None
        asked = direct_message("D0ENG", ENG, "When do backups run?")
        envelope = slack.send_envelope("events_api", event_body(asked, "Ev0PROCESS0001"))
        assert slack.wait_ack(envelope, timeout=5)["envelope_id"] == envelope
        placeholder = slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == asked["ts"], timeout=30)
        assert placeholder["channel"] == "D0ENG"
        said = slack.wait_for("chat.update", lambda p: p.get("channel") == "D0ENG", timeout=30)
        assert said["text"] == "kb is starting, try again in a minute."  # the model is off: said in words
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_tail(log_path)
        assert slack.connections == 0
        assert "Traceback" not in log_path.read_text()
    finally:
        stop_process_group(process)
