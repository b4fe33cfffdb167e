"""The Slack bot over the HTTP Events API, on the real app served by uvicorn on loopback (SQLite, Qdrant Edge,
MiniLM, answers from the session's vLLM server): requests signed exactly as Slack signs them go to POST
/slack/events, and the bot's Web API calls go to the local Slack (tests/slack_fake.py), which records them.

Covered: url_verification; a mention, a direct message and `/kb question` answered in a thread ("Searching…", then
the answer with its sources and 👍/👎); a follow-up continuing the thread's conversation; a retried event answered
once; forged and stale requests refused (401) with nothing posted; a vote stored as the web page's are; an unmapped
user getting no documents; a channel answer limited to what every member may read; and, on an app whose generator
is off, "kb is starting" and the per-user rate limit in words."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn

from kb.settings import AnswerSettings, GeneratorSettings, Settings, SlackSettings
from service.app import create_app
from tests.conftest import SERVER_MAX_MODEL_LEN
from tests.slack_fake import SlackFake, event_body, signed_headers
from tests.support import free_port

pytestmark = pytest.mark.integration

SECRET = "8f14e45fceea167a5a36dedd4bea2543"
BOT_TOKEN = "xoxb-test"
PUBLIC_URL = "https://kb.example.com"
ENG, HR, BOTH, NOBODY = "U0ENG", "U0HR", "U0BOTH", "U0NOBODY"
DOCS = {
    "eng-deploy-runbook.txt": ("eng", b"Deployment runbook. Deploys run on Tuesdays after the canary has been green "
                                      b"for an hour. The deployment codeword is AMBER-FALCON-238."),
    "hr-salary-bands.txt": ("hr", b"Salary bands for 2026. Band four starts at 82,000 euros per year. The salary "
                                  b"bands codeword is TEAL-OTTER-552."),
}  # fmt: skip
NO_INFORMATION = "no information"
STARTING = "kb is starting, try again in a minute."
_ts = itertools.count(1)


def new_ts() -> str:
    return f"{int(time.time())}.{next(_ts):06d}"


@contextmanager
def served(app: Any) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1, in a thread of its own (its own event loop, where the bot's work runs)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, name="kb-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def slack_settings(slack: SlackFake, **overrides: Any) -> SlackSettings:
    return SlackSettings(
        bot_token=BOT_TOKEN, signing_secret=SECRET, api_url=slack.api_url, update_interval_s=0.3,
        user_groups={ENG: ["eng"], HR: ["hr"], BOTH: ["eng", "hr"]}, **overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackFake]:
    with SlackFake(bot_token=BOT_TOKEN) as fake:
        for user in (ENG, HR, BOTH, NOBODY):
            fake.users[user] = {"id": user, "name": user.lower(), "profile": {"email": f"{user.lower()}@example.com"}}
        fake.channel_members.update({
            "C0ENG": [ENG, BOTH, fake.bot_user_id],  # everyone here holds eng
            "C0MIXED": [BOTH, ENG, fake.bot_user_id],  # BOTH holds hr, ENG does not: no hr here
            "D0ENG": [ENG, fake.bot_user_id], "D0BOTH": [BOTH, fake.bot_user_id],
            "D0NOBODY": [NOBODY, fake.bot_user_id],
        })  # fmt: skip
        yield fake


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, vllm_server: str, slack: SlackFake) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("slack"),
        generator=GeneratorSettings(backend="openai", base_url=vllm_server, max_model_len=SERVER_MAX_MODEL_LEN),
        slack=slack_settings(slack), public_url=PUBLIC_URL,
    )


@pytest.fixture(scope="module")
def kb(settings: Settings) -> Iterator[str]:
    with served(create_app(settings)) as url:
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{url}/readyz").text
            time.sleep(0.5)
        admin = {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}
        for name, (group, text) in DOCS.items():
            uploaded = httpx.post(f"{url}/v1/documents", files={"files": (name, text, "text/plain")},
                                  data={"groups": group}, headers=admin, timeout=60)  # fmt: skip
            assert uploaded.status_code == 202, uploaded.text
            document_id = uploaded.json()["documents"][0]["document_id"]
            while (status := httpx.get(f"{url}/v1/documents/{document_id}", headers=admin).json()["status"]) != "ready":
                assert status != "failed" and time.monotonic() < deadline, status
                time.sleep(0.3)
        yield url


def post_signed(url: str, body: bytes, content_type: str, secret: str = SECRET, timestamp: int | None = None,
                **headers: str) -> httpx.Response:  # fmt: skip
    sent = {"Content-Type": content_type, **signed_headers(body, secret, timestamp), **headers}
    return httpx.post(f"{url}/slack/events", content=body, headers=sent, timeout=10)


def post_event(url: str, event: dict[str, Any], event_id: str | None = None, **headers: str) -> httpx.Response:
    body = json.dumps(event_body(event, event_id or f"Ev{new_ts().replace('.', '')}")).encode()
    return post_signed(url, body, "application/json", **headers)


def mention(channel: str, user: str, text: str, thread_ts: str | None = None) -> dict[str, Any]:
    event = {"type": "app_mention", "user": user, "text": f"<@{SlackFake.bot_user_id}> {text}", "ts": new_ts(),
             "channel": channel, "event_ts": new_ts()}  # fmt: skip
    return event | ({"thread_ts": thread_ts} if thread_ts else {})


def direct_message(channel: str, user: str, text: str, thread_ts: str | None = None) -> dict[str, Any]:
    event = {"type": "message", "channel_type": "im", "user": user, "text": text, "ts": new_ts(), "channel": channel,
             "event_ts": new_ts()}  # fmt: skip
    return event | ({"thread_ts": thread_ts} if thread_ts else {})


def final_answer(slack: SlackFake, channel: str, thread_ts: str, timeout: float = 180) -> dict[str, Any]:
    """The bot's reply in the thread once it carries the 👍/👎 buttons (the answer is complete)."""
    def in_thread(ts: str) -> bool:
        return any(m["ts"] == ts and m.get("thread_ts") == thread_ts for m in slack.messages(channel))

    def done(params: dict[str, Any]) -> bool:
        return (params.get("channel") == channel and "kb_feedback_up" in json.dumps(params.get("blocks") or "")
                and in_thread(params.get("ts", "")))  # fmt: skip

    updated = slack.wait_for("chat.update", done, timeout=timeout)
    return next(m for m in slack.messages(channel) if m["ts"] == updated["ts"])


def wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def replies(slack: SlackFake, channel: str, thread_ts: str) -> list[dict[str, Any]]:
    return [m for m in slack.messages(channel) if m.get("thread_ts") == thread_ts]


def shown(message: dict[str, Any]) -> str:
    """Everything a reader sees of a message: its text and its blocks."""
    return message["text"] + json.dumps(message.get("blocks") or [], ensure_ascii=False)


def document_ids(kb: str, settings: Settings) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}
    listed = httpx.get(f"{kb}/v1/documents", headers=admin).json()["documents"]
    return {d["filename"]: d["document_id"] for d in listed}


def test_url_verification_echoes_the_challenge(kb: str) -> None:
    body = json.dumps({"token": "unused", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                       "type": "url_verification"}).encode()  # fmt: skip
    answered = post_signed(kb, body, "application/json")
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


def test_a_mention_is_answered_in_its_thread_with_sources_linking_to_the_page(
    kb: str, slack: SlackFake, settings: Settings
) -> None:
    event = mention("C0ENG", ENG, "What is the deployment codeword?")
    started = time.monotonic()
    acked = post_event(kb, event)
    assert acked.status_code == 200 and time.monotonic() - started < 3, acked.text  # Slack's 3 seconds
    placeholder = slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == event["ts"], timeout=30)
    assert placeholder["channel"] == "C0ENG" and placeholder["text"] == "Searching…"
    reply = final_answer(slack, "C0ENG", event["ts"])
    runbook = document_ids(kb, settings)["eng-deploy-runbook.txt"]
    assert "eng-deploy-runbook.txt" in shown(reply) and f"{PUBLIC_URL}/#doc={runbook}&amp;chunk=" in shown(reply)
    assert "hr-salary-bands.txt" not in shown(reply)
    assert len(replies(slack, "C0ENG", event["ts"])) == 1  # the placeholder became the answer
    # Edits while the model wrote (if any) show the text so far, without buttons; only the final one has them.
    edits = [p for _, p in slack.calls("chat.update") if p.get("ts") == reply["ts"]]
    assert edits and all(block["type"] != "actions" for p in edits[:-1] for block in p.get("blocks") or [])


