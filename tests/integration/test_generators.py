"""What each Generator adapter shows beyond the port's contract (tests/contract/test_generator.py), on the real
SmolLM2 model: the in-process engine's request table, and vLLM's OpenAI server's metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from kb.adapters.openai_http import OpenAIHttpGenerator
from kb.adapters.vllm_engine import VllmEngineGenerator
from kb.settings import GeneratorSettings
from tests.conftest import SERVER_MAX_MODEL_LEN

pytestmark = pytest.mark.integration

CHAT = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
]
LONG_CHAT = [{"role": "user", "content": "Write a very long essay about the history of the Roman Empire."}]
# Far more than the deltas read before stopping: without an abort the request would keep running for minutes.
LONG_MAX_TOKENS = 3000


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


async def read_then_close(stream: AsyncIterator[str], deltas: int) -> None:
    async with aclosing(stream):
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == deltas:
                break


# The session's engine (tests/conftest.py), whose requests run on the session's event loop.
@pytest.mark.asyncio(loop_scope="session")
class TestVllmEngineGenerator:
    @pytest.fixture
    def generator(self, vllm_engine: VllmEngineGenerator) -> VllmEngineGenerator:
        return vllm_engine

    @pytest.fixture
    def abort_calls(self, generator: VllmEngineGenerator, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
        engine = generator.engine
        calls: list[tuple[Any, ...]] = []
        original_abort = engine.abort

        async def recording_abort(request_id: Any, internal: bool = False) -> None:
            calls.append((request_id, internal))
            await original_abort(request_id, internal)

        monkeypatch.setattr(engine, "abort", recording_abort)
        return calls

    async def test_a_finished_answer_leaves_no_request_in_the_engine(self, generator: VllmEngineGenerator) -> None:
        assert "".join(await collect(generator.stream(CHAT, max_tokens=48))).strip()
        assert generator.engine.get_num_unfinished_requests() == 0

    async def test_closing_the_stream_aborts_the_request(
        self, generator: VllmEngineGenerator, abort_calls: list[tuple[Any, ...]]
    ) -> None:
        engine = generator.engine
        stream = generator.stream(LONG_CHAT, max_tokens=LONG_MAX_TOKENS)
        async with aclosing(stream):
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 2:
                    assert engine.get_num_unfinished_requests() == 1
                    break
        assert engine.get_num_unfinished_requests() == 0
        assert [c for c in abort_calls if str(c[0]).startswith("kb-") and not c[1]], abort_calls

    async def test_cancelling_the_consumer_task_aborts_the_request(
        self, generator: VllmEngineGenerator, abort_calls: list[tuple[Any, ...]]
    ) -> None:
        engine = generator.engine
        two_deltas = asyncio.Event()

        async def consume() -> None:
            seen = 0
            async for _ in generator.stream(LONG_CHAT, max_tokens=LONG_MAX_TOKENS):
                seen += 1
                if seen == 2:
                    two_deltas.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(two_deltas.wait(), timeout=60)
        assert engine.get_num_unfinished_requests() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.get_num_unfinished_requests() == 0
        assert [c for c in abort_calls if str(c[0]).startswith("kb-") and not c[1]], abort_calls


async def server_metric(base_url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples (optionally filtered by labels) from the server's /metrics."""
    root = base_url.removesuffix("/v1")
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{root}/metrics")
    response.raise_for_status()
    total = 0.0
    for line in response.text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def wait_for_metric(base_url: str, name: str, expected: float, timeout_s: float = 15.0) -> float:
    deadline = time.monotonic() + timeout_s
    value = await server_metric(base_url, name)
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        value = await server_metric(base_url, name)
    return value


async def completed_requests(base_url: str) -> float:
    return sum(
        [
            await server_metric(base_url, "vllm:request_success_total", finished_reason=reason)
            for reason in ("stop", "length")
        ]
    )


class TestOpenAIHttpGenerator:
    @pytest_asyncio.fixture
    async def generator(self, vllm_server: str, generator_model_dir: Path) -> AsyncIterator[OpenAIHttpGenerator]:
        settings = GeneratorSettings(backend="openai", base_url=vllm_server, max_model_len=SERVER_MAX_MODEL_LEN)
        generator = OpenAIHttpGenerator(settings, generator_model_dir)
        await generator.start()
        yield generator
        await generator.close()

    @pytest.mark.asyncio
    async def test_a_finished_answer_is_counted_complete_by_the_server(
        self, generator: OpenAIHttpGenerator, vllm_server: str
    ) -> None:
        completed_before = await completed_requests(vllm_server)
        assert "".join(await collect(generator.stream(CHAT, max_tokens=48))).strip()
        assert await wait_for_metric(vllm_server, "vllm:num_requests_running", 0.0) == 0.0
        assert await completed_requests(vllm_server) == completed_before + 1

    @pytest.mark.asyncio
    async def test_closing_the_stream_aborts_the_request_on_the_server(
        self, generator: OpenAIHttpGenerator, vllm_server: str
    ) -> None:
        completed_before = await completed_requests(vllm_server)
        stream = generator.stream(LONG_CHAT, max_tokens=LONG_MAX_TOKENS)
        async with aclosing(stream):
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 2:
                    assert await server_metric(vllm_server, "vllm:num_requests_running") == 1
                    break
        # The request left the engine long before it could have produced LONG_MAX_TOKENS, and not by finishing
        # (vLLM counts no request_success for client aborts, so "stopped but did not complete" is the check).
        assert await wait_for_metric(vllm_server, "vllm:num_requests_running", 0.0) == 0.0
        assert await completed_requests(vllm_server) == completed_before

    @pytest.mark.asyncio
    async def test_not_ready_without_a_server(self) -> None:
        generator = OpenAIHttpGenerator(GeneratorSettings(backend="openai", base_url="http://127.0.0.1:9/v1"))
        try:
            assert not await generator.ready()
        finally:
            await generator.close()
