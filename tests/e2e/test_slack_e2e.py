"""The Slack bot end to end, every part real: one `kb serve` process (the in-process vLLM engine, unstructured,
MiniLM, Qdrant Edge, SQLite) with the bot on, documents of two groups uploaded through the API, and the local Slack
(tests/slack_fake.py) on loopback receiving the bot's Web API calls. A mention in a channel, signed as Slack signs
it, ends in a threaded, cited answer from a document of the asker's group, and never from one of another group:
neither the asker's other groups where a channel member lacks them, nor a group the asker does not hold."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.slack_fake import SlackFake, event_body, signed_headers
from tests.support import start_kb_serve, stop_process_group

pytestmark = pytest.mark.e2e

SECRET = "c4ca4238a0b923820dcc509a6f75849b"
BOT_TOKEN = "xoxb-e2e"
PUBLIC_URL = "https://kb.example.com"
ENG, HR, BOTH = "U0ENG", "U0HR", "U0BOTH"
DOCS = {
    "eng-deploy-runbook.txt": ("eng", "Deployment runbook. Deploys run on Tuesdays and Thursdays after the canary "
                                      "has been green for an hour. The deployment codeword is AMBER-FALCON-238."),
    "hr-parental-leave.txt": ("hr", "Parental leave policy. Employees receive twenty weeks of paid parental leave, "
                                    "taken in up to three blocks. The parental leave codeword is MAGENTA-HERON-417."),
}  # fmt: skip
_ts = itertools.count(1)


@dataclass
class Kb:
    url: str
    slack: SlackFake
    admin: dict[str, str]
    document_ids: dict[str, str]


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kb]:
    """One `kb serve` for every case of this module (an engine start takes a minute on a CPU)."""
    data_dir = tmp_path_factory.mktemp("slack-e2e")
    with SlackFake(bot_token=BOT_TOKEN) as slack:
        slack.channel_members.update({
            "C0ENG": [ENG, BOTH, slack.bot_user_id],  # everyone here holds eng
            "C0MIXED": [BOTH, ENG, slack.bot_user_id],  # BOTH holds hr too, ENG does not
        })  # fmt: skip
        for user in (ENG, HR, BOTH):
            slack.users[user] = {"id": user, "name": user.lower(), "profile": {"email": f"{user.lower()}@example.com"}}
        env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}  # see kb.adapters.vllm_engine
        env.update({
            "KB_DATA_DIR": str(data_dir), "KB_PUBLIC_URL": PUBLIC_URL,
            "KB_SLACK__BOT_TOKEN": BOT_TOKEN, "KB_SLACK__SIGNING_SECRET": SECRET, "KB_SLACK__API_URL": slack.api_url,
            "KB_SLACK__USER_GROUPS": json.dumps({ENG: ["eng"], HR: ["hr"], BOTH: ["eng", "hr"]}),
        })  # fmt: skip
        process, url = start_kb_serve(env, data_dir.parent / "serve-slack.log")
        try:
            admin = {"Authorization": f"Bearer {(data_dir / 'admin.key').read_text().strip()}"}
            document_ids = {name: upload(url, admin, name, group, text) for name, (group, text) in DOCS.items()}
            yield Kb(url, slack, admin, document_ids)
        finally:
            stop_process_group(process)


def upload(url: str, admin: dict[str, str], name: str, group: str, text: str) -> str:
    uploaded = httpx.post(f"{url}/v1/documents", files={"files": (name, text.encode(), "text/plain")},
                          data={"groups": group}, headers=admin, timeout=60)  # fmt: skip
    assert uploaded.status_code == 202, uploaded.text
    document_id = uploaded.json()["documents"][0]["document_id"]
    deadline = time.monotonic() + 300
    while (status := httpx.get(f"{url}/v1/documents/{document_id}", headers=admin).json()["status"]) != "ready":
        assert status != "failed" and time.monotonic() < deadline, status
        time.sleep(0.5)
    return document_id


def ask_in_channel(kb: Kb, channel: str, user: str, question: str) -> dict[str, Any]:
    """A mention, signed as Slack signs it; the bot's finished reply in the thread."""
    ts = f"{int(time.time())}.{next(_ts):06d}"
    event = {"type": "app_mention", "user": user, "text": f"<@{kb.slack.bot_user_id}> {question}", "ts": ts,
             "channel": channel, "event_ts": ts}  # fmt: skip
    body = json.dumps(event_body(event, f"Ev{ts.replace('.', '')}")).encode()
    started = time.monotonic()
    acked = httpx.post(f"{kb.url}/slack/events", content=body, timeout=10,
                       headers={"Content-Type": "application/json", **signed_headers(body, SECRET)})  # fmt: skip
    assert acked.status_code == 200 and time.monotonic() - started < 3, acked.text
    placeholder = kb.slack.wait_for("chat.postMessage", lambda p: p.get("thread_ts") == ts, timeout=30)
    assert placeholder["text"] == "Searching…"
    finished = kb.slack.wait_for("chat.update", lambda p: p.get("channel") == channel and p.get("ts") is not None
                                 and "kb_feedback_up" in json.dumps(p.get("blocks") or "")
                                 and reply_of(kb, channel, p["ts"]).get("thread_ts") == ts, timeout=300)  # fmt: skip
    return reply_of(kb, channel, finished["ts"])


def reply_of(kb: Kb, channel: str, ts: str) -> dict[str, Any]:
    return next((m for m in kb.slack.messages(channel) if m["ts"] == ts), {})


def shown(message: dict[str, Any]) -> str:
    return message["text"] + json.dumps(message.get("blocks") or [], ensure_ascii=False)


def test_a_mention_ends_in_a_threaded_cited_answer_from_the_askers_group(kb: Kb) -> None:
    reply = ask_in_channel(kb, "C0ENG", ENG, "What is the deployment codeword?")
    runbook = kb.document_ids["eng-deploy-runbook.txt"]
    sources = next(b["text"]["text"] for b in reply["blocks"] if b["type"] == "section"
                   and b["text"]["text"].startswith("*Sources*"))  # fmt: skip
    assert "eng-deploy-runbook.txt" in sources and f"{PUBLIC_URL}/#doc={runbook}&amp;chunk=" in sources
    answer = " ".join(b["text"]["text"] for b in reply["blocks"] if b["type"] == "section"
                      and not b["text"]["text"].startswith("*Sources*"))  # fmt: skip
    assert "[1" in answer, answer  # cited in the text
    assert "hr-parental-leave.txt" not in shown(reply) and "MAGENTA-HERON" not in shown(reply)


def test_a_channel_answer_never_draws_on_a_group_one_member_lacks(kb: Kb) -> None:
    reply = ask_in_channel(kb, "C0MIXED", BOTH, "What is the parental leave codeword?")
    assert "hr-parental-leave.txt" not in shown(reply) and "MAGENTA-HERON" not in shown(reply)
    assert kb.document_ids["hr-parental-leave.txt"] not in shown(reply)


def test_an_asker_never_gets_another_groups_document(kb: Kb) -> None:
    kb.slack.channel_members["C0HR"] = [HR, kb.slack.bot_user_id]
    reply = ask_in_channel(kb, "C0HR", HR, "What is the deployment codeword?")
    assert "eng-deploy-runbook.txt" not in shown(reply) and "AMBER-FALCON" not in shown(reply)
    assert kb.document_ids["eng-deploy-runbook.txt"] not in shown(reply)
