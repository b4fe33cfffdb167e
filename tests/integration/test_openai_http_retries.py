"""OpenAIHttpGenerator against a real HTTP server on loopback that fails the way a vLLM server does while it
restarts or is overloaded: refused connections, 503s, a dropped connection, silence."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from kb.adapters import openai_http
from kb.adapters.openai_http import GeneratorServerError, OpenAIHttpGenerator
from kb.settings import GeneratorSettings
from tests.support import free_port

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Hi"}]
WORDS = ["Hello", ", wor", "ld!"]


def sse(text: str) -> bytes:
    payload = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


# What the server does with the n-th request (1-based): a status to answer with, "drop" (close the connection
# without answering), "hang" (say nothing), "stream" (the answer) or "half" (one delta, then close).
Plan = Callable[[int], str]


class Server:
    def __init__(self, plan: Plan, port: int | None = None) -> None:
        self.plan = plan
        self.requests: list[dict] = []
        self.port = port or free_port()
        self._httpd: ThreadingHTTPServer | None = None
        self.stop_hanging = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass  # keep the test output free of one access line per request

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.requests.append(body)
                action = server.plan(len(server.requests))
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if action == "hang":
                    server.stop_hanging.wait(10)
                    return
                if action.isdigit():
                    payload = json.dumps({"error": {"message": f"status {action}"}}).encode()
                    self.send_response(int(action))
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                words = WORDS[:1] if action == "half" else WORDS
                for word in words:
                    self.wfile.write(sse(word))
                    self.wfile.flush()
                if action == "half":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(b"data: [DONE]\n\n")
                self.close_connection = True

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stop_hanging.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(plan: Plan, *, delay_s: float = 0.0, port: int | None = None) -> Server:
        server = Server(plan, port)
        servers.append(server)
        if delay_s:
            threading.Timer(delay_s, server.start).start()
        else:
            server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_http, "BACKOFF_BASE_S", 0.2)


def generator_for(server: Server, **settings: object) -> OpenAIHttpGenerator:
    return OpenAIHttpGenerator(GeneratorSettings(backend="openai", base_url=server.base_url, **settings))


async def answer(generator: OpenAIHttpGenerator) -> str:
    try:
        return "".join([delta async for delta in generator.stream(CHAT, max_tokens=8)])
    finally:
        await generator.close()


async def test_503s_before_the_first_token_are_retried_with_growing_waits(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: "503" if n < 3 else "stream")
    started = time.monotonic()
    assert await answer(generator_for(server)) == "Hello, world!"
    elapsed = time.monotonic() - started
    assert len(server.requests) == 3
    assert server.requests[0] == server.requests[2]  # the same request again
    assert elapsed >= 0.2 + 0.4 - 0.05  # exponential backoff: 0.2 s, then 0.4 s


async def test_a_server_that_is_not_up_yet_is_reached_on_a_later_attempt(serve: Callable[..., Server]) -> None:
    port = free_port()
    # Nothing listens for the first ~0.3 s: the first attempt is refused, a retry connects.
    server = serve(lambda n: "stream", delay_s=0.3, port=port)
    assert await answer(generator_for(server)) == "Hello, world!"
    assert len(server.requests) == 1


async def test_a_dropped_connection_before_the_first_token_is_retried(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: "drop" if n == 1 else "stream")
    assert await answer(generator_for(server)) == "Hello, world!"
    assert len(server.requests) == 2


async def test_client_errors_are_not_retried(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: "400")
    with pytest.raises(GeneratorServerError, match="400"):
        await answer(generator_for(server))
    assert len(server.requests) == 1


async def test_gives_up_after_the_last_attempt(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: "502")
    with pytest.raises(GeneratorServerError, match="502"):
        await answer(generator_for(server))
    assert len(server.requests) == openai_http.CONNECT_ATTEMPTS


async def test_a_stream_cut_after_the_first_token_fails_without_a_retry(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: "half")
    received: list[str] = []
    generator = generator_for(server)
    with pytest.raises(GeneratorServerError, match="before it finished"):
        async for delta in generator.stream(CHAT):
            received.append(delta)
    await generator.close()
    assert received == ["Hello"]  # not "Hello" twice: the text already shown is never repeated
    assert len(server.requests) == 1


async def test_a_silent_server_times_out_without_a_retry(serve: Callable[..., Server]) -> None:
    server = serve(lambda n: "hang")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await answer(generator_for(server, request_timeout_s=0.5))
    assert time.monotonic() - started < 3
    assert len(server.requests) == 1
