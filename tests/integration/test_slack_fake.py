"""The local Slack (tests/slack_fake.py) driven by slack-sdk itself: each Web API method through AsyncWebClient with
the fake's base_url, Socket Mode's hello/envelope/ack round trip and reconnects through slack-sdk's aiohttp
SocketModeClient, and the request signature checked by slack-sdk's SignatureVerifier. The other Slack tests trust
the fake because of these."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.slack_fake import SlackFake, event_body, signed_headers

pytestmark = pytest.mark.integration

BOT_TOKEN, APP_TOKEN = "xoxb-test", "xapp-test"


@pytest.fixture
def slack() -> Iterator[SlackFake]:
    with SlackFake(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as fake:
        yield fake


@pytest_asyncio.fixture(loop_scope="function")  # the tests run on their own loop: so must the clients
async def client(slack: SlackFake) -> AsyncIterator[AsyncWebClient]:
    yield AsyncWebClient(token=BOT_TOKEN, base_url=slack.api_url)


async def test_auth_test_and_tokens_answer_as_slack_does(slack: SlackFake, client: AsyncWebClient) -> None:
    identity = await client.auth_test()
    assert identity["ok"] and (identity["team_id"], identity["user_id"]) == (slack.team_id, slack.bot_user_id)
    for token, error in ((None, "not_authed"), ("xoxb-wrong", "invalid_auth"), (APP_TOKEN, "not_allowed_token_type")):
        with pytest.raises(SlackApiError) as failed:
            await AsyncWebClient(token=token, base_url=slack.api_url).chat_postMessage(channel="C1", text="hi")
        assert failed.value.response["ok"] is False and failed.value.response["error"] == error
    with pytest.raises(SlackApiError) as failed:
        await client.api_call("chat.fly")
    assert failed.value.response["error"] == "unknown_method"
    assert slack.messages("C1") == []  # refused calls post nothing
    assert [method for method, _ in slack.calls()] == ["auth.test"] + ["chat.postMessage"] * 3 + ["chat.fly"]


async def test_messages_are_posted_threaded_updated_and_recorded(slack: SlackFake, client: AsyncWebClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Searching…*"}}]
    root = await client.chat_postMessage(channel="C1", text="question")
    placeholder = await client.chat_postMessage(channel="C1", text="Searching…", blocks=blocks, thread_ts=root["ts"])
    assert placeholder["ok"] and placeholder["ts"] > root["ts"] and placeholder["message"]["thread_ts"] == root["ts"]
    updated = await client.chat_update(channel="C1", ts=placeholder["ts"], text="Nightly at 02:00.", blocks=[])
    assert updated["ok"] and updated["text"] == "Nightly at 02:00."
    # A form-encoded call, as older clients and curl send: blocks come as a JSON string and are read as JSON.
    await client.api_call("chat.update", data={"channel": "C1", "ts": placeholder["ts"], "text": "Final",
                                               "blocks": json.dumps(blocks)})  # fmt: skip
    with pytest.raises(SlackApiError) as failed:
        await client.chat_update(channel="C1", ts="1.000000", text="x")
    assert failed.value.response["error"] == "message_not_found"

    first, answer = slack.messages("C1")
    assert (first["text"], "thread_ts" in first) == ("question", False)
    assert answer["thread_ts"] == root["ts"] and answer["text"] == "Final" and answer["blocks"] == blocks
    assert answer["user"] == slack.bot_user_id
    assert slack.wait_for("chat.update", lambda p: p.get("text") == "Final", timeout=1)["ts"] == placeholder["ts"]
    assert [p["text"] for _, p in slack.calls("chat.update")] == ["Nightly at 02:00.", "Final", "x"]
    with pytest.raises(TimeoutError):
        slack.wait_for("chat.update", lambda p: p.get("text") == "never", timeout=0.2)


async def test_ephemeral_messages_and_reactions(slack: SlackFake, client: AsyncWebClient) -> None:
    slack.channel_members["C1"] = ["U1", slack.bot_user_id]
    slack.channel_members["C2"] = ["U1"]  # the bot is not in C2
    sent = await client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    assert sent["ok"] and sent["message_ts"]
    with pytest.raises(SlackApiError) as failed:
        await client.chat_postEphemeral(channel="C1", user="U9", text="x")
    assert failed.value.response["error"] == "user_not_in_channel"
    for post in (
        client.chat_postMessage(channel="C2", text="x"),
        client.chat_postEphemeral(channel="C2", user="U1", text="x"),
    ):
        with pytest.raises(SlackApiError) as failed:
            await post
        assert failed.value.response["error"] == "not_in_channel"
    assert [(m["user"], m["text"]) for m in slack.ephemeral("C1")] == [("U1", "only you")]
    assert slack.messages("C1") == []
    assert (await client.reactions_add(channel="C1", timestamp="1.1", name="eyes"))["ok"]
    with pytest.raises(SlackApiError) as failed:
        await client.reactions_add(channel="C1", timestamp="1.1", name="eyes")
    assert failed.value.response["error"] == "already_reacted"


async def test_users_channel_members_and_user_groups(slack: SlackFake, client: AsyncWebClient) -> None:
    slack.users["U1"] = {"id": "U1", "name": "ann", "real_name": "Ann", "is_bot": False,
                         "profile": {"email": "ann@example.com"}}  # fmt: skip
    slack.channel_members["C1"] = [f"U{i}" for i in range(1, 8)] + [slack.bot_user_id]
    slack.usergroups["S1"] = {"id": "S1", "handle": "finance", "users": ["U1", "U2"]}

    user = (await client.users_info(user="U1"))["user"]
    assert user["profile"]["email"] == "ann@example.com" and user["is_bot"] is False
    with pytest.raises(SlackApiError) as failed:
        await client.users_info(user="U404")
    assert failed.value.response["error"] == "user_not_found"

    pages = [page["members"] async for page in await client.conversations_members(channel="C1", limit=3)]
    assert [len(p) for p in pages] == [3, 3, 2]  # slack-sdk follows response_metadata.next_cursor
    assert [member for page in pages for member in page] == slack.channel_members["C1"]
    cursors = [p.get("cursor") for _, p in slack.calls("conversations.members")]
    assert cursors[0] is None and all(cursors[1:])
    with pytest.raises(SlackApiError) as failed:
        await client.conversations_members(channel="C404")
    assert failed.value.response["error"] == "channel_not_found"

    with_users = (await client.usergroups_list(include_users=True))["usergroups"]
    assert [(g["id"], g["handle"], g["users"]) for g in with_users] == [("S1", "finance", ["U1", "U2"])]
    assert "users" not in (await client.usergroups_list())["usergroups"][0]


async def test_files_are_described_and_downloaded_only_with_the_bot_token(
    slack: SlackFake, client: AsyncWebClient
) -> None:
    slack.files["F1"] = ({"name": "Backup policy.pdf", "mimetype": "application/pdf", "filetype": "pdf"}, b"%PDF-1.7")
    file = (await client.files_info(file="F1"))["file"]
    assert (file["id"], file["name"], file["size"]) == ("F1", "Backup policy.pdf", 8)
    async with aiohttp.ClientSession() as http:
        async with http.get(file["url_private_download"], headers={"Authorization": f"Bearer {BOT_TOKEN}"}) as got:
            assert (got.status, got.content_type, await got.read()) == (200, "application/pdf", b"%PDF-1.7")
        async with http.get(file["url_private_download"]) as anonymous:  # Slack's sign-in page, not the file
            assert anonymous.status == 200 and anonymous.content_type == "text/html"
            assert b"%PDF" not in await anonymous.read()
    with pytest.raises(SlackApiError) as failed:
        await client.files_info(file="F404")
    assert failed.value.response["error"] == "file_not_found"


async def test_a_method_can_fail_once_or_be_added(slack: SlackFake, client: AsyncWebClient) -> None:
    slack.fail_next("chat.update", "ratelimited", status=429, headers={"Retry-After": "1"})
    posted = await client.chat_postMessage(channel="C1", text="a")
    with pytest.raises(SlackApiError) as failed:
        await client.chat_update(channel="C1", ts=posted["ts"], text="b")
    assert failed.value.response.status_code == 429 and failed.value.response.headers["Retry-After"] == "1"
    assert (await client.chat_update(channel="C1", ts=posted["ts"], text="b"))["ok"]  # only the next call fails
    slack.add_method("conversations.info", lambda p: {"channel": {"id": p["channel"], "is_im": True}})
    assert (await client.conversations_info(channel="D1"))["channel"] == {"id": "D1", "is_im": True}


def test_signed_headers_are_slacks_v0_signature() -> None:
    body = b"token=x&team_id=T0KB&command=%2Fkb&text=when+do+backups+run%3F"
    verifier = SignatureVerifier(signing_secret="s3cret")
    headers = signed_headers(body, "s3cret")
    assert set(headers) == {"X-Slack-Request-Timestamp", "X-Slack-Signature"}
    assert headers["X-Slack-Signature"].startswith("v0=")
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + b"x", headers)
    assert not SignatureVerifier(signing_secret="other").is_valid_request(body, headers)
    stale = signed_headers(body, "s3cret", timestamp=int(time.time()) - 6 * 60)
    assert not verifier.is_valid_request(body, stale)  # older than five minutes
    # The exact value of Slack's documented example.
    example = signed_headers(b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id="
                             b"G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook"
                             b"-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F3977"
                             b"00885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d"
                             b"10d2c447fce8b6703c", "8f742231b10e8888abcd99yyyzzz85a5", timestamp=1531420618)  # fmt: skip
    assert example["X-Slack-Signature"] == "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"


@pytest_asyncio.fixture(loop_scope="function")  # the tests run on their own loop: so must the clients
async def socket_client(slack: SlackFake) -> AsyncIterator[tuple[SocketModeClient, list[SocketModeRequest]]]:
    """slack-sdk's aiohttp Socket Mode client on the fake, acking every request (with a payload where allowed)."""
    web_client = AsyncWebClient(base_url=slack.api_url)
    socket = SocketModeClient(app_token=APP_TOKEN, web_client=web_client, ping_interval=1)
    received: list[SocketModeRequest] = []

    async def ack(client: SocketModeClient, request: SocketModeRequest) -> None:
        received.append(request)
        payload = {"text": "got it"} if request.accepts_response_payload else None
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id, payload=payload))

    socket.socket_mode_request_listeners.append(ack)
    await socket.connect()
    yield socket, received
    await socket.close()


