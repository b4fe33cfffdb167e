"""Socket Mode: the bot without a public URL. kb opens a WebSocket to Slack (apps.connections.open with the app-level
token, `KB_SLACK__APP_TOKEN`) and Slack sends events, slash commands and button clicks down it, each acknowledged by
its envelope id; the answers go out through the Web API as over HTTP.

`SocketModeRunner` runs Bolt's AsyncSocketModeHandler (slack-sdk's aiohttp client) on the running event loop:
`start()` returns at once and the connection is made in the background, so neither `kb serve` nor `kb slack` waits
for Slack; once connected, slack-sdk keeps it: it pings, and opens a new connection when Slack asks (a "disconnect"
message), when the socket closes or when pongs stop. A token Slack refuses is not retried: `failure` says which, in
words, and `kb slack` exits with it.

`socket_mode_bot(settings)` is `kb slack`: the process `kb serve` would be (registry, index, ingest worker, generator
started in the background) with the bot over Socket Mode as its only door."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from kb.container import Container
from kb.settings import Settings
from service.slack.bot import SlackBot
from service.state import Services

log = logging.getLogger(__name__)

# Errors of apps.connections.open / auth.test that another attempt cannot mend: the token itself is refused.
REFUSED_TOKEN_ERRORS = {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired",
                        "not_allowed_token_type", "missing_scope", "team_access_not_granted"}  # fmt: skip
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0


class SocketModeRunner:
    """The Bolt app `app` on Slack's Socket Mode, on this process's event loop."""

    def __init__(self, app: AsyncApp, settings: Settings, *, ping_interval: float = 10) -> None:
        self._app = app
        self._slack = settings.slack
        self._ping_interval = ping_interval
        self._handler: AsyncSocketModeHandler | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._failed = asyncio.Event()
        self.failure: str | None = None  # why the bot cannot run (a token Slack refuses), in words

    @property
    def connected(self) -> bool:
        session = self._handler.client.current_session if self._handler is not None else None
        return session is not None and not session.closed

    async def start(self) -> None:
        """Connect in the background (returns at once); a second call does nothing."""
        if self._handler is not None:
            return
        # The Web API client the socket client asks for its WebSocket URL; settings.slack.api_url, like the bot's.
        web_client = AsyncWebClient(token=self._slack.bot_token.get_secret_value(), base_url=self._slack.api_url,
                                    timeout=30)  # fmt: skip
        # Built here, not in __init__: slack-sdk's client starts tasks on the running loop when it is made.
        self._handler = AsyncSocketModeHandler(
            self._app, app_token=self._slack.app_token.get_secret_value(), web_client=web_client,
            ping_interval=self._ping_interval,
        )  # fmt: skip
        self._connecting = asyncio.get_running_loop().create_task(self._connect(web_client), name="slack-socket-mode")

    async def _connect(self, web_client: AsyncWebClient) -> None:
        assert self._handler is not None
        socket_client = self._handler.client
        delay = RETRY_FIRST_S
        while True:
            token = "bot token (KB_SLACK__BOT_TOKEN)"
            try:
                # Both tokens checked once, first: a wrong one is said in words rather than retried for ever.
                await web_client.auth_test()
                token = "app-level token (KB_SLACK__APP_TOKEN)"
                socket_client.wss_uri = await socket_client.issue_new_wss_url()
                break
            except SlackApiError as exc:
                error = str(exc.response.get("error") or f"HTTP {exc.response.status_code}")
                if error in REFUSED_TOKEN_ERRORS:
                    self._fail(f"Slack refused the {token}: {error}")
                    return
                log.warning("Slack answered %s; connecting again in %.0f s", error, delay)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("Slack cannot be reached (%r); connecting again in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        # slack-sdk's own loop from here: it retries a failed WebSocket connect every ping_interval, then keeps the
        # connection (pings, Slack's "disconnect" messages, closed sockets).
        await self._handler.connect_async()
        log.info("Slack Socket Mode connected")

    def _fail(self, failure: str) -> None:
        log.error("%s; the Slack bot is not running", failure)
        self.failure = failure
        self._failed.set()

    async def wait_failed(self) -> str:
        """Until the bot cannot run (`failure`); it is returned."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def stop(self) -> None:
        """Close the connection (Slack then sends to the app's other connections, if any)."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with suppress(asyncio.CancelledError):
                await self._connecting
        if self._handler is not None:
            await self._handler.close_async()
            self._handler = None
        self._connecting = None


@dataclass(frozen=True)
class SocketModeBot:
    runner: SocketModeRunner
    services: Services  # answers is None until the generator has started


@asynccontextmanager
async def socket_mode_bot(settings: Settings) -> AsyncIterator[SocketModeBot]:
    """`kb slack`: the container opened as `kb serve` opens it, the ingest worker (files added through Slack), the
    generator starting in the background (meanwhile the bot says "kb is starting"), and the bot on Socket Mode."""
    container = await asyncio.to_thread(Container.open, settings)
    generator_task: asyncio.Task[None] | None = None
    try:
        services = await Services.open(container, with_generator=False)
        services.worker.start()
        try:
            if settings.generator.enabled:
                generator_task = asyncio.create_task(_start_generator(services))
            bot = SlackBot(services, settings)
            runner = SocketModeRunner(bot.app, settings)
            await runner.start()
            try:
                yield SocketModeBot(runner, services)
            finally:
                try:
                    await runner.stop()
                finally:
                    await bot.aclose()  # answers still being written end here, before the stores close
        finally:
            if generator_task is not None and not generator_task.done():
                generator_task.cancel()
                with suppress(asyncio.CancelledError):
                    await generator_task
            await asyncio.to_thread(services.worker.stop)
    finally:
        await container.aclose()


async def _start_generator(services: Services) -> None:
    try:
        await services.start_generator()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the generator failed to start")  # the bot answers "kb is starting" meanwhile


async def run_socket_mode_bot(settings: Settings, stop: asyncio.Event) -> str | None:
    """Serve until `stop` is set (None) or the bot cannot run (its failure, in words)."""
    async with socket_mode_bot(settings) as bot:
        runner = bot.runner
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(runner.wait_failed())
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, failed):
            task.cancel()
        return runner.failure
