"""OpenAIHttpGenerator's SSE reading, retry and close behaviour on canned HTTP responses (no server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing

import httpx
import pytest

from kb.adapters import openai_http
from kb.adapters.openai_http import OpenAIHttpGenerator
from kb.ports import Generator, GeneratorServerError, GeneratorUnavailable
from kb.settings import GeneratorSettings

SETTINGS = GeneratorSettings(backend="openai", base_url="http://server.test/v1", api_key="secret")
CHAT = [{"role": "user", "content": "Hi"}]
EVENT_STREAM = {"content-type": "text/event-stream; charset=utf-8"}  # what vLLM's server sends


def chunk(content: str | None, finish_reason: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    payload = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


CANNED_STREAM = (
    b": keep-alive comment\n\n"
    + b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    + chunk("Hello")
    + chunk(", wor")
    + chunk("ld!")
    + chunk(None, finish_reason="stop")
    + b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n'
    + b"data: [DONE]\n\n"
)


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


@pytest.mark.asyncio
async def test_reads_the_data_of_each_event_whatever_else_the_stream_holds() -> None:
    # A data field with or without its space, comments, other fields, blank keep-alive events; [DONE] ends it.
    content = (
        b": comment\n\n"
        + b'data:{"choices":[{"delta":{"content":"no space"}}]}\n\n'
        + b'event: message\nid: 7\nretry: 100\ndata: {"choices":[{"delta":{"content":" named"}}]}\n\n'
        + b"data:\n\ndata: \n\n"
        + b"data: [DONE]\n\n"
        + chunk(" after the end")
    )
    generator = OpenAIHttpGenerator(
        SETTINGS, transport=httpx.MockTransport(lambda r: httpx.Response(200, headers=EVENT_STREAM, content=content))
    )
    assert await collect(generator.stream(CHAT)) == ["no space", " named"]
    await generator.close()


@pytest.mark.asyncio
async def test_streams_deltas_and_sends_an_openai_request() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        # Split at odd places: lines must be reassembled across network chunks.
        async def parts() -> AsyncIterator[bytes]:
            for i in range(0, len(CANNED_STREAM), 7):
                yield CANNED_STREAM[i : i + 7]

        return httpx.Response(200, headers=EVENT_STREAM, content=parts())

    generator = OpenAIHttpGenerator(SETTINGS, transport=httpx.MockTransport(handler))
    assert isinstance(generator, Generator)
    assert await collect(generator.stream(CHAT, max_tokens=12)) == ["Hello", ", wor", "ld!"]
    await generator.close()

    (request,) = requests
    assert str(request.url) == "http://server.test/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer secret"
    body = json.loads(request.content)
    assert body == {
        "model": SETTINGS.served_model_name,
        "messages": CHAT,
        "max_tokens": 12,
        "temperature": SETTINGS.temperature,
        "top_p": SETTINGS.top_p,
        "stop": SETTINGS.stop,
        "repetition_penalty": SETTINGS.repetition_penalty,
        "frequency_penalty": SETTINGS.frequency_penalty,
        "presence_penalty": SETTINGS.presence_penalty,
        "stream": True,
    }


@pytest.mark.asyncio
async def test_error_event_in_the_stream_raises() -> None:
    content = chunk("Hel") + b'data: {"error": {"message": "engine died", "code": 500}}\n\n'
    transport = httpx.MockTransport(lambda r: httpx.Response(200, headers=EVENT_STREAM, content=content))
    generator = OpenAIHttpGenerator(SETTINGS, transport=transport)
    with pytest.raises(GeneratorServerError, match="engine died"):
        await collect(generator.stream(CHAT))
    await generator.close()


@pytest.mark.asyncio
async def test_http_error_status_raises_with_the_body() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(404, json={"error": {"message": "model not found"}}))
    generator = OpenAIHttpGenerator(SETTINGS, transport=transport)
    with pytest.raises(GeneratorServerError, match="404.*model not found"):
        await collect(generator.stream(CHAT))
    await generator.close()


@pytest.mark.asyncio
async def test_an_answer_that_is_no_event_stream_is_retried_as_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_http, "BACKOFF_BASE_S", 0.0)
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # a proxy's page in place of the server
            return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>sign in</html>")
        return httpx.Response(200, headers=EVENT_STREAM, content=CANNED_STREAM)

    generator = OpenAIHttpGenerator(SETTINGS, transport=httpx.MockTransport(handler))
    assert "".join(await collect(generator.stream(CHAT))) == "Hello, world!"
    assert attempts == 2
    await generator.close()

    always_html = httpx.MockTransport(lambda r: httpx.Response(200, headers={"content-type": "text/html"}))
    generator = OpenAIHttpGenerator(SETTINGS, transport=always_html)
    with pytest.raises(GeneratorUnavailable, match="no event stream"):
        await collect(generator.stream(CHAT))
    await generator.close()


@pytest.mark.asyncio
async def test_connection_errors_before_the_first_token_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_http, "BACKOFF_BASE_S", 0.0)
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, headers=EVENT_STREAM, content=CANNED_STREAM)

    generator = OpenAIHttpGenerator(SETTINGS, transport=httpx.MockTransport(handler))
    assert "".join(await collect(generator.stream(CHAT))) == "Hello, world!"
    assert attempts == 3
    await generator.close()


@pytest.mark.asyncio
async def test_gives_up_after_the_last_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_http, "BACKOFF_BASE_S", 0.0)

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    generator = OpenAIHttpGenerator(SETTINGS, transport=httpx.MockTransport(handler))
    with pytest.raises(httpx.ConnectError):
        await collect(generator.stream(CHAT))
    await generator.close()


@pytest.mark.asyncio
async def test_errors_after_the_first_token_are_not_retried() -> None:
    attempts = 0

    class BrokenStream(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield chunk("Hel")
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        return httpx.Response(200, headers=EVENT_STREAM, stream=BrokenStream())

    generator = OpenAIHttpGenerator(SETTINGS, transport=httpx.MockTransport(handler))
    received: list[str] = []
    with pytest.raises(httpx.ReadError):
        async for delta in generator.stream(CHAT):
            received.append(delta)
    assert received == ["Hel"]
    assert attempts == 1
    await generator.close()


class EndlessStream(httpx.AsyncByteStream):
    def __init__(self) -> None:
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        n = 0
        while True:
            n += 1
            yield chunk(f"tok{n} ")

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.asyncio
async def test_closing_the_iterator_closes_the_response() -> None:
    body = EndlessStream()
    transport = httpx.MockTransport(lambda r: httpx.Response(200, headers=EVENT_STREAM, stream=body))
    generator = OpenAIHttpGenerator(SETTINGS, transport=transport)
    stream = generator.stream(CHAT)
    async with aclosing(stream):
        assert await anext(stream) == "tok1 "
        assert await anext(stream) == "tok2 "
    assert body.closed
    await generator.close()


def test_count_tokens_estimates_without_a_tokenizer() -> None:
    generator = OpenAIHttpGenerator(SETTINGS)
    assert generator.count_tokens("") == 0
    assert generator.count_tokens("abcd" * 10) == 10
    assert generator.max_model_len == SETTINGS.max_model_len
    assert generator.count_tokens_many([]) == []
    assert generator.count_tokens_many(["abcd" * 10, "", "abc"]) == [10, 0, 1]
    # Between separators: what the text and its separator add.
    assert generator.count_tokens_many(["abcd" * 10, "ab"], "\n\n") == [11, 1]


@pytest.mark.asyncio
async def test_closed_it_is_not_ready_and_streams_nothing() -> None:
    generator = OpenAIHttpGenerator(SETTINGS, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    assert await generator.ready()
    await generator.close()
    await generator.close()
    assert not await generator.ready()
    with pytest.raises(RuntimeError):
        await anext(generator.stream(CHAT))


@pytest.mark.asyncio
@pytest.mark.parametrize(("header", "session", "sent"), [
    ("X-Session-Id", "c0ffee", "c0ffee"),  # a router in front of several servers keeps the conversation together
    ("X-Session-Id", None, None),  # no conversation: nothing to route on
    ("", "c0ffee", None),  # switched off
])  # fmt: skip
async def test_the_conversation_goes_to_the_server_as_a_header_for_its_router(
    header: str, session: str | None, sent: str | None
) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers=EVENT_STREAM, content=CANNED_STREAM)

    settings = SETTINGS.model_copy(update={"session_header": header})
    generator = OpenAIHttpGenerator(settings, transport=httpx.MockTransport(handler))
    assert await collect(generator.stream(CHAT, session=session)) == ["Hello", ", wor", "ld!"]
    await generator.close()
    (request,) = requests
    assert request.headers.get("x-session-id") == sent
    assert session is None or session not in json.loads(request.content).values()  # a header, not the body