async def test_envelopes_are_delivered_and_acked_by_envelope_id(
    slack: SlackFake, socket_client: tuple[SocketModeClient, list[SocketModeRequest]]
) -> None:
    _, received = socket_client
    await asyncio.to_thread(slack.wait_connected)  # blocking waits off the loop the client runs on
    assert slack.calls("apps.connections.open") and slack.connections == 1
    mention = event_body({"type": "app_mention", "user": "U1", "text": "<@U0KBBOT> hi", "channel": "C1",
                          "ts": "1.000100"}, "Ev1")  # fmt: skip
    event_envelope = await asyncio.to_thread(slack.send_envelope, "events_api", mention)
    command = slack.command_body("when do backups run?", "U1", "C1")
    command_envelope = await asyncio.to_thread(slack.send_envelope, "slash_commands", command, True)
    click = slack.action_body("kb_feedback_up", "turn-1", "U1", "C1", {"ts": "1.000200", "blocks": []})
    action_envelope = await asyncio.to_thread(slack.send_envelope, "interactive", click, True)

    assert await asyncio.to_thread(slack.wait_ack, event_envelope) == {"envelope_id": event_envelope}
    assert (await asyncio.to_thread(slack.wait_ack, command_envelope))["payload"] == {"text": "got it"}
    assert (await asyncio.to_thread(slack.wait_ack, action_envelope))["envelope_id"] == action_envelope
    by_type = {r.type: r for r in received}
    assert by_type["events_api"].payload["event_id"] == "Ev1" and by_type["events_api"].retry_attempt == 0
    assert by_type["events_api"].payload["event"]["type"] == "app_mention"
    assert by_type["slash_commands"].payload["text"] == "when do backups run?"
    assert by_type["interactive"].payload["actions"][0]["action_id"] == "kb_feedback_up"
    assert not slack.acked("never-sent")


