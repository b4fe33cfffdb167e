"""Files shared with the Slack bot in a direct message, added to kb (service/slack/files.py), end to end: the real
app under uvicorn on loopback (SQLite, Qdrant Edge, MiniLM, the real ingest worker; no generator, which ingest does
not need), requests signed as Slack signs them sent to POST /slack/events, and the bot's Web API calls and file
downloads served by the local Slack (tests/slack_fake.py), which gives a file only for the bot token.

Covered: a markdown file offered in the DM, added by a button click with the group chosen and reported ready; the
offer's choice limited to the user's groups, and a forged click naming another group (or '*') refused; a file over
the upload limit refused, whether Slack states its size or understates it; a user who may not add files told so,
with nothing downloaded; a type kb cannot read refused with the list of those it can; a file someone else shared
refused; `/kb add` adding a recent file of the DM by name, and refusing outside a DM."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn

from kb.models import Document
from kb.settings import GeneratorSettings, IngestSettings, Settings, SlackSettings
from service.app import create_app
from service.slack.files import ACTION_ADD, ACTION_ADD_ALL, ACTION_GROUPS, GROUPS_BLOCK, NOT_ALLOWED, ONLY_IN_DM
from tests.slack_fake import SlackFake, event_body, signed_headers
from tests.support import free_port

pytestmark = pytest.mark.integration

SECRET = "4a8a08f09d37b73795649038408b5f33"
BOT_TOKEN = "xoxb-files-test"
ALICE, BOB = "U0ALICE", "U0BOB"  # Alice holds staff and ops, and ops may add files; Bob holds staff only
ALICE_DM, BOB_DM = "D0ALICE", "D0BOB"
LIMIT = 4096  # KB_INGEST__MAX_UPLOAD_BYTES here
HANDBOOK = (
    b"# Onboarding handbook\n\nNew starters collect their badge from the front desk in building C on their first day."
    b"\n\n## Laptops\n\nLaptops are issued by the service desk; the onboarding codeword is HAZEL-KESTREL-417.\n"
)
_ids = itertools.count(1)


def new_ts() -> str:
    return f"{int(time.time())}.{next(_ids):06d}"


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackFake]:
    with SlackFake(bot_token=BOT_TOKEN) as fake:
        for user in (ALICE, BOB):
            fake.users[user] = {"id": user, "name": user.lower(), "profile": {"email": f"{user.lower()}@example.com"}}
        fake.channel_members.update({ALICE_DM: [ALICE, fake.bot_user_id], BOB_DM: [BOB, fake.bot_user_id]})
        yield fake


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, slack: SlackFake) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("slack-files"),
        generator=GeneratorSettings(enabled=False),
        ingest=IngestSettings(max_upload_bytes=LIMIT),
        slack=SlackSettings(bot_token=BOT_TOKEN, signing_secret=SECRET, api_url=slack.api_url,
                            user_groups={ALICE: ["staff", "ops"], BOB: ["staff"]}, ingest_groups=["ops"]),
    )  # fmt: skip


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[Any]:
    """The app under uvicorn in a thread of its own (its event loop runs the bot's work while a test waits)."""
    application = create_app(settings, with_generator=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, name="kb-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.1)
    application.state.url = f"http://127.0.0.1:{port}"
    try:
        yield application
    finally:
        server.should_exit = True
        thread.join(60)


def post_signed(app: Any, body: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type, **signed_headers(body, SECRET)}
    answered = httpx.post(f"{app.state.url}/slack/events", content=body, headers=headers, timeout=10)
    assert answered.status_code == 200, answered.text


def share(app: Any, slack: SlackFake, user: str, channel: str, files: dict[str, tuple[str, bytes]],
          **stated: Any) -> dict[str, Any]:  # fmt: skip
    """`user` drops `files` (id -> (name, bytes)) in the DM; `stated` overrides what Slack says of each (size)."""
    shared = []
    for file_id, (name, data) in files.items():
        info = {"id": file_id, "name": name, "user": user, "mimetype": "application/octet-stream", **stated}
        slack.files[file_id] = (info, data)
        shared.append({"id": file_id, "name": name, "size": len(data), "user": user, **stated})
    event = {"type": "message", "subtype": "file_share", "channel_type": "im", "channel": channel, "user": user,
             "text": "", "ts": new_ts(), "event_ts": new_ts(), "files": shared}  # fmt: skip
    post_signed(app, json.dumps(event_body(event, f"Ev{next(_ids):08d}")).encode(), "application/json")
    return event


def offer_of(slack: SlackFake, channel: str, needle: str) -> dict[str, Any]:
    """The bot's offer in the DM whose blocks hold `needle` (a file's id, on its button, or its name)."""
    slack.wait_for("chat.postMessage", lambda p: p.get("channel") == channel and needle in json.dumps(p), timeout=30)
    return next(m for m in reversed(slack.messages(channel)) if needle in json.dumps(m.get("blocks")))


def click(app: Any, slack: SlackFake, user: str, channel: str, message: dict[str, Any], value: str,
          groups: list[str] | None, action_id: str = ACTION_ADD) -> None:  # fmt: skip
    """A click on the offer's button with `groups` ticked (None: the click carries no choice), as Slack posts it."""
    payload = slack.action_body(action_id, value, user, channel, message)
    if groups is not None:
        ticked = [{"text": {"type": "plain_text", "text": g}, "value": g} for g in groups]
        payload["state"] = {"values": {GROUPS_BLOCK: {ACTION_GROUPS: {"type": "checkboxes",
                                                                      "selected_options": ticked}}}}  # fmt: skip
    post_signed(app, urlencode({"payload": json.dumps(payload)}).encode(), "application/x-www-form-urlencoded")


def reply(slack: SlackFake, channel: str, *words: str, timeout: float = 60) -> str:
    """The text of the bot's first message in `channel` containing every one of `words`."""
    said = slack.wait_for("chat.postMessage",
                          lambda p: p.get("channel") == channel and all(w in str(p.get("text")) for w in words),
                          timeout=timeout)  # fmt: skip
    return str(said["text"])


def posted(slack: SlackFake, channel: str) -> int:
    """How many messages the bot has posted in `channel` so far."""
    return len([p for _, p in slack.calls("chat.postMessage") if p.get("channel") == channel])


def said_after(slack: SlackFake, channel: str, before: int, timeout: float = 60) -> str:
    """The text of the bot's next message in `channel` after the first `before` ones."""
    deadline = time.monotonic() + timeout
    while (texts := [str(p.get("text")) for _, p in slack.calls("chat.postMessage") if p.get("channel") == channel])[
        before:
    ] == []:
        assert time.monotonic() < deadline, f"no message in {channel} after {texts}"
        time.sleep(0.1)
    return texts[before]


def documents(app: Any, name: str) -> list[Document]:
    return [d for d in app.state.services.container.registry.list_documents() if d.filename == name]


def downloads(slack: SlackFake, file_id: str) -> int:
    return len([p for _, p in slack.calls("files-pri") if p.get("file") == file_id])


def test_a_shared_markdown_file_is_added_with_the_chosen_group_and_reported_ready(
    app: Any, slack: SlackFake, settings: Settings
) -> None:
    share(app, slack, ALICE, ALICE_DM, {"F0HANDBOOK": ("onboarding-handbook.md", HANDBOOK)})
    offer = offer_of(slack, ALICE_DM, "F0HANDBOOK")
    choice = next(e for b in offer["blocks"] if b.get("block_id") == GROUPS_BLOCK for e in b["elements"])
    assert [o["value"] for o in choice["options"]] == ["staff", "ops"]  # Alice's groups, and only hers

    click(app, slack, ALICE, ALICE_DM, offer, "F0HANDBOOK", ["ops"])
    said = reply(slack, ALICE_DM, "onboarding-handbook.md", "ready", timeout=240)
    [document] = documents(app, "onboarding-handbook.md")
    assert document.status.value == "ready" and document.groups == ["ops"]
    assert said == f"onboarding-handbook.md is ready ({document.chunks} chunk{'' if document.chunks == 1 else 's'})."
    assert document.metadata == {"source": "slack", "slack_user": ALICE, "slack_file": "F0HANDBOOK"}
    blob = app.state.services.container.blobs.read(app.state.services.pipeline.original_key(document))
    assert blob == HANDBOOK  # the bytes Slack served for the bot token
    # The offer's buttons are gone once clicked, so that a second click does not add the file twice.
    updated = next(m for m in slack.messages(ALICE_DM) if m["ts"] == offer["ts"])
    assert ACTION_ADD not in json.dumps(updated["blocks"]) and "ops" in updated["text"]
    # Searchable by a reader of ops, and not by one of staff alone.
    admin = {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}
    for groups, expected in ((["ops"], True), (["staff"], False)):
        found = httpx.post(f"{app.state.url}/v1/search", headers=admin, timeout=60,
                           json={"query": "onboarding codeword", "filters": {"groups": groups}}).json()  # fmt: skip
        hit = any(p["filename"] == "onboarding-handbook.md" and "HAZEL-KESTREL-417" in p["text"]
                  for p in found["passages"])  # fmt: skip
        assert hit is expected, (groups, found)


def test_a_group_the_user_does_not_hold_cannot_be_chosen(app: Any, slack: SlackFake) -> None:
    share(app, slack, ALICE, ALICE_DM, {"F0FORGED": ("forged-audience.md", b"# Forged\n\nThis must not be added.\n")})
    offer = offer_of(slack, ALICE_DM, "F0FORGED")
    for forged in (["finance"], ["ops", "finance"], ["*"]):
        before = posted(slack, ALICE_DM)
        click(app, slack, ALICE, ALICE_DM, offer, "F0FORGED", forged)
        assert said_after(slack, ALICE_DM, before) == (
            f"Nothing was added: you can only share files with your own groups (staff, ops), not with {forged[-1]}."
        )
    before = posted(slack, ALICE_DM)
    click(app, slack, ALICE, ALICE_DM, offer, "F0FORGED", [])
    assert (
        said_after(slack, ALICE_DM, before) == "Nothing was added: choose at least one group to share the files with."
    )
    assert documents(app, "forged-audience.md") == [] and downloads(slack, "F0FORGED") == 0


def test_a_file_over_the_upload_limit_is_refused_with_the_reason(app: Any, slack: SlackFake) -> None:
    big = b"# Big\n\n" + b"All work and no play makes a dull report. " * 200  # over LIMIT
    share(app, slack, ALICE, ALICE_DM, {"F0BIG": ("big-report.md", big)})
    offer = offer_of(slack, ALICE_DM, "big-report.md")
    assert "too large, kb's limit is 4,096 bytes" in json.dumps(offer["blocks"])
    assert ACTION_ADD not in json.dumps(offer["blocks"])  # no button for it
    click(app, slack, ALICE, ALICE_DM, offer, "F0BIG", ["staff"])  # a click forged anyway
    said = reply(slack, ALICE_DM, "big-report.md can't be added")
    assert said == f"big-report.md can't be added: it is {len(big):,} bytes, over kb's limit of 4,096 bytes"
    assert downloads(slack, "F0BIG") == 0

    # Slack understates the size: the download itself is cut off at the limit.
    share(app, slack, ALICE, ALICE_DM, {"F0SLY": ("understated.md", big)}, size=100)
    click(app, slack, ALICE, ALICE_DM, offer_of(slack, ALICE_DM, "F0SLY"), "F0SLY", ["staff"])
    assert (
        reply(slack, ALICE_DM, "understated.md can't")
        == "understated.md can't be added: it is over kb's limit of 4,096 bytes"
    )
    assert documents(app, "big-report.md") == [] and documents(app, "understated.md") == []


def test_a_user_who_may_not_add_files_is_told_why_and_nothing_is_added(app: Any, slack: SlackFake) -> None:
    share(app, slack, BOB, BOB_DM, {"F0BOB": ("bobs-notes.md", b"# Notes\n\nBob's notes.\n")})
    assert reply(slack, BOB_DM, "can't add files") == NOT_ALLOWED
    assert all(ACTION_ADD not in json.dumps(m.get("blocks")) for m in slack.messages(BOB_DM))  # no offer
    # A click forged all the same is refused too.
    before = posted(slack, BOB_DM)
    click(app, slack, BOB, BOB_DM, {"ts": new_ts(), "blocks": []}, "F0BOB", ["staff"])
    assert said_after(slack, BOB_DM, before) == NOT_ALLOWED
    before = posted(slack, BOB_DM)
    post_signed(app, urlencode(slack.command_body("add", BOB, BOB_DM)).encode(), "application/x-www-form-urlencoded")
    assert said_after(slack, BOB_DM, before) == NOT_ALLOWED
    assert documents(app, "bobs-notes.md") == [] and downloads(slack, "F0BOB") == 0


def test_a_type_kb_cannot_read_is_refused_with_the_supported_list(app: Any, slack: SlackFake) -> None:
    archive = gzip.compress(b"a tarball kb does not unpack " * 20)
    share(app, slack, ALICE, ALICE_DM, {"F0BIN": ("tool.bin", archive)})
    click(app, slack, ALICE, ALICE_DM, offer_of(slack, ALICE_DM, "F0BIN"), "F0BIN", ["staff"])
    said = reply(slack, ALICE_DM, "tool.bin can't be added")
    assert "kb cannot read this type of file (application/gzip). It reads: " in said
    assert all(extension in said for extension in (".pdf", ".docx", ".md", ".txt", ".html", ".zip"))
    assert documents(app, "tool.bin") == []


def test_a_file_someone_else_shared_is_refused(app: Any, slack: SlackFake) -> None:
    slack.files["F0THEIRS"] = ({"id": "F0THEIRS", "name": "theirs.md", "user": BOB}, b"# Theirs\n\nBob's file.\n")
    share(app, slack, ALICE, ALICE_DM, {"F0MINE": ("mine.md", b"# Mine\n\nAlice's file.\n")})
    click(app, slack, ALICE, ALICE_DM, offer_of(slack, ALICE_DM, "F0MINE"), "F0THEIRS", ["staff"])
    assert reply(slack, ALICE_DM, "theirs.md") == "theirs.md can't be added: it is not a file you shared"
    assert documents(app, "theirs.md") == [] and downloads(slack, "F0THEIRS") == 0


def test_kb_add_adds_a_recent_file_of_the_dm_by_name(app: Any, slack: SlackFake) -> None:
    travel = b"# Travel policy\n\nTrains are booked through the travel desk; the travel codeword is OLIVE-HERON-88.\n"
    event = share(app, slack, ALICE, ALICE_DM, {"F0TRAVEL": ("travel-policy.md", travel)})
    offer_of(slack, ALICE_DM, "F0TRAVEL")
    # Slack's record of the DM (conversations.history): what /kb add reads to find the files.
    history = [
        {"type": "message", "user": ALICE, "ts": event["ts"], "files": event["files"]},
        {"type": "message", "user": BOB, "ts": new_ts(), "files": [{"id": "F0THEIRS", "name": "theirs.md"}]},
    ]
    slack.add_method("conversations.history", lambda params: {"messages": history, "has_more": False})

    command = slack.command_body("add travel to staff", ALICE, ALICE_DM)
    post_signed(app, urlencode(command).encode(), "application/x-www-form-urlencoded")
    reply(slack, ALICE_DM, "travel-policy.md", "ready", timeout=240)
    [document] = documents(app, "travel-policy.md")
    assert document.groups == ["staff"] and document.status.value == "ready"
    assert downloads(slack, "F0THEIRS") == 0

    before = posted(slack, ALICE_DM)
    post_signed(app, urlencode(slack.command_body("add travel to finance", ALICE, ALICE_DM)).encode(),
                "application/x-www-form-urlencoded")  # fmt: skip
    assert said_after(slack, ALICE_DM, before).endswith("not with finance.")

    post_signed(app, urlencode(slack.command_body("add nothing-like-this", ALICE, ALICE_DM)).encode(),
                "application/x-www-form-urlencoded")  # fmt: skip
    assert "I found no file named like “nothing-like-this”" in reply(slack, ALICE_DM, "nothing-like-this")

    post_signed(app, urlencode(slack.command_body("add", ALICE, "C0GENERAL")).encode(),
                "application/x-www-form-urlencoded")  # fmt: skip
    responded = slack.wait_for("response_url", lambda p: p.get("text") == ONLY_IN_DM, timeout=30)
    assert responded["response_type"] == "ephemeral"


def test_add_all_adds_every_file_of_the_offer(app: Any, slack: SlackFake) -> None:
    files = {"F0ONE": ("one.md", b"# One\n\nThe first of two files.\n"),
             "F0TWO": ("two.md", b"# Two\n\nThe second of two files.\n")}  # fmt: skip
    share(app, slack, ALICE, ALICE_DM, files)
    offer = offer_of(slack, ALICE_DM, "F0TWO")
    click(app, slack, ALICE, ALICE_DM, offer, "F0ONE,F0TWO", ["staff", "ops"], action_id=ACTION_ADD_ALL)
    for name in ("one.md", "two.md"):
        reply(slack, ALICE_DM, f"{name} is ready", timeout=240)
        assert documents(app, name)[0].groups == ["staff", "ops"]