def test_a_direct_message_is_answered_in_a_thread_and_a_reply_there_continues_the_conversation(
    kb: str, slack: SlackFake, settings: Settings
) -> None:
    asked = direct_message("D0ENG", ENG, "What is the deployment codeword?")
    assert post_event(kb, asked).status_code == 200
    first = final_answer(slack, "D0ENG", asked["ts"])
    assert "eng-deploy-runbook.txt" in shown(first)

    follow_up = direct_message("D0ENG", ENG, "On which days do deploys run?", thread_ts=asked["ts"])
    assert post_event(kb, follow_up).status_code == 200
    slack.wait_for("chat.update", lambda p: p.get("ts") != first["ts"] and p.get("channel") == "D0ENG"
                   and "kb_feedback_up" in json.dumps(p.get("blocks") or ""))  # fmt: skip
    admin = {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}
    conversation = httpx.get(f"{kb}/v1/conversations/slack-T0KB-D0ENG-{asked['ts']}", headers=admin)
    assert conversation.status_code == 200, conversation.text
    turns = [(m["role"], m["content"]) for m in conversation.json()["messages"]]
    assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0][1] == "What is the deployment codeword?" and turns[2][1] == "On which days do deploys run?"


def test_the_slash_command_posts_the_question_and_answers_in_its_thread(kb: str, slack: SlackFake) -> None:
    body = urlencode(slack.command_body("What is the deployment codeword?", ENG, "C0ENG")).encode()
    started = time.monotonic()
    acked = post_signed(kb, body, "application/x-www-form-urlencoded")
    assert acked.status_code == 200 and time.monotonic() - started < 3, acked.text
    root = slack.wait_for("chat.postMessage", lambda p: p.get("channel") == "C0ENG" and not p.get("thread_ts")
                          and "deployment codeword" in p.get("text", ""), timeout=30)  # fmt: skip
    assert root["text"] == f"<@{ENG}> asked: What is the deployment codeword?"
    root_ts = next(m["ts"] for m in slack.messages("C0ENG") if m["text"] == root["text"])
    assert "eng-deploy-runbook.txt" in shown(final_answer(slack, "C0ENG", root_ts))


