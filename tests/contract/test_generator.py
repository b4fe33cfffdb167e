"""The Generator port's contract, run against both adapters on the real SmolLM2 model: the in-process vLLM engine,
and OpenAIHttpGenerator against vLLM's OpenAI server in its own process. What only one adapter can show (the
engine's request table, the server's metrics, retries against a failing server) is in
tests/integration/test_generators.py and test_openai_http_retries.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from transformers import AutoTokenizer

from kb.adapters.openai_http import OpenAIHttpGenerator
from kb.adapters.vllm_engine import VllmEngineGenerator
from kb.ports import Generator
from kb.settings import GeneratorSettings
from tests.conftest import SERVER_MAX_MODEL_LEN

# The engine's requests run on the session's event loop (tests/conftest.py).
pytestmark = [pytest.mark.contract, pytest.mark.asyncio(loop_scope="session")]

CHAT = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
]
LONG_CHAT = [{"role": "user", "content": "Write a very long essay about the history of the Roman Empire."}]
# Far more than the deltas read before stopping: without an abort the request would keep running for minutes.
LONG_MAX_TOKENS = 3000
# How the packer joins sources in a prompt (service/ask/prompt.py's SOURCE_SEPARATOR).
SEPARATOR = "\n\n"
SOURCES = [
    "[1] The default upload limit is 100 MB per file; larger files are refused with 413.",
    "[2] Uploads are scanned,\n  then indented:\n\tand tabbed. naïve café costs 12.50 €, see §3.",
    "[3] 知识库中没有关于这个问题的信息。第二句！",
    "[4]  double  space ,punct!? (see) 'quoted' it's\n- item one\n- item two",
]
# Longest a request may take here once the generator is free again (a CPU, shared with other tests).
ANSWER_TIMEOUT_S = 120


@dataclass
class Adapter:
    generator: Generator
    # The same adapter, configured alike but not started (a second engine start would cost a minute).
    unstarted: Callable[[], Generator]
    max_model_len: int


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http_generator(vllm_server: str, generator_model_dir: Path) -> AsyncIterator[OpenAIHttpGenerator]:
    generator = OpenAIHttpGenerator(http_settings(vllm_server), generator_model_dir)
    await generator.start()
    yield generator
    await generator.close()
    assert not await generator.ready()


def http_settings(base_url: str) -> GeneratorSettings:
    return GeneratorSettings(backend="openai", base_url=base_url, max_model_len=SERVER_MAX_MODEL_LEN)


@pytest.fixture(scope="module", params=["in-process-engine", "openai-http"])
def adapter(request: pytest.FixtureRequest, generator_model_dir: Path) -> Adapter:
    if request.param == "in-process-engine":
        return Adapter(
            request.getfixturevalue("vllm_engine"),
            lambda: VllmEngineGenerator(GeneratorSettings(), generator_model_dir),
            GeneratorSettings().max_model_len,
        )
    base_url = request.getfixturevalue("vllm_server")
    return Adapter(
        request.getfixturevalue("http_generator"),
        lambda: OpenAIHttpGenerator(http_settings(base_url), generator_model_dir),
        SERVER_MAX_MODEL_LEN,
    )


async def answer(generator: Generator, messages: list[dict[str, str]], max_tokens: int) -> list[str]:
    async with asyncio.timeout(ANSWER_TIMEOUT_S):
        return [delta async for delta in generator.stream(messages, max_tokens=max_tokens)]


async def test_started_it_is_ready_and_starting_again_changes_nothing(adapter: Adapter) -> None:
    generator = adapter.generator
    assert isinstance(generator, Generator)
    assert await generator.ready()
    await generator.start()
    assert await generator.ready()


async def test_streams_text_deltas_that_join_to_the_answer(adapter: Adapter) -> None:
    generator = adapter.generator
    started = time.perf_counter()
    deltas = await answer(generator, CHAT, 48)
    elapsed = time.perf_counter() - started
    text = "".join(deltas)
    print(f"\nanswer ({generator.count_tokens(text) / elapsed:.1f} tok/s): {text!r}")
    assert all(isinstance(delta, str) and delta for delta in deltas), deltas
    assert len(deltas) >= 3
    assert text.strip()
    assert "paris" in text.lower()


async def test_max_tokens_bounds_the_answer(adapter: Adapter) -> None:
    generator = adapter.generator
    short = await answer(generator, LONG_CHAT, 6)
    longer = await answer(generator, LONG_CHAT, 24)
    # Each delta carries at least one new token.
    assert 1 <= len(short) <= 6
    assert generator.count_tokens("".join(short)) <= 6
    assert len(short) < len(longer) <= 24
    assert generator.count_tokens("".join(longer)) <= 24


async def test_counts_tokens_in_the_models_own_tokenizer(adapter: Adapter, generator_model_dir: Path) -> None:
    generator = adapter.generator
    tokenizer = AutoTokenizer.from_pretrained(generator_model_dir)
    texts = ["The capital of France is Paris.", "", "x", "[12] 中文 文本", *SOURCES]
    assert generator.count_tokens("") == 0
    assert 0 < generator.count_tokens("The capital of France is Paris.") < 20
    for text in texts:
        assert generator.count_tokens(text) == len(tokenizer.encode(text, add_special_tokens=False)), text
    assert generator.count_tokens_many(texts) == [generator.count_tokens(text) for text in texts]
    assert generator.count_tokens_many([]) == []


async def test_counts_between_separators_add_up_to_the_prompt(adapter: Adapter) -> None:
    generator = adapter.generator

    def prompt(sources: list[str]) -> str:  # as service/ask/prompt.py lays out the user's turn
        return "<|im_start|>user\n" + SEPARATOR.join(sources) + SEPARATOR + "Using the text above, answer briefly: why?"

    def rest(sources: list[str]) -> int:
        """The prompt's tokens other than its sources' counts."""
        return generator.count_tokens(prompt(sources)) - sum(generator.count_tokens_many(sources, SEPARATOR))

    counts = generator.count_tokens_many(SOURCES, SEPARATOR)
    assert all(count > 0 for count in counts)
    # One batch counts each text as a call of its own would.
    assert counts == [generator.count_tokens_many([source], SEPARATOR)[0] for source in SOURCES]
    # Whichever sources a prompt holds, in whichever order, they add what they were counted.
    assert len({rest(SOURCES), rest(SOURCES[:1]), rest(SOURCES[2:]), rest(SOURCES[::-1])}) == 1


async def test_max_model_len_is_the_configured_window(adapter: Adapter) -> None:
    assert adapter.generator.max_model_len == adapter.max_model_len > 0


async def test_closing_the_stream_early_leaves_it_serving(adapter: Adapter) -> None:
    generator = adapter.generator
    stream = generator.stream(LONG_CHAT, max_tokens=LONG_MAX_TOKENS)
    seen = 0
    async with asyncio.timeout(ANSWER_TIMEOUT_S), aclosing(stream):
        async for _ in stream:
            seen += 1
            if seen == 2:
                break
    assert seen == 2
    assert "".join(await answer(generator, CHAT, 16)).strip()


async def test_cancelling_the_consumer_leaves_it_serving(adapter: Adapter) -> None:
    generator = adapter.generator
    two_deltas = asyncio.Event()

    async def consume() -> None:
        seen = 0
        async for _ in generator.stream(LONG_CHAT, max_tokens=LONG_MAX_TOKENS):
            seen += 1
            if seen == 2:
                two_deltas.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two_deltas.wait(), timeout=ANSWER_TIMEOUT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "".join(await answer(generator, CHAT, 16)).strip()


async def test_closed_it_is_not_ready_and_streams_nothing(adapter: Adapter) -> None:
    # A started one is closed at the end of the session and checked the same way (tests/conftest.py, above).
    generator = adapter.unstarted()
    await generator.close()
    await generator.close()
    assert not await generator.ready()
    with pytest.raises(RuntimeError):
        await anext(generator.stream(CHAT))


CONTRACT_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population_millions": {"type": "number"}},
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}


async def test_a_json_schema_constrains_the_answer_to_valid_json_of_it(adapter: Adapter) -> None:
    """Structured outputs (guided decoding) on both adapters: however small the model, the text is JSON that
    validates against the schema, and no stop string of the settings cuts it."""
    import json

    from jsonschema import validate

    chat = [{"role": "user", "content": "Which city is the capital of France, and how many people live there?"}]
    async with asyncio.timeout(ANSWER_TIMEOUT_S):
        text = "".join([d async for d in adapter.generator.stream(chat, 120, json_schema=CONTRACT_SCHEMA)])
    data = json.loads(text)
    validate(data, CONTRACT_SCHEMA)
    assert set(data) == {"city", "country", "population_millions"}
