"""The OpenAI-compatible routes through the official `openai` SDK: errors in OpenAI's shape with the right status
(so the SDK raises the right exception with kb's reason), and, against the real in-process vLLM engine (the shared
session fixture), `usage` filled and the same [n] markers streamed as returned whole."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio
from litestar.testing import TestClient

from kb.adapters.vllm_engine import VllmEngineGenerator
from kb.settings import GeneratorSettings, RateLimitSettings, Settings
from service.app import create_app
from tests.support import serve_in_process

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "kb-administrator-guide.pdf"
QUESTION = "What is the default upload size limit?"
ERROR_FIELDS = {"message", "type", "code", "param"}


def sdk(client: TestClient, key: str) -> openai.OpenAI:
    """The SDK over the app in this process (TestClient is an httpx.Client)."""
    return openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=key, http_client=client, max_retries=0)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("openai"), generator=GeneratorSettings(enabled=False))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(settings, with_generator=False), timeout=120) as test_client:
        yield test_client


def admin(settings: Settings) -> str:
    return settings.admin_key_path.read_text().strip()


def new_key(client: TestClient, settings: Settings, scopes: list[str]) -> str:
    response = client.post("/v1/keys", json={"name": "sdk", "scopes": scopes, "groups": ["staff"]},
                           headers={"Authorization": f"Bearer {admin(settings)}"})  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["key"]


def openai_error(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    return body["error"]


def test_errors_come_in_openais_shape_and_the_sdk_shows_the_reason(client: TestClient, settings: Settings) -> None:
    ask = [{"role": "user", "content": QUESTION}]
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(client, "kb_not_a_key").models.list()
    assert refused.value.status_code == 401 and "unknown or revoked" in refused.value.message
    assert openai_error(refused.value.response)["type"] == "authentication_error"

    searcher = new_key(client, settings, ["search"])
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        sdk(client, searcher).chat.completions.create(model="kb", messages=ask)
    assert "ask" in forbidden.value.message and openai_error(forbidden.value.response)["type"] == "permission_error"

    asker = sdk(client, new_key(client, settings, ["ask"]))
    assert [m.id for m in asker.models.list()] == ["kb"]
    with pytest.raises(openai.NotFoundError) as no_model:
        asker.chat.completions.create(model="gpt-4o", messages=ask)
    error = openai_error(no_model.value.response)
    assert error["code"] == "model_not_found" and error["param"] == "model" and "gpt-4o" in error["message"]

    with pytest.raises(openai.BadRequestError) as no_question:
        asker.chat.completions.create(model="kb", messages=[{"role": "assistant", "content": "hello"}])
    assert openai_error(no_question.value.response)["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as invalid:
        asker.chat.completions.create(model="kb", messages="not a list")  # type: ignore[arg-type]
    error = openai_error(invalid.value.response)
    assert error["type"] == "invalid_request_error" and error["param"] and "messages" in error["message"]

    # The generator is off here: 503 with the reason and when to come back.
    with pytest.raises(openai.InternalServerError) as unavailable:
        asker.chat.completions.create(model="kb", messages=ask)
    assert unavailable.value.status_code == 503 and "generator" in unavailable.value.message
    assert unavailable.value.response.headers["retry-after"]
    assert openai_error(unavailable.value.response)["type"] == "server_error"


def test_the_rest_of_the_api_keeps_its_problem_details(client: TestClient) -> None:
    for response in (client.get("/v1/documents"), client.post("/v1/search", json={"query": 1})):
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "error" not in response.json() and response.json()["status"] in (400, 401)


def test_a_rate_limited_client_gets_429_in_openais_shape(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, generator=GeneratorSettings(enabled=False),
                        rate_limit=RateLimitSettings(requests=3, window="minute"))  # fmt: skip
    with TestClient(app=create_app(settings, with_generator=False)) as limited:
        client = sdk(limited, admin(settings))
        with pytest.raises(openai.RateLimitError) as too_many:
            for _ in range(5):
                client.models.list()
    assert openai_error(too_many.value.response)["type"] == "rate_limit_error"
    assert too_many.value.response.headers["retry-after"]


# Against the real engine: one app for the module, the session's in-process engine lent to it.


@dataclass
class Served:
    url: str
    key: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(tmp_path_factory: pytest.TempPathFactory, vllm_engine: VllmEngineGenerator) -> AsyncIterator[Served]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("openai-engine"), generator=GeneratorSettings(enabled=False),
                        rate_limit=RateLimitSettings(enabled=False))  # fmt: skip
    app = create_app(settings, with_generator=False)
    async with serve_in_process(app) as url:
        services = app.state.services
        services.container.generator = vllm_engine  # lent: the session fixture closes it, not the app
        try:
            await services.start_generator()
            key = admin(settings)
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
                uploaded = await http.post("/v1/documents", files={"files": (SAMPLE.name, SAMPLE.read_bytes())})
                document_id = uploaded.json()["documents"][0]["document_id"]
                deadline = time.monotonic() + 180
                while (await http.get(f"/v1/documents/{document_id}")).json()["status"] != "ready":
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            yield Served(url, key)
        finally:
            services.container.generator = None


MARKER = re.compile(r"\[(\d+)\]")


@pytest.mark.asyncio(loop_scope="session")
async def test_usage_is_filled_whole_and_in_the_last_streamed_chunk(served: Served) -> None:
    client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=served.key, max_retries=0, timeout=300)
    ask = [{"role": "user", "content": QUESTION}]
    whole = await client.chat.completions.create(model="kb", messages=ask)
    text = whole.choices[0].message.content or ""
    assert (whole.model_extra or {})["citations"] and "100 MB" in text
    assert whole.usage is not None and whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    stream = await client.chat.completions.create(model="kb", messages=ask, stream=True,
                                                  stream_options={"include_usage": True})  # fmt: skip
    chunks = [chunk async for chunk in stream]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "100 MB" in streamed and "Sources:" in streamed
    # The last chunk: no choices, the usage of the whole completion; the chunks before it carry none.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    # Without stream_options, no usage chunk (as OpenAI).
    plain = [chunk async for chunk in await client.chat.completions.create(model="kb", messages=ask, stream=True)]
    assert plain[-1].choices and plain[-1].choices[0].finish_reason == "stop" and plain[-1].usage is None


@pytest.mark.asyncio(loop_scope="session")
async def test_the_stream_carries_the_same_markers_as_the_whole_answer(served: Served) -> None:
    client = openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key=served.key, max_retries=0, timeout=300)
    ask = [{"role": "user", "content": QUESTION}]
    whole = await client.chat.completions.create(model="kb", messages=ask)
    text = whole.choices[0].message.content or ""
    citations = (whole.model_extra or {})["citations"]
    answer = text.split("\n\nSources:")[0]
    assert citations and {int(n) for n in MARKER.findall(answer)} == {c["n"] for c in citations}
    chunks = [chunk async for chunk in await client.chat.completions.create(model="kb", messages=ask, stream=True)]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The same answer, markers included, as the whole one (greedy decoding: the same words).
    assert streamed == text, (streamed, text)
