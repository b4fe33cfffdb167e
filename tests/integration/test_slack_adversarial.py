"""The Slack door tried as a stranger and an attacker would, on the real app under uvicorn with the local Slack
(tests/slack_fake.py) and answers from the session's vLLM server.

Covered: signed requests of shapes Slack never sends (400, never 500, nothing posted), missing or malformed signature
headers, a replayed body under a new timestamp, a body over the limit; requests from another workspace; a payload
claiming a DM in a channel; concurrent retries of one event; documents and questions carrying Slack control sequences
(`<!channel>`, `<@U…>`, disguised links, "@here") in every text the bot posts; a vote forged from another
conversation, and a vote stored with the groups its answer drew on; Slack's rate limit on the final edit; a document
deleted while its answer is written; a follow-up asked while the first answer is still being written."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from kb.settings import AnswerSettings, GeneratorSettings, Settings
from service.app import create_app
from tests.conftest import SERVER_MAX_MODEL_LEN
from tests.integration.test_slack_events import (
    SECRET,
    direct_message,
    final_answer,
    mention,
    new_ts,
    post_signed,
    replies,
    served,
    shown,
    slack_settings,
    wait_until,
)
from tests.slack_fake import SlackFake, event_body, signed_headers

pytestmark = pytest.mark.integration

ENG, HR, BOTH, NOBODY = "U0ENG", "U0HR", "U0BOTH", "U0NOBODY"
PUBLIC_URL = "https://kb.example.com"
INJECTION_NAME = "release @here <!channel>.txt"
INJECTION = (
    b"Release notice for the platform team. <!channel> <!here> @here @channel <@U0HR> read "
    b"<https://evil.example|click here> now. The release codeword is PLUM-HERON-417, and it is *bold* news.\n"
    b"```\nrm -rf / <!everyone>\n```\n"
)
DOCS = {
    "eng-deploy-runbook.txt": ("eng", (b"Deployment runbook. Deploys run on Tuesdays after the canary has been green "
                                       b"for an hour. The deployment codeword is AMBER-FALCON-238.")),
    "hr-salary-bands.txt": ("hr", (b"Salary bands for 2026. Band four starts at 82,000 euros per year. The salary "
                                   b"bands codeword is TEAL-OTTER-552.")),
    INJECTION_NAME: ("eng", INJECTION),
}  # fmt: skip
# What would act in Slack: a special mention, a user mention, a link, or a broadcast word Slack may parse.
ACTIVE = re.compile(r"<[!@#]|<https?:|<mailto:|(?<![\w\u2060])@(?:here|channel|everyone)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackFake]:
    with SlackFake(bot_token="xoxb-test") as fake:
        for user in (ENG, HR, BOTH, NOBODY):
            fake.users[user] = {"id": user, "name": user.lower(), "profile": {"email": f"{user.lower()}@example.com"}}
        fake.channel_members.update({
            "C0ADVMIXED": [BOTH, ENG, fake.bot_user_id], "C0ADVBOTH": [BOTH, fake.bot_user_id],
            "C0ADVENG": [ENG, fake.bot_user_id], "D0ADVENG": [ENG, fake.bot_user_id],
            "D0ADVBOTH": [BOTH, fake.bot_user_id], "D0ADVRACE": [ENG, fake.bot_user_id],
        })  # fmt: skip
        yield fake


def start_kb(settings: Settings, docs: dict[str, tuple[str, bytes]]) -> Iterator[tuple[str, dict[str, str]]]:
    """The app served with `docs` ingested; yields (url, admin headers)."""
    with served(create_app(settings)) as url:
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{url}/readyz").text
            time.sleep(0.5)
        admin = {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}
        for name, (group, text) in docs.items():
            uploaded = httpx.post(f"{url}/v1/documents", files={"files": (name, text, "text/plain")},
                                  data={"groups": group}, headers=admin, timeout=60)  # fmt: skip
            assert uploaded.status_code == 202, uploaded.text
            document_id = uploaded.json()["documents"][0]["document_id"]
            while (status := httpx.get(f"{url}/v1/documents/{document_id}", headers=admin).json()["status"]) != "ready":
                assert status != "failed" and time.monotonic() < deadline, status
                time.sleep(0.3)
        yield url, admin


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory, vllm_server: str, slack: SlackFake) -> Iterator[tuple[str, dict]]:
    """Answers quoted from the sources ("extract"): what a document says reaches Slack word for word."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("slack-adversarial"), public_url=PUBLIC_URL,
        generator=GeneratorSettings(backend="openai", base_url=vllm_server, max_model_len=SERVER_MAX_MODEL_LEN),
        answers=AnswerSettings(mode="extract"), slack=slack_settings(slack),
    )  # fmt: skip
    yield from start_kb(settings, DOCS)


