"""A local Slack for the tests: Slack's Web API and its Socket Mode WebSocket on 127.0.0.1, real HTTP and real
WebSocket (aiohttp, one port, its own event loop in a background thread), so slack-sdk and Bolt run unchanged.

    with SlackFake(bot_token="xoxb-test", app_token="xapp-test") as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)  # or KB_SLACK__API_URL=slack.api_url
        slack.users["U1"] = {"id": "U1", "name": "ann", "profile": {"email": "ann@example.com"}}
        slack.channel_members["C1"] = ["U1", slack.bot_user_id]
        ...  # the code under test calls the Web API / connects over Socket Mode (apps.connections.open, xapp- token)
        envelope_id = slack.send_envelope("events_api", event_body({"type": "app_mention", ...}, "Ev1"))
        slack.wait_ack(envelope_id)                      # the client's {"envelope_id": ..., "payload"?: ...}
        params = slack.wait_for("chat.update", lambda p: "backups" in p["text"])
        slack.messages("C1")                             # the channel as posted/updated: ts, thread_ts, text, blocks

The waits (wait_for, wait_ack, wait_connected, send_envelope) block: from an async test whose loop runs the client
under test, call them through `await asyncio.to_thread(slack.wait_ack, envelope_id)`, or the client never runs.

Over HTTP (the Events API), sign a body with `signed_headers(body, signing_secret)`: Slack's v0 signature, exactly.
`command_body` and `action_body` build a slash command's and a button's payload, each with a `response_url` on the
fake (what the app POSTs there is recorded as the pseudo-method "response_url").

As Slack does: every answer is HTTP 200 with `ok` (and `error` when false); a missing token is "not_authed", a wrong
one "invalid_auth", a token of the other kind (xapp- for chat.*, xoxb- for apps.connections.open)
"not_allowed_token_type"; an unknown method "unknown_method"; a message to a channel listed in `channel_members`
without the bot "not_in_channel" (channels not listed take any message). Arguments come as a query string, a form or
JSON (in a form, `blocks` is a JSON string). A `url_private_download` gives the file only with "Authorization: Bearer
<bot token>"; without it Slack (and the fake) answer 200 with an HTML sign-in page, so check the content type.
`fail_next(method, error)` makes the next call of a method fail (e.g. "ratelimited" with HTTP 429 and Retry-After);
`add_method(name, handler)` answers a method the fake lacks. `disconnect()` asks the Socket Mode client to reconnect
(Slack's "disconnect" message); `drop_connections()` closes the sockets without a word."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Self
from urllib.parse import quote

from aiohttp import WSMsgType, web

Params = dict[str, Any]
Predicate = Callable[[Params], bool]

TEAM_DOMAIN = "kb-test"
APP_ID = "A0KBAPP"
BOT_ID = "B0KBBOT"


def signed_headers(body: bytes, signing_secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack signs a request with: `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}` under the app's
    signing secret (https://api.slack.com/authentication/verifying-requests-from-slack)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    base = b"v0:" + str(timestamp).encode() + b":" + body
    signature = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={signature}"}


def event_body(event: dict, event_id: str, team_id: str = "T0KB") -> dict:
    """An Events API `event_callback` as Slack sends it (over HTTP, or as an `events_api` envelope's payload)."""
    authorization = {"enterprise_id": None, "team_id": team_id, "user_id": SlackFake.bot_user_id, "is_bot": True}
    return {
        "token": "verification-token-unused",
        "team_id": team_id,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [authorization],
        "is_ext_shared_channel": False,
        "event_context": f"4-{uuid.uuid4().hex}",
    }


class SlackFake:
    """Slack on loopback; see the module's note. Every Web API call is recorded: calls(), wait_for()."""

    team_id = "T0KB"
    bot_user_id = "U0KBBOT"

    def __init__(self, bot_token: str = "xoxb-test", app_token: str = "xapp-test") -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.users: dict[str, dict] = {}
        self.channel_members: dict[str, list[str]] = {}
        self.usergroups: dict[str, dict] = {}
        self.files: dict[str, tuple[dict, bytes]] = {}
        self.port = 0
        self._calls: list[tuple[str, Params]] = []
        self._messages: dict[str, list[dict]] = {}
        self._ephemeral: dict[str, list[dict]] = {}
        self._reactions: set[tuple[str, str, str]] = set()
        self._acks: dict[str, dict] = {}
        self._socket_messages: list[dict] = []
        self._failures: dict[str, list[tuple[str, int, dict[str, str]]]] = {}
        self._extra_methods: dict[str, Callable[[Params], dict]] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._tickets: set[str] = set()  # apps.connections.open's one-time WebSocket URLs
        self._connections_opened = 0
        self._changed = threading.Condition()
        self._ts = itertools.count(1)
        self._ts_base = int(time.time())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------------------------------------
    # Lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def start(self) -> Self:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="slack-fake", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the Slack fake did not start")
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._socket)
        app.router.add_get("/files-pri/{file_id}/{name}", self._download)
        app.router.add_post("/response/{kind}/{id}", self._response_url)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            for socket in list(self._sockets):
                await socket.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------------------
    # What the tests read

    def calls(self, method: str | None = None) -> list[tuple[str, Params]]:
        """Every Web API call so far, in order: (method, params) with params as sent (form values are strings)."""
        with self._changed:
            return [(m, dict(p)) for m, p in self._calls if method is None or m == method]

    def wait_for(self, method: str, predicate: Predicate = lambda params: True, timeout: float = 60) -> Params:
        """The params of the first call of `method` (made before or after this call) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for called, params in self._calls:
                    if called == method and predicate(params):
                        return dict(params)
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [m for m, _ in self._calls]
                    raise TimeoutError(f"no {method} call matched within {timeout}s; calls made: {seen}")
                self._changed.wait(left)

    def messages(self, channel: str) -> list[dict]:
        """The channel's messages in the order posted, each as last updated: ts, thread_ts, text, blocks, user."""
        with self._changed:
            return [dict(m) for m in self._messages.get(channel, [])]

    def ephemeral(self, channel: str) -> list[dict]:
        """chat.postEphemeral messages in the channel: as messages(), with `user` the one person who saw it."""
        with self._changed:
            return [dict(m) for m in self._ephemeral.get(channel, [])]

    def fail_next(self, method: str, error: str, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """The next call of `method` answers {"ok": false, "error": error} (with HTTP `status`, e.g. 429 and
        {"Retry-After": "1"} for "ratelimited")."""
        with self._changed:
            self._failures.setdefault(method, []).append((error, status, dict(headers or {})))

    def add_method(self, method: str, handler: Callable[[Params], dict]) -> None:
        """Answer `method` (with a valid bot token) with handler(params) | {"ok": True} unless it sets ok."""
        self._extra_methods[method] = handler

    # ---------------------------------------------------------------------------------------------------------
    # Socket Mode

    @property
    def connections(self) -> int:
        """Open Socket Mode connections."""
        with self._changed:
            return len([s for s in self._sockets if not s.closed])

    @property
    def connections_opened(self) -> int:
        """WebSocket connections accepted so far (a reconnect adds one)."""
        with self._changed:
            return self._connections_opened

    def wait_connected(self, opened: int = 1, timeout: float = 30) -> None:
        """Until at least `opened` connections were accepted in all and one is open."""
        self._wait(lambda: self._connections_opened >= opened and self._open_sockets(), timeout,
                   f"no Socket Mode connection #{opened}")  # fmt: skip

    def send_envelope(
        self,
        type: str,
        payload: dict,
        accepts_response_payload: bool = False,
        *,
        retry_attempt: int = 0,
        retry_reason: str = "",
        timeout: float = 30,
    ) -> str:
        """Send an envelope ("events_api", "slash_commands", "interactive") on the newest open connection (waiting
        up to `timeout` for one); its envelope_id."""
        envelope_id = str(uuid.uuid4())
        envelope: dict[str, Any] = {"envelope_id": envelope_id, "type": type, "payload": payload,
                                    "accepts_response_payload": accepts_response_payload}  # fmt: skip
        if type == "events_api":
            envelope |= {"retry_attempt": retry_attempt, "retry_reason": retry_reason}
        self._send_json(envelope, timeout)
        return envelope_id

    def wait_ack(self, envelope_id: str, timeout: float = 10) -> dict:
        """The client's acknowledgement of the envelope: {"envelope_id": ..., "payload"?: ...}."""
        return self._wait(lambda: self._acks.get(envelope_id), timeout, f"no ack for envelope {envelope_id}")

    def acked(self, envelope_id: str) -> bool:
        with self._changed:
            return envelope_id in self._acks

    def disconnect(self, reason: str = "refresh_requested", timeout: float = 30) -> None:
        """Slack's warning that it will close the connection: the client opens a new one (apps.connections.open)."""
        self._send_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "kb-fake"}}, timeout)

    def drop_connections(self) -> None:
        """Close every Socket Mode connection at once, as a network failure or a Slack restart would."""
        assert self._loop is not None

        async def close_all() -> None:
            for socket in list(self._sockets):
                await socket.close(code=1001, message=b"going away")

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10)

    def _open_sockets(self) -> list[web.WebSocketResponse]:
        return [s for s in self._sockets if not s.closed]

    def _send_json(self, message: dict, timeout: float) -> None:
        assert self._loop is not None
        socket = self._wait(lambda: (self._open_sockets() or [None])[-1], timeout, "no Socket Mode connection")
        asyncio.run_coroutine_threadsafe(socket.send_str(json.dumps(message)), self._loop).result(10)

    def _wait(self, found: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (value := found()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} within {timeout}s")
                self._changed.wait(min(left, 0.2))  # a socket closing changes `found` without a notify
            return value

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        with self._changed:
            ticket_ok = request.query.get("ticket") in self._tickets
        if not ticket_ok:
            return web.Response(status=401, text="invalid ticket")
        socket = web.WebSocketResponse(autoping=True)  # answers the client's pings (slack-sdk's liveness check)
        await socket.prepare(request)
        with self._changed:
            self._sockets.append(socket)
            self._connections_opened += 1
            count = len(self._open_sockets())
            self._changed.notify_all()
        await socket.send_str(json.dumps({
            "type": "hello", "num_connections": count,
            "debug_info": {"host": "kb-fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        }))  # fmt: skip
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            with self._changed:
                self._socket_messages.append(data)
                if "envelope_id" in data:
                    self._acks.setdefault(data["envelope_id"], data)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()
        return socket

    # ---------------------------------------------------------------------------------------------------------
    # Web API

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _arguments(request)
        token = _bearer(request) or params.pop("token", None)
        with self._changed:
            self._calls.append((method, params))
            self._changed.notify_all()
            failure = self._failures.get(method, []) and self._failures[method].pop(0)
        if failure:
            error, status, headers = failure
            return web.json_response({"ok": False, "error": error}, status=status, headers=headers)
        app_method = method == "apps.connections.open"
        if not token:
            return _error("not_authed")
        if token not in (self.bot_token, self.app_token):
            return _error("invalid_auth")
        if (token == self.app_token) != app_method:
            return _error("not_allowed_token_type")
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None and method in self._extra_methods:
            answer = self._extra_methods[method](params)
            return web.json_response({"ok": True, **answer})
        if handler is None:
            return _error("unknown_method")
        with self._changed:
            answer = handler(params)
            self._changed.notify_all()
        return web.json_response(answer)

    def _m_auth_test(self, _: Params) -> dict:
        return {"ok": True, "url": f"https://{TEAM_DOMAIN}.slack.com/", "team": "kb test", "user": "kb",
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": BOT_ID,
                "is_enterprise_install": False}  # fmt: skip

    def _m_apps_connections_open(self, _: Params) -> dict:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={APP_ID}"}

    def _message(self, params: Params, ts: str) -> dict:
        message = {"type": "message", "ts": ts, "user": self.bot_user_id, "bot_id": BOT_ID,
                   "text": params.get("text", ""), "blocks": _json_argument(params.get("blocks")) or []}  # fmt: skip
        if params.get("thread_ts"):
            message["thread_ts"] = str(params["thread_ts"])
        return message

    def _next_ts(self) -> str:
        return f"{self._ts_base}.{next(self._ts):06d}"

    def _m_chat_postMessage(self, params: Params) -> dict:  # Slack's method name
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if self.bot_user_id not in self.channel_members.get(str(channel), [self.bot_user_id]):
            return {"ok": False, "error": "not_in_channel"}
        if not params.get("text") and not params.get("blocks") and not params.get("attachments"):
            return {"ok": False, "error": "no_text"}
        message = self._message(params, self._next_ts())
        self._messages.setdefault(str(channel), []).append(message)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": dict(message)}

    def _m_chat_update(self, params: Params) -> dict:
        channel, ts = str(params.get("channel", "")), str(params.get("ts", ""))
        for message in self._messages.get(channel, []):
            if message["ts"] == ts:
                if "text" in params:
                    message["text"] = params["text"]
                if "blocks" in params:
                    message["blocks"] = _json_argument(params["blocks"]) or []
                message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
                return {"ok": True, "channel": channel, "ts": ts, "text": message["text"], "message": dict(message)}
        return {"ok": False, "error": "message_not_found"}

    def _m_chat_postEphemeral(self, params: Params) -> dict:  # Slack's method name
        channel, user = params.get("channel"), params.get("user")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        members = self.channel_members.get(str(channel))
        if members is not None and self.bot_user_id not in members:
            return {"ok": False, "error": "not_in_channel"}
        if user not in (members if members is not None else self.users):
            return {"ok": False, "error": "user_not_in_channel"}
        message = self._message(params, self._next_ts()) | {"user": user}
        self._ephemeral.setdefault(str(channel), []).append(message)
        return {"ok": True, "message_ts": message["ts"]}

    def _m_reactions_add(self, params: Params) -> dict:
        key = (str(params.get("channel")), str(params.get("timestamp")), str(params.get("name")))
        if key in self._reactions:
            return {"ok": False, "error": "already_reacted"}
        self._reactions.add(key)
        return {"ok": True}

    def _m_users_info(self, params: Params) -> dict:
        user = self.users.get(str(params.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": {"team_id": self.team_id, "deleted": False, "is_bot": False, **user}}

    def _m_conversations_members(self, params: Params) -> dict:
        members = self.channel_members.get(str(params.get("channel")))
        if members is None:
            return {"ok": False, "error": "channel_not_found"}
        limit = int(params.get("limit") or 100)
        cursor = str(params.get("cursor") or "")
        start = int(base64.b64decode(cursor).decode().removeprefix("offset:")) if cursor else 0
        page = members[start : start + limit]
        more = start + limit < len(members)
        next_cursor = base64.b64encode(f"offset:{start + limit}".encode()).decode() if more else ""
        return {"ok": True, "members": page, "response_metadata": {"next_cursor": next_cursor}}

    def _m_usergroups_list(self, params: Params) -> dict:
        include_users = str(params.get("include_users", "")).lower() in ("true", "1")
        groups = []
        for group in self.usergroups.values():
            shown = {"team_id": self.team_id, "name": group.get("handle", group["id"]), "date_delete": 0,
                     "user_count": len(group.get("users", [])), **group}  # fmt: skip
            if not include_users:
                shown.pop("users", None)
            groups.append(shown)
        return {"ok": True, "usergroups": groups}

    def _m_files_info(self, params: Params) -> dict:
        file_id = str(params.get("file"))
        if file_id not in self.files:
            return {"ok": False, "error": "file_not_found"}
        file, data = self.files[file_id]
        name = quote(file.get("name", "file"))
        url = f"{self.base_url}/files-pri/{self.team_id}-{file_id}/{name}"
        shown = {"id": file_id, "name": file.get("name", "file"), "size": len(data), "mode": "hosted",
                 "url_private": url, "url_private_download": f"{url}?download=1", **file}  # fmt: skip
        return {"ok": True, "file": shown, "comments": [], "response_metadata": {"next_cursor": ""}}

    async def _download(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"].removeprefix(f"{self.team_id}-")
        with self._changed:
            self._calls.append(("files-pri", {"file": file_id}))
            self._changed.notify_all()
        if _bearer(request) != self.bot_token:
            # What Slack does: a sign-in page, not an error status.
            return web.Response(text="<!DOCTYPE html><html><body>Sign in to Slack</body></html>",
                                content_type="text/html")  # fmt: skip
        if file_id not in self.files:
            return web.Response(status=404, text="file not found")
        file, data = self.files[file_id]
        return web.Response(body=data, content_type=file.get("mimetype", "application/octet-stream"))

    async def _response_url(self, request: web.Request) -> web.Response:
        params = await _arguments(request)
        params["response_url"] = str(request.url.relative())
        with self._changed:
            self._calls.append(("response_url", params))
            self._changed.notify_all()
        return web.Response(text="ok")

    # ---------------------------------------------------------------------------------------------------------
    # Payloads Slack sends

    def command_body(self, text: str, user_id: str, channel_id: str, command: str = "/kb") -> dict:
        """A slash command as Slack sends it (a `slash_commands` envelope's payload; form-encode it over HTTP)."""
        trigger = uuid.uuid4().hex
        return {
            "token": "verification-token-unused", "team_id": self.team_id, "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id, "channel_name": "directmessage" if channel_id.startswith("D") else "general",
            "user_id": user_id, "user_name": self.users.get(user_id, {}).get("name", user_id),
            "command": command, "text": text, "api_app_id": APP_ID, "is_enterprise_install": "false",
            "response_url": f"{self.base_url}/response/commands/{trigger}", "trigger_id": trigger,
        }  # fmt: skip

    def action_body(self, action_id: str, value: str, user_id: str, channel_id: str, message: dict) -> dict:
        """A `block_actions` payload for a button in `message` (one of messages(channel)) clicked by `user_id`."""
        trigger = uuid.uuid4().hex
        block_id = next((b.get("block_id") for b in message.get("blocks", [])
                         for e in b.get("elements", []) if e.get("action_id") == action_id), "actions")  # fmt: skip
        return {
            "type": "block_actions",
            "user": {"id": user_id, "username": self.users.get(user_id, {}).get("name", user_id), "team_id": self.team_id},
            "api_app_id": APP_ID, "token": "verification-token-unused",
            "container": {"type": "message", "message_ts": message["ts"], "channel_id": channel_id,
                          "is_ephemeral": False, **({"thread_ts": message["thread_ts"]} if "thread_ts" in message else {})},
            "trigger_id": trigger, "team": {"id": self.team_id, "domain": TEAM_DOMAIN},
            "channel": {"id": channel_id, "name": "general"}, "message": dict(message),
            "response_url": f"{self.base_url}/response/actions/{trigger}",
            "actions": [{"type": "button", "action_id": action_id, "block_id": block_id, "value": value,
                         "text": {"type": "plain_text", "text": action_id}, "action_ts": self._next_ts()}],
        }  # fmt: skip


def _error(error: str) -> web.Response:
    return web.json_response({"ok": False, "error": error})


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _json_argument(value: Any) -> Any:
    """A JSON-valued argument (blocks): as is from a JSON body, decoded from a form's string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


async def _arguments(request: web.Request) -> Params:
    """A call's arguments as Slack reads them: the query string, then a form or a JSON body."""
    params: Params = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params