async def test_the_client_reconnects_when_asked_or_dropped(
    slack: SlackFake, socket_client: tuple[SocketModeClient, list[SocketModeRequest]]
) -> None:
    _, received = socket_client
    await asyncio.to_thread(slack.wait_connected, 1)
    await asyncio.to_thread(slack.disconnect)  # Slack's "disconnect": open a new connection
    await asyncio.to_thread(slack.wait_connected, 2)
    await asyncio.to_thread(slack.drop_connections)  # no word: slack-sdk's CLOSE handling reconnects
    await asyncio.to_thread(slack.wait_connected, 3)
    assert len(slack.calls("apps.connections.open")) >= 3
    retried = event_body({"type": "app_mention", "user": "U1", "text": "again", "channel": "C1", "ts": "2.0"}, "Ev1")
    envelope = await asyncio.to_thread(slack.send_envelope, "events_api", retried, retry_attempt=1,
                                       retry_reason="timeout")  # fmt: skip
    assert (await asyncio.to_thread(slack.wait_ack, envelope))["envelope_id"] == envelope
    assert received[-1].retry_attempt == 1 and received[-1].retry_reason == "timeout"


async def test_the_response_url_records_what_the_app_says(slack: SlackFake) -> None:
    command = slack.command_body("help", "U1", "D1")
    async with aiohttp.ClientSession() as http, http.post(command["response_url"], json={"text": "Usage"}) as answered:
        assert answered.status == 200
    said = slack.wait_for("response_url", timeout=1)
    assert said["text"] == "Usage" and said["response_url"].startswith("/response/commands/")