@pytest.fixture(scope="module")
def kb_writing(
    tmp_path_factory: pytest.TempPathFactory, vllm_server: str, slack: SlackFake
) -> Iterator[tuple[str, dict]]:
    """Answers the model writes (streamed, so that something can happen meanwhile)."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("slack-adversarial-writing"), public_url=PUBLIC_URL,
        generator=GeneratorSettings(backend="openai", base_url=vllm_server, max_model_len=SERVER_MAX_MODEL_LEN),
        answers=AnswerSettings(mode="generate"),
        slack=slack_settings(slack).model_copy(update={"update_interval_s": 0.1}),
    )  # fmt: skip
    yield from start_kb(settings, {"eng-deploy-runbook.txt": DOCS["eng-deploy-runbook.txt"]})


def post_event(url: str, event: dict[str, Any], event_id: str | None = None, team_id: str = "T0KB",
               **headers: str) -> httpx.Response:  # fmt: skip
    body = json.dumps(event_body(event, event_id or f"Ev{new_ts().replace('.', '')}", team_id=team_id)).encode()
    return post_signed(url, body, "application/json", **headers)


def post_form(url: str, form: dict[str, Any]) -> httpx.Response:
    return post_signed(url, urlencode(form).encode(), "application/x-www-form-urlencoded")


def posted_in(slack: SlackFake, channel: str) -> list[dict[str, Any]]:
    return [p for m, p in slack.calls() if m.startswith("chat.") and p.get("channel") == channel]


def mrkdwn_objects(blocks: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    if isinstance(blocks, dict):
        if blocks.get("type") == "mrkdwn":
            found.append(blocks)
        for value in blocks.values():
            found += mrkdwn_objects(value) if isinstance(value, (dict, list)) else []
    elif isinstance(blocks, list):
        for value in blocks:
            found += mrkdwn_objects(value)
    return found


def assert_inert(params: dict[str, Any]) -> None:
    """Nothing in a posted or updated message notifies anyone or links anywhere but to kb."""
    texts = [params.get("text") or ""] + [o["text"] for o in mrkdwn_objects(params.get("blocks") or [])]
    for text in texts:
        for link in re.findall(r"<(https?://[^|>]*)", text):
            assert link.startswith(PUBLIC_URL), text
        assert not ACTIVE.search(re.sub(r"<" + re.escape(PUBLIC_URL) + r"[^>]*>", "", text)), text
    assert all(o.get("verbatim") is True for o in mrkdwn_objects(params.get("blocks") or [])), params


# --- the HTTP door ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, content_type", [
    (b"[1, 2]", "application/json"), (b'"x"', "application/json"), (b"null", "application/json"),
    (b"{not json", "application/json"), (b"payload=%5B%5D", "application/x-www-form-urlencoded"),
    (b"payload=null", "application/x-www-form-urlencoded"), (b"payload=%7Bx", "application/x-www-form-urlencoded"),
    (b'{"type":"event_callback","event":"x","event_id":"Ev0SHAPE1","team_id":"T0KB"}', "application/json"),
    ((b'{"type":"event_callback","event":{"type":"app_mention","channel":5,"user":"U0ENG","ts":"1.1","text":"hi"},'
      b'"event_id":"Ev0SHAPE2","team_id":["T0KB"]}'), "application/json"),
    (b'{"type":"block_actions","actions":"x","team":{"id":"T0KB"},"user":{"id":"U0ENG"}}', "application/json"),
    (b'{"type":"block_actions","actions":["x"],"team":{"id":"T0KB"},"user":{"id":"U0ENG"}}', "application/json"),
    (b"\xff\xfe", "application/json"),
])  # fmt: skip
def test_signed_bodies_of_shapes_slack_never_sends_are_400_and_post_nothing(
    kb: tuple[str, dict], slack: SlackFake, body: bytes, content_type: str
) -> None:
    url, _ = kb
    before = len(slack.calls())
    answered = post_signed(url, body, content_type)
    assert answered.status_code in (400, 404), answered.text  # 404: Bolt's "unhandled request", never a 500
    time.sleep(0.3)
    assert not [m for m, _ in slack.calls()[before:] if m.startswith("chat.")]


def test_missing_malformed_replayed_or_huge_requests_are_refused(kb: tuple[str, dict], slack: SlackFake) -> None:
    url, _ = kb
    before = len(slack.calls())
    body = json.dumps(event_body(mention("C0ADVENG", ENG, "What is the deployment codeword?"), "Ev0REPLAY")).encode()
    signed = signed_headers(body, SECRET)
    for headers in (
        {"X-Slack-Signature": signed["X-Slack-Signature"]},  # no timestamp
        {"X-Slack-Request-Timestamp": signed["X-Slack-Request-Timestamp"]},  # no signature
        {**signed, "X-Slack-Request-Timestamp": "not-a-number"},
        {**signed, "X-Slack-Signature": "v0=" + "0" * 64},
        {**signed, "X-Slack-Request-Timestamp": str(int(time.time()) + 1)},  # replayed under a new timestamp
    ):
        refused = httpx.post(f"{url}/slack/events", content=body, headers={"Content-Type": "application/json",
                                                                            **headers})  # fmt: skip
        assert refused.status_code == 401, (headers, refused.text)
    huge = json.dumps(event_body({"type": "app_mention", "text": "x" * (2 << 20)}, "Ev0HUGE")).encode()
    assert post_signed(url, huge, "application/json").status_code == 413
    time.sleep(1)
    assert not [m for m, _ in slack.calls()[before:] if m.startswith("chat.")]


def test_requests_from_another_workspace_are_acknowledged_and_ignored(kb: tuple[str, dict], slack: SlackFake) -> None:
    url, _ = kb
    event = mention("C0ADVENG", ENG, "What is the deployment codeword?")
    assert post_event(url, event, team_id="T0OTHER").status_code == 200
    command = slack.command_body("What is the deployment codeword?", ENG, "C0ADVENG") | {"team_id": "T0OTHER"}
    assert post_form(url, command).status_code == 200
    dm = direct_message("D0ADVENG", ENG, "What is the deployment codeword?")
    assert post_event(url, dm, team_id="T0OTHER").status_code == 200
    time.sleep(2)
    assert not posted_in(slack, "C0ADVENG") and not posted_in(slack, "D0ADVENG")
    assert not [p for m, p in slack.calls("response_url")]


def test_a_payload_claiming_a_direct_message_in_a_channel_gets_the_channels_groups(
    kb: tuple[str, dict], slack: SlackFake
) -> None:
    url, _ = kb
    question = "What is the salary bands codeword?"
    # A "direct message" whose channel is a channel: not a DM, so not answered with the asker's groups.
    claimed = direct_message("C0ADVMIXED", BOTH, question)
    assert post_event(url, claimed).status_code == 200
    # A mention saying channel_type "im" in a channel: the channel's members (ENG: no hr) still bound the answer.
    forged = mention("C0ADVMIXED", BOTH, question) | {"channel_type": "im"}
    assert post_event(url, forged).status_code == 200
    final_answer(slack, "C0ADVMIXED", forged["ts"])
    assert not replies(slack, "C0ADVMIXED", claimed["ts"])
    for params in posted_in(slack, "C0ADVMIXED"):
        assert "TEAL-OTTER" not in json.dumps(params) and "hr-salary-bands" not in json.dumps(params)


def test_concurrent_deliveries_of_one_event_are_answered_once(kb: tuple[str, dict], slack: SlackFake) -> None:
    url, _ = kb
    event = mention("C0ADVENG", ENG, "When do deploys run?")
    statuses: list[int] = []
    barrier = threading.Barrier(3)

    def deliver(retry: int) -> None:
        barrier.wait()
        headers = {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"} if retry else {}
        statuses.append(post_event(url, event, "Ev0CONCURRENT01", **headers).status_code)

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200, 200, 200]
    final_answer(slack, "C0ADVENG", event["ts"])
    time.sleep(1)
    placeholders = [p for _, p in slack.calls("chat.postMessage") if p.get("thread_ts") == event["ts"]]
    assert len(placeholders) == 1, placeholders


# --- what the bot posts ----------------------------------------------------------------------------------------


def test_control_sequences_in_a_document_or_a_question_never_act_in_slack(
    kb: tuple[str, dict], slack: SlackFake
) -> None:
    url, _ = kb
    asked = direct_message("D0ADVENG", ENG, "What is the release codeword in the release notice?")
    assert post_event(url, asked).status_code == 200
    reply = final_answer(slack, "D0ADVENG", asked["ts"])
    assert "PLUM-HERON-417" in shown(reply)  # the quoted document did reach the answer
    for params in posted_in(slack, "D0ADVENG"):
        assert_inert(params)
    # The question, as Slack sends it (its control sequences encoded), echoed as the slash command's thread root.
    question = "<!channel> <!here> @here What is the release codeword? <@U0HR> <https://evil.example|click here>"
    assert post_form(url, slack.command_body(question, ENG, "C0ADVENG")).status_code == 200
    root = slack.wait_for("chat.postMessage", lambda p: p.get("channel") == "C0ADVENG" and "asked:" in p["text"])
    assert root["text"].startswith(f"<@{ENG}> asked: ")
    assert_inert(root | {"text": root["text"].removeprefix(f"<@{ENG}>")})  # the asker's own mention is ours
    root_ts = next(m["ts"] for m in slack.messages("C0ADVENG") if m["text"] == root["text"])
    final_answer(slack, "C0ADVENG", root_ts)
    for params in posted_in(slack, "C0ADVENG"):
        if "asked:" not in (params.get("text") or ""):
            assert_inert(params)


def test_a_vote_from_another_conversation_is_refused(kb: tuple[str, dict], slack: SlackFake) -> None:
    url, admin = kb
    asked = direct_message("D0ADVBOTH", BOTH, "What is the salary bands codeword?")
    assert post_event(url, asked).status_code == 200
    private = final_answer(slack, "D0ADVBOTH", asked["ts"])
    value = next(e["value"] for b in private["blocks"] if b["type"] == "actions" for e in b["elements"])
    # ENG replays the DM answer's button value on a message of a channel ENG is in.
    in_channel = mention("C0ADVENG", ENG, "When do deploys run?")
    assert post_event(url, in_channel).status_code == 200
    public = final_answer(slack, "C0ADVENG", in_channel["ts"])
    before = len(slack.calls("chat.postEphemeral"))
    forged = slack.action_body("kb_feedback_down", value, ENG, "C0ADVENG", public)
    assert post_form(url, {"payload": json.dumps(forged)}).status_code == 200
    time.sleep(2)
    assert not [p for _, p in slack.calls("chat.postEphemeral")[before:] if p.get("user") == ENG]
    stored = httpx.get(f"{url}/v1/feedback", headers=admin).json()["feedback"]
    assert not [f for f in stored if "TEAL-OTTER" in f["answer"] or f["conversation_id"].startswith("slack-T0KB-D0")]


def test_a_vote_is_stored_with_the_groups_its_answer_drew_on(kb: tuple[str, dict], slack: SlackFake) -> None:
    """An administrator limited to some groups reads a vote only when they hold all its groups: a voter holding
    fewer than the answer drew on (they joined the channel later) must not make the answer readable to more."""
    url, admin = kb
    asked = mention("C0ADVBOTH", BOTH, "What is the salary bands codeword?")
    assert post_event(url, asked).status_code == 200
    reply = final_answer(slack, "C0ADVBOTH", asked["ts"])
    assert "TEAL-OTTER" in shown(reply)
    slack.channel_members["C0ADVBOTH"].append(NOBODY)
    joined = {"type": "member_joined_channel", "user": NOBODY, "channel": "C0ADVBOTH", "event_ts": new_ts()}
    assert post_event(url, joined).status_code == 200
    button = next(e for b in reply["blocks"] if b["type"] == "actions" for e in b["elements"]
                  if e["action_id"] == "kb_feedback_down")  # fmt: skip
    vote = slack.action_body("kb_feedback_down", button["value"], NOBODY, "C0ADVBOTH", reply)
    assert post_form(url, {"payload": json.dumps(vote)}).status_code == 200
    slack.wait_for("chat.postEphemeral", lambda p: p.get("user") == NOBODY and "recorded" in p.get("text", ""))
    stored = httpx.get(f"{url}/v1/feedback", headers=admin).json()["feedback"]
    record = next(f for f in stored if f["conversation_id"] == f"slack-T0KB-C0ADVBOTH-{asked['ts']}")
    assert {"eng", "hr"} <= set(record["groups"]), record["groups"]


def test_the_answer_ends_complete_through_slacks_rate_limit(kb: tuple[str, dict], slack: SlackFake) -> None:
    url, _ = kb
    for _ in range(7):  # more than the client's own two retries of one call, partial edits included
        slack.fail_next("chat.update", "ratelimited", status=429, headers={"Retry-After": "1"})
    asked = direct_message("D0ADVENG", ENG, "What is the deployment codeword?")
    assert post_event(url, asked).status_code == 200
    # The fake records refused calls too: wait for the message itself to hold the finished answer.
    wait_until(lambda: "kb_feedback_up" in json.dumps(replies(slack, "D0ADVENG", asked["ts"])[-1:]), timeout=120)
    (reply,) = replies(slack, "D0ADVENG", asked["ts"])
    assert "AMBER-FALCON-238" in shown(reply) and "refused" not in reply["text"]


# --- races, on answers the model writes ------------------------------------------------------------------------


def test_a_document_deleted_while_its_answer_is_written(kb_writing: tuple[str, dict], slack: SlackFake) -> None:
    url, admin = kb_writing
    document_id = httpx.get(f"{url}/v1/documents", headers=admin).json()["documents"][0]["document_id"]
    asked = direct_message("D0ADVRACE", ENG, "What is the deployment codeword?")
    assert post_event(url, asked).status_code == 200
    slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == asked["ts"], timeout=60)
    deleted = httpx.delete(f"{url}/v1/documents/{document_id}", headers=admin)
    assert deleted.status_code in (200, 202, 204), deleted.text

    def settled() -> bool:
        (message,) = replies(slack, "D0ADVRACE", asked["ts"])
        return message["text"] != "Searching…" and "Writing" not in json.dumps(message["blocks"])

    wait_until(settled, timeout=240)
    (message,) = replies(slack, "D0ADVRACE", asked["ts"])
    assert "Traceback" not in shown(message) and "Writing" not in shown(message) and message["text"]
    # Asked again, the document is gone: nothing of it is answered any more.
    again = direct_message("D0ADVRACE", ENG, "What is the deployment codeword?")
    assert post_event(url, again).status_code == 200
    reply = final_answer(slack, "D0ADVRACE", again["ts"], timeout=240)
    assert "eng-deploy-runbook.txt" not in shown(reply)


def test_a_follow_up_asked_while_the_first_answer_is_written(kb_writing: tuple[str, dict], slack: SlackFake) -> None:
    url, admin = kb_writing
    handbook = (
        b"On-call handbook. The on-call rotation changes every Monday at nine. The pager codeword is MINT-LYNX-904."
    )
    uploaded = httpx.post(f"{url}/v1/documents", files={"files": ("eng-oncall.txt", handbook, "text/plain")},
                          data={"groups": "eng"}, headers=admin, timeout=60)  # fmt: skip
    document_id = uploaded.json()["documents"][0]["document_id"]
    wait_until(lambda: httpx.get(f"{url}/v1/documents/{document_id}", headers=admin).json()["status"] == "ready", 120)
    first = direct_message("D0ADVRACE", ENG, "When does the on-call rotation change?")
    assert post_event(url, first).status_code == 200
    slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == first["ts"], timeout=60)
    second = direct_message("D0ADVRACE", ENG, "What is the pager codeword?", thread_ts=first["ts"])
    assert post_event(url, second).status_code == 200

    def finals() -> list[dict[str, Any]]:
        return [m for m in replies(slack, "D0ADVRACE", first["ts"]) if "kb_feedback_up" in json.dumps(m["blocks"])]

    wait_until(lambda: len(finals()) == 2, timeout=300)
    conversation = httpx.get(f"{url}/v1/conversations/slack-T0KB-D0ADVRACE-{first['ts']}", headers=admin).json()
    messages = conversation["messages"]
    assert sorted(m["content"] for m in messages if m["role"] == "user") == sorted(
        ["When does the on-call rotation change?", "What is the pager codeword?"]
    )
    # Each answer's button names its own turn: a vote on one stores that one's question and answer.
    for reply in finals():
        button = next(e for b in reply["blocks"] if b["type"] == "actions" for e in b["elements"]
                      if e["action_id"] == "kb_feedback_up")  # fmt: skip
        turn = json.loads(button["value"])["t"]
        assert messages[turn]["role"] == "assistant" and messages[turn - 1]["role"] == "user"
        assert messages[turn]["content"].split()[0] in reply["text"]


def test_a_slash_question_refused_posts_nothing_in_the_channel(kb: tuple[str, dict], slack: SlackFake) -> None:
    """`/kb` posts the question as the thread's root: a question kb will not take (too long, or over the asker's rate
    limit) is said to the asker alone, and nothing lands in the channel."""
    url, _ = kb
    long_question = "Why " + "really " * 1400 + "?"
    before = len(slack.calls())
    assert post_form(url, slack.command_body(long_question, ENG, "C0ADVENG")).status_code == 200
    told = slack.wait_for("response_url", lambda p: "at most" in str(p.get("text")), timeout=30)
    assert told.get("response_type") == "ephemeral"
    time.sleep(1)
    assert not [p for m, p in slack.calls()[before:] if m == "chat.postMessage" and p.get("channel") == "C0ADVENG"]
