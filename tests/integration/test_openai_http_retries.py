"""OpenAIHttpGenerator against a real HTTP server on loopback (tests.fakes.FakeOpenAIServer) that fails the way a
vLLM server does while it restarts or is overloaded: refused connections, 503s, a dropped connection, silence."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from kb.adapters import openai_http
from kb.adapters.openai_http import OpenAIHttpGenerator
from kb.ports import GeneratorServerError
from kb.settings import GeneratorSettings
from tests.fakes import FakeOpenAIServer, Plan
from tests.support import free_port

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Hi"}]
Serve = Callable[..., FakeOpenAIServer]  # the `serve` fixture: start(plan, *, delay_s=0, port=None)


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[FakeOpenAIServer] = []

    def start(plan: Plan, *, delay_s: float = 0.0, port: int | None = None) -> FakeOpenAIServer:
        server = FakeOpenAIServer(plan, port=port, hang_s=10)
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


def generator_for(server: FakeOpenAIServer, **settings: object) -> OpenAIHttpGenerator:
    return OpenAIHttpGenerator(GeneratorSettings(backend="openai", base_url=server.base_url, **settings))


async def answer(generator: OpenAIHttpGenerator) -> str:
    try:
        return "".join([delta async for delta in generator.stream(CHAT, max_tokens=8)])
    finally:
        await generator.close()


async def test_503s_before_the_first_token_are_retried_with_growing_waits(serve: Serve) -> None:
    server = serve(lambda n: "503" if n < 3 else "stream")
    started = time.monotonic()
    assert await answer(generator_for(server)) == "Hello, world!"
    elapsed = time.monotonic() - started
    assert len(server.requests) == 3
    assert server.requests[0] == server.requests[2]  # the same request again
    assert elapsed >= 0.2 + 0.4 - 0.05  # exponential backoff: 0.2 s, then 0.4 s


async def test_a_server_that_is_not_up_yet_is_reached_on_a_later_attempt(serve: Serve) -> None:
    port = free_port()
    # Nothing listens for the first ~0.3 s: the first attempt is refused, a retry connects.
    server = serve(lambda n: "stream", delay_s=0.3, port=port)
    assert await answer(generator_for(server)) == "Hello, world!"
    assert len(server.requests) == 1


async def test_a_dropped_connection_before_the_first_token_is_retried(serve: Serve) -> None:
    server = serve(lambda n: "drop" if n == 1 else "stream")
    assert await answer(generator_for(server)) == "Hello, world!"
    assert len(server.requests) == 2


async def test_client_errors_are_not_retried(serve: Serve) -> None:
    server = serve(lambda n: "400")
    with pytest.raises(GeneratorServerError, match="400"):
        await answer(generator_for(server))
    assert len(server.requests) == 1


async def test_gives_up_after_the_last_attempt(serve: Serve) -> None:
    server = serve(lambda n: "502")
    with pytest.raises(GeneratorServerError, match="502"):
        await answer(generator_for(server))
    assert len(server.requests) == openai_http.CONNECT_ATTEMPTS


async def test_a_stream_cut_after_the_first_token_fails_without_a_retry(serve: Serve) -> None:
    server = serve(lambda n: "half")
    received: list[str] = []
    generator = generator_for(server)
    with pytest.raises(GeneratorServerError, match="before it finished"):
        async for delta in generator.stream(CHAT):
            received.append(delta)
    await generator.close()
    assert received == ["Hello"]  # not "Hello" twice: the text already shown is never repeated
    assert len(server.requests) == 1


async def test_a_silent_server_times_out_without_a_retry(serve: Serve) -> None:
    server = serve(lambda n: "hang")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await answer(generator_for(server, request_timeout_s=0.5))
    assert time.monotonic() - started < 3
    assert len(server.requests) == 1


async def test_more_answers_at_once_than_httpx_pools_by_default_all_start(serve: Serve) -> None:
    """Every concurrent answer gets its own stream at once: a replica with 120 answers open does not hold the 101st
    back until another ends (httpx's default pool of 100 connections did; vLLM queues requests itself)."""
    import asyncio

    server = serve("stall")  # each answer sends one delta, then nothing until the server stops
    generator = generator_for(server, request_timeout_s=60)
    streams = [generator.stream(CHAT, max_tokens=8) for _ in range(120)]
    try:
        async with asyncio.timeout(30):
            firsts = await asyncio.gather(*(anext(stream) for stream in streams))
        assert firsts == ["Hello"] * 120
        assert len(server.requests) == 120
    finally:
        for stream in streams:
            await stream.aclose()
        await generator.close()
