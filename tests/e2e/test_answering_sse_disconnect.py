"""A reader who closes the page mid-answer: the streamed /v1/ask's vLLM request is aborted, not left generating.

The app runs in this process (uvicorn, every part real: upload, parsing, embedding, Qdrant Edge, SQLite, the
in-process vLLM engine), so that the engine itself can be asked what it still runs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import structlog

from kb.settings import AuthSettings, GeneratorSettings, Settings
from service.app import create_app
from tests.support import access_lines, serve_in_process

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

NOTE = (
    "# Office guide\n\nThe office opens at 08:00 and closes at 19:00 on working days. Visitors sign in at the front "
    "desk and wear a badge. The canteen serves lunch from 11:30 to 14:00, and coffee is free all day.\n"
)
QUESTION = "Describe in great detail everything about the office: opening hours, visitors, the canteen and coffee."


@dataclass
class Running:
    url: str
    app: Any

    @property
    def engine(self) -> Any:
        return self.app.state.services.container.generator.engine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory, generator_model_dir: Path) -> AsyncIterator[Running]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("disconnect"),
        auth=AuthSettings(enabled=False),
        # Room for a long answer: without an abort it would keep the engine busy for a minute.
        generator=GeneratorSettings(model=str(generator_model_dir), max_answer_tokens=2000, stop=[]),
    )
    app = create_app(settings)
    async with serve_in_process(app) as url:
        deadline = time.monotonic() + 300
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            upload = await client.post("/v1/documents", files={"files": ("office.md", NOTE.encode(), "text/markdown")})
            assert upload.status_code == 202, upload.text
            document_id = upload.json()["documents"][0]["document_id"]
            while (status := (await client.get(f"/v1/documents/{document_id}")).json()["status"]) in (
                "queued", "processing"
            ):
                assert time.monotonic() < deadline, f"document still {status}"
                await asyncio.sleep(0.5)
            assert status == "ready"
        yield Running(url, app)


async def test_a_client_that_disconnects_aborts_its_generation(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = running.engine
    aborted: list[Any] = []
    original_abort = engine.abort

    async def recording_abort(request_id: Any, *args: Any, **kwargs: Any) -> None:
        aborted.append(request_id)
        await original_abort(request_id, *args, **kwargs)

    monkeypatch.setattr(engine, "abort", recording_abort)
    tokens = 0
    request_id = uuid.uuid4().hex
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with httpx.AsyncClient(base_url=running.url, timeout=120) as client:
            async with client.stream("POST", "/v1/ask", json={"question": QUESTION, "stream": True},
                                     headers={"X-Request-ID": request_id}) as response:  # fmt: skip
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("event:") and line.split(":", 1)[1].strip() == "token":
                        tokens += 1
                        if tokens == 3:
                            assert engine.get_num_unfinished_requests() == 1
                            break  # leaving both blocks closes the connection, as a closed browser tab does

        deadline = time.monotonic() + 30
        while engine.get_num_unfinished_requests() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert engine.get_num_unfinished_requests() == 0
        assert aborted, "the request left the engine without an abort: it ran to its end"
        lines = await access_lines(logs, request_id)
    # The dropped stream still leaves its one access line, marked as such, with the status that was sent.
    assert len(lines) == 1, logs
    assert lines[0]["disconnected"] is True and lines[0]["status"] == 200 and lines[0]["path"] == "/v1/ask"

    # The server goes on answering others.
    async with httpx.AsyncClient(base_url=running.url, timeout=300) as client:
        answer = (await client.post("/v1/ask", json={"question": "When does the office open?"})).json()
    assert answer["grounded"] is True and answer["answer"].strip()
