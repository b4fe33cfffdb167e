"""Degrade, don't die, end to end: kb answering through a real vLLM OpenAI server process (CPU, SmolLM2, started as the
shared `vllm_server` fixture starts it), with the in-process engine as its fallback (KB_GENERATOR__FALLBACK=engine).
While questions keep coming through every door, the server is killed in the middle of an answer, then started again:
no question fails, the answer cut mid-stream is continued by the fallback without a repeated word, the answers during
the outage say `degraded: true` (the web page shows a note under them), and /metrics and /readyz show the breaker
open and close again.

One server process (started twice) and one fallback engine for the module; the app runs in this process (uvicorn),
so the test reads the breaker's state too."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from httpx_sse import aconnect_sse
from playwright.async_api import async_playwright

from kb.settings import AnswerSettings, AuthSettings, GeneratorSettings, Settings
from service.app import create_app
from tests.browser import CHROMIUM, LAUNCH_ARGS, require_chromium
from tests.support import free_port, log_tail, serve_in_process, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SERVER_MAX_MODEL_LEN = 4096  # as the shared vllm_server fixture serves it
SERVER_START_TIMEOUT_S = 300.0
NOTE = (
    "# Office guide\n\nThe office opens at 08:00 and closes at 19:00 on working days. Visitors sign in at the front "
    "desk and wear a badge. The canteen serves lunch from 11:30 to 14:00, and coffee is free all day. Parking is in "
    "the basement; bicycles go in the courtyard. The library on the second floor lends books for two weeks.\n"
)
QUESTION = "Describe in great detail everything about the office: opening hours, visitors, the canteen and coffee."
QUESTIONS = [
    "When does the office open?",
    "When is lunch served in the canteen?",
    "Where do visitors sign in?",
    "How long does the library lend books?",
]
BREAKER_RESET_S = 4.0


class ServerProcess:
    """vLLM's OpenAI server (the command and environment of the shared `vllm_server` fixture) on a fixed port, so that
    a test can kill it and start it again where kb expects it."""

    def __init__(self, model_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        # Taken now: the fallback engine later sets vLLM variables in this process that the server must not inherit.
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"},  # see the vllm_server fixture
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        }
        self.command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", GeneratorSettings().served_model_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "bfloat16", "--max-model-len", str(SERVER_MAX_MODEL_LEN), "--enforce-eager",
        ]  # fmt: skip

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            # Own session: the server and the EngineCore process it spawns are signalled together.
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)  # fmt: skip

    async def wait_healthy(self) -> float:
        """Seconds until /health answers 200 (the event loop keeps running: kb answers meanwhile)."""
        assert self.process is not None
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() - started < SERVER_START_TIMEOUT_S:
                if self.process.poll() is not None:
                    pytest.fail(f"vLLM server exited with {self.process.returncode}:\n{log_tail(self.log_path)}")
                try:
                    if (await client.get(f"http://127.0.0.1:{self.port}/health")).status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass  # not listening yet
                await asyncio.sleep(0.5)
        pytest.fail(f"vLLM server not healthy after {SERVER_START_TIMEOUT_S:.0f}s:\n{log_tail(self.log_path)}")

    def kill(self) -> None:
        """As a machine that loses its GPU: no goodbye, connections cut."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)