def test_a_retried_event_is_answered_once(kb: str, slack: SlackFake) -> None:
    event = mention("C0ENG", ENG, "When do deploys run?")
    event_id = "Ev0RETRIED0001"
    assert post_event(kb, event, event_id).status_code == 200
    retry = post_event(kb, event, event_id, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status_code == 200
    final_answer(slack, "C0ENG", event["ts"])
    again = post_event(kb, event, event_id, **{"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_timeout"})
    assert again.status_code == 200
    time.sleep(2)  # a second answer would have posted its placeholder by now
    posted = [p for _, p in slack.calls("chat.postMessage") if p.get("thread_ts") == event["ts"]]
    assert len(posted) == 1, posted


@pytest.mark.parametrize("forgery", ["wrong secret", "stale", "unsigned", "altered body"])
def test_forged_or_stale_requests_are_refused_and_nothing_is_posted(kb: str, slack: SlackFake, forgery: str) -> None:
    channel = f"C0FORGED{forgery.replace(' ', '').upper()}"
    body = json.dumps(event_body(mention(channel, ENG, "What is the deployment codeword?"), f"Ev{new_ts()}")).encode()
    if forgery == "wrong secret":
        refused = post_signed(kb, body, "application/json", secret="not-the-signing-secret")
    elif forgery == "stale":
        refused = post_signed(kb, body, "application/json", timestamp=int(time.time()) - 6 * 60)
    elif forgery == "unsigned":
        refused = httpx.post(f"{kb}/slack/events", content=body, headers={"Content-Type": "application/json"})
    else:
        headers = signed_headers(body, SECRET)
        refused = httpx.post(f"{kb}/slack/events", content=body.replace(b"codeword", b"password"),
                             headers={"Content-Type": "application/json", **headers})  # fmt: skip
    assert refused.status_code == 401, refused.text
    time.sleep(1)
    assert not [p for _, p in slack.calls() if p.get("channel") == channel]


def test_a_vote_is_stored_with_the_question_answer_and_sources(kb: str, slack: SlackFake, settings: Settings) -> None:
    event = mention("C0ENG", BOTH, "What is the deployment codeword?")
    assert post_event(kb, event).status_code == 200
    reply = final_answer(slack, "C0ENG", event["ts"])
    button = next(e for b in reply["blocks"] if b["type"] == "actions" for e in b["elements"]
                  if e["action_id"] == "kb_feedback_down")  # fmt: skip
    payload = slack.action_body("kb_feedback_down", button["value"], ENG, "C0ENG", reply)
    clicked = post_signed(kb, urlencode({"payload": json.dumps(payload)}).encode(), "application/x-www-form-urlencoded")
    assert clicked.status_code == 200, clicked.text
    thanks = slack.wait_for("chat.postEphemeral", lambda p: p.get("user") == ENG and "recorded" in p.get("text", ""))
    assert thanks["channel"] == "C0ENG"

    admin = {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}
    listed = httpx.get(f"{kb}/v1/feedback", params={"rating": "down"}, headers=admin).json()["feedback"]
    record = next(f for f in listed if f["conversation_id"] == f"slack-T0KB-C0ENG-{event['ts']}")
    assert record["source"] == "slack" and record["principal_id"] == f"slack:T0KB:{ENG}"
    assert record["question"] == "What is the deployment codeword?" and record["groups"] == ["eng"]
    assert record["answer"] and record["answer"].split()[0] in reply["text"]
    assert "eng-deploy-runbook.txt" in {c["filename"] for c in record["citations"]}
    # The same click again is the same vote, not a second one.
    thanked = len(slack.calls("chat.postEphemeral"))
    assert post_signed(kb, urlencode({"payload": json.dumps(payload)}).encode(),
                       "application/x-www-form-urlencoded").status_code == 200  # fmt: skip
    wait_until(lambda: len(slack.calls("chat.postEphemeral")) > thanked)
    listed = httpx.get(f"{kb}/v1/feedback", params={"rating": "down"}, headers=admin).json()["feedback"]
    assert len([f for f in listed if f["conversation_id"] == record["conversation_id"]]) == 1


def test_an_unmapped_user_gets_no_documents(kb: str, slack: SlackFake) -> None:
    asked = direct_message("D0NOBODY", NOBODY, "What is the deployment codeword?")
    assert post_event(kb, asked).status_code == 200
    reply = final_answer(slack, "D0NOBODY", asked["ts"])
    assert NO_INFORMATION in reply["text"]
    assert "AMBER-FALCON" not in shown(reply) and ".txt" not in shown(reply)


def test_a_channel_answer_never_cites_what_one_of_its_members_may_not_read(kb: str, slack: SlackFake) -> None:
    question = "What is the salary bands codeword?"
    # In a direct message BOTH reads the hr document: the question does find it...
    alone = direct_message("D0BOTH", BOTH, question)
    assert post_event(kb, alone).status_code == 200
    assert "hr-salary-bands.txt" in shown(final_answer(slack, "D0BOTH", alone["ts"]))
    # ...but in a channel where ENG (no hr) reads along, the answer may not draw on it.
    in_channel = mention("C0MIXED", BOTH, question)
    assert post_event(kb, in_channel).status_code == 200
    reply = final_answer(slack, "C0MIXED", in_channel["ts"])
    for message in replies(slack, "C0MIXED", in_channel["ts"]):
        assert "hr-salary-bands.txt" not in shown(message) and "TEAL-OTTER" not in shown(message)
    assert reply["text"]


@pytest.fixture(scope="module")
def kb_starting(tmp_path_factory: pytest.TempPathFactory, slack: SlackFake) -> Iterator[str]:
    """A second kb whose generator is off (as while the engine loads), with a rate limit of two questions."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("slack-starting"), generator=GeneratorSettings(enabled=False),
                        answers=AnswerSettings(), slack=slack_settings(slack, asks_per_minute=2))  # fmt: skip
    with served(create_app(settings)) as url:
        yield url


def test_while_the_generator_starts_the_bot_says_so_and_the_rate_limit_is_in_words(
    kb_starting: str, slack: SlackFake
) -> None:
    first, second, third = (mention("C0ENG", HR, f"Question {n}?") for n in range(3))
    for event in (first, second):
        assert post_event(kb_starting, event).status_code == 200
        slack.wait_for("chat.update", lambda p, ts=event["ts"]: p.get("text") == STARTING and any(
            m["ts"] == p["ts"] and m.get("thread_ts") == ts for m in slack.messages("C0ENG")))  # fmt: skip
    assert post_event(kb_starting, third).status_code == 200
    limited = slack.wait_for("chat.postEphemeral", lambda p: p.get("thread_ts") == third["ts"])
    assert limited["user"] == HR and "try again in" in limited["text"] and "Traceback" not in limited["text"]
    assert not replies(slack, "C0ENG", third["ts"])


def test_the_route_is_absent_without_a_signing_secret(tmp_path: Path, slack: SlackFake) -> None:
    settings = Settings(data_dir=tmp_path, generator=GeneratorSettings(enabled=False),
                        slack=SlackSettings(bot_token=BOT_TOKEN, api_url=slack.api_url))  # fmt: skip
    with served(create_app(settings)) as url:
        body = json.dumps({"type": "url_verification", "challenge": "x"}).encode()
        assert post_signed(url, body, "application/json", secret="anything").status_code == 404