@pytest.fixture(scope="module")
def gpu_server(generator_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(generator_model_dir, tmp_path_factory.mktemp("gpu_server") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Deployment:
    url: str
    app: Any
    server: ServerProcess
    ready_s: float

    @property
    def generator(self) -> Any:
        return self.app.state.services.container.generator


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(
    gpu_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory, generator_model_dir: Path
) -> AsyncIterator[Deployment]:
    await gpu_server.wait_healthy()
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fallback"),
        auth=AuthSettings(enabled=False),
        # Written answers only: a replaced answer's quoted evidence would blur what the tokens spelled.
        answers=AnswerSettings(mode="generate"),
        generator=GeneratorSettings(
            backend="openai", base_url=gpu_server.base_url, model=str(generator_model_dir),
            max_model_len=SERVER_MAX_MODEL_LEN, fallback="engine", breaker_failures=2,
            breaker_reset_s=BREAKER_RESET_S, breaker_timeout_s=15.0,
            # Answers that last seconds, so that the server can be killed in the middle of one.
            max_answer_tokens=160, stop=[],
        ),  # fmt: skip
    )
    app = create_app(settings)
    started = time.monotonic()
    async with serve_in_process(app) as url:
        ready_s = time.monotonic() - started
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            upload = await client.post("/v1/documents", files={"files": ("office.md", NOTE.encode(), "text/markdown")})
            assert upload.status_code == 202, upload.text
            document_id = upload.json()["documents"][0]["document_id"]
            deadline = time.monotonic() + 300
            while (status := (await client.get(f"/v1/documents/{document_id}")).json()["status"]) != "ready":
                assert status in ("queued", "processing") and time.monotonic() < deadline, status
                await asyncio.sleep(0.3)
        yield Deployment(url, app, gpu_server, ready_s)


@dataclass
class Asked:
    door: str
    at: float
    degraded: bool | None = None
    error: str | None = None


@dataclass
class QuestionStream:
    """Questions one after another through the three doors, until stopped: what each answer said."""

    client: httpx.AsyncClient
    asked: list[Asked] = field(default_factory=list)
    stopping: bool = False

    async def run(self) -> None:
        n = 0
        while not self.stopping:
            door = ("ask", "ask-sse", "chat", "chat-sse")[n % 4]
            question = QUESTIONS[n % len(QUESTIONS)]
            n += 1
            record = Asked(door, time.monotonic())
            try:
                record.degraded = await ask(self.client, door, question)
            except Exception as exc:  # recorded: the test asserts that there is none
                record.error = f"{type(exc).__name__}: {exc}"
            self.asked.append(record)
            await asyncio.sleep(0.2)


async def ask(client: httpx.AsyncClient, door: str, question: str) -> bool:
    """One question through `door`; its answer's `degraded`. Raises on any failure."""
    if door == "ask":
        response = await client.post("/v1/ask", json={"question": question})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["answer"].strip(), body
        return body["degraded"]
    if door == "ask-sse":
        events = await sse(client, "/v1/ask", {"question": question, "stream": True})
        assert [name for name, _ in events if name == "error"] == [], events
        (done,) = [data for name, data in events if name == "done"]
        assert done["answer"].strip(), done
        return done["degraded"]
    body: dict[str, Any] = {"model": "kb", "messages": [{"role": "user", "content": question}]}
    if door == "chat":
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        completion = response.json()
        assert completion["choices"][0]["message"]["content"].strip(), completion
        return completion["degraded"]
    chunks = [data for _, data in await sse(client, "/v1/chat/completions", {**body, "stream": True})]
    assert chunks[-1] == "[DONE]" and not any(isinstance(c, dict) and "error" in c for c in chunks), chunks
    (last_content,) = [c for c in chunks if isinstance(c, dict) and "citations" in c]
    return last_content["degraded"]


async def sse(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    async with aconnect_sse(client, "POST", path, json=body) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for event in source.aiter_sse():
            events.append((event.event, event.data if event.data == "[DONE]" else json.loads(event.data)))
    return events


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    """A sample of /metrics (0 where it is not there yet)."""
    text = (await client.get("/metrics")).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


async def until(condition: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        await asyncio.sleep(0.5)


async def test_warm_start_before_ready(deployment: Deployment) -> None:
    """/readyz turned ready only after one embedding, one query, and one generation on the fallback engine."""
    container = deployment.app.state.services.container
    assert container.retrieval_warm and set(container.warm_start_s) == {"retrieval", "generator"}
    assert deployment.generator.fallback.engine is not None  # the fallback engine started with the app
    async with httpx.AsyncClient(base_url=deployment.url, timeout=30) as client:
        ready = (await client.get("/readyz")).json()
        assert ready == {"ready": True, "degraded": False, "checks": {"registry": "ok", "index": "ok", "blobs": "ok",
                                                                      "generator": "ok"}}, ready  # fmt: skip
        for part in ("retrieval", "generator"):
            assert await metric(client, "kb_warm_start_seconds", part=part) > 0
    print(f"\nkb with a fallback engine: ready {deployment.ready_s:.1f} s after start ({container.warm_start_s})")


async def test_the_server_goes_away_mid_answer_and_comes_back_and_no_question_fails(deployment: Deployment) -> None:
    server, breaker = deployment.server, deployment.generator
    async with httpx.AsyncClient(base_url=deployment.url, timeout=120) as client:
        # Healthy: the server answers, the breaker is closed.
        assert await ask(client, "ask", QUESTIONS[0]) is False
        assert await metric(client, "kb_generator_breaker_state", generator="openai") == 0
        opened_before = await metric(client, "kb_generator_breaker_transitions_total", generator="openai",
                                     state="opened")  # fmt: skip
        closed_before = await metric(client, "kb_generator_breaker_transitions_total", generator="openai",
                                     state="closed")  # fmt: skip
        mid_before = await metric(client, "kb_generator_fallback_answers_total", generator="openai",
                                  fallback="engine", reason="failed_mid_answer")  # fmt: skip

        questions = QuestionStream(client)
        loop = asyncio.create_task(questions.run())
        try:
            # The server dies while it writes an answer: the fallback continues it.
            tokens: list[str] = []
            killed_after = ""
            async with aconnect_sse(client, "POST", "/v1/ask", json={"question": QUESTION, "stream": True}) as source:
                assert source.response.status_code == 200
                events = []
                async for event in source.aiter_sse():
                    data = json.loads(event.data)
                    events.append((event.event, data))
                    if event.event == "token":
                        tokens.append(data["text"])
                        if len("".join(tokens)) >= 20 and not killed_after:
                            killed_after = "".join(tokens)
                            server.kill()
            killed_at = time.monotonic()
            assert killed_after, "the answer ended before the server could be killed in its middle"
            assert [name for name, _ in events if name == "error"] == [], events
            done = events[-1][1]
            assert events[-1][0] == "done" and done["degraded"] is True, events[-1]
            streamed = "".join(tokens)
            assert streamed.startswith(killed_after) and len(streamed) > len(killed_after), streamed
            # Continued, not started again: what follows the kill does not repeat the answer's beginning.
            continued = streamed[len(killed_after) :].lstrip()
            assert not continued.startswith(killed_after.strip()[:12]), f"text sent twice: {streamed!r}"
            assert await metric(client, "kb_generator_fallback_answers_total", generator="openai", fallback="engine",
                                reason="failed_mid_answer") >= mid_before + 1  # fmt: skip

            # Down: the breaker opens; the service stays ready, degraded, and says so.
            async def is_open() -> bool:
                return await metric(client, "kb_generator_breaker_state", generator="openai") == 2

            await until(is_open, "the breaker opens", 120)
            assert await metric(client, "kb_generator_breaker_transitions_total", generator="openai",
                                state="opened") > opened_before  # fmt: skip
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["degraded"] is True
            assert ready.json()["checks"]["generator"].startswith("degraded: the breaker to the generator server is")
            # The web page says it under the answer.
            note = await page_note(deployment.url, QUESTIONS[1])
            assert note.startswith("Answered by the small fallback model"), note
            await until(lambda: _answered_since(questions, killed_at + 1, 4), "four answers during the outage", 300)

            # Back: started again on the same port; a probe after the reset time closes the breaker.
            back_at = time.monotonic()  # from here on an answer may come from the server again
            server.start()
            restart_s = await server.wait_healthy()

            async def is_closed() -> bool:
                return await metric(client, "kb_generator_breaker_state", generator="openai") == 0

            await until(is_closed, "the breaker closes once the server is back", 120)
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["degraded"] is False, ready.text
            assert ready.json()["checks"]["generator"] == "ok"
            assert await metric(client, "kb_generator_breaker_transitions_total", generator="openai",
                                state="closed") > closed_before  # fmt: skip
            closed_at = time.monotonic()
            await until(lambda: _answered_since(questions, closed_at, 2), "two answers after the breaker closed", 120)
        finally:
            questions.stopping = True
            await loop

    assert [a for a in questions.asked if a.error] == [], "questions failed"
    outage = [a for a in questions.asked if killed_at + 1 < a.at < back_at]
    after = [a for a in questions.asked if a.at > closed_at]
    assert outage and all(a.degraded for a in outage), outage
    assert after and not any(a.degraded for a in after), after
    assert {a.door for a in outage} == {"ask", "ask-sse", "chat", "chat-sse"}, outage
    print(f"\n{len(questions.asked)} questions, {len(outage)} during the outage; server restart {restart_s:.0f} s")


async def page_note(url: str, question: str) -> str:
    """The note under the web page's answer to `question` (async Playwright: the app shares this event loop)."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(url)
            await page.wait_for_selector("#key-box[data-state=signed-in]")
            await page.fill("#question", question)
            await page.press("#question", "Enter")
            answer = ".turn:nth-child(1) .answer"
            await page.wait_for_selector(f"{answer}:is([data-state=done], [data-state=error])", timeout=300_000)
            assert await page.get_attribute(answer, "data-state") == "done", await page.inner_text(answer)
            assert await page.get_attribute(answer, "data-degraded") == "true"
            assert await page.is_visible(".turn:nth-child(1) .note")
            return await page.inner_text(".turn:nth-child(1) .note")
        finally:
            await browser.close()


async def _answered_since(questions: QuestionStream, since: float, count: int) -> bool:
    return len([a for a in questions.asked if a.at > since]) >= count
