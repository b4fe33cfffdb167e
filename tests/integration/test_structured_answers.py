"""Structured answers through the doors a client uses (issue 17): POST /v1/ask and the OpenAI-compatible route take a
JSON Schema (`response_format`), the real CPU engine decodes under it, and the answer comes back as JSON valid
against it, with its citations; an invalid schema is a 422 before anything runs. The app is served in this process
with the session's engine lent to it (no second engine start)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
from jsonschema import validate

from kb.adapters.vllm_engine import VllmEngineGenerator
from kb.settings import GeneratorSettings, Settings
from service.app import create_app
from tests.support import serve_in_process

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CONTRACT = (
    "Services Agreement. This agreement is made on 1 March 2026 between Acme Corporation, of Leeds, and Globex "
    "Limited, of Bristol. Globex Limited provides the cleaning of the Leeds offices. Acme Corporation pays Globex "
    "Limited 120,000 euros a year, in monthly parts. The agreement runs until 28 February 2028."
)
SCHEMA = {
    "type": "object",
    "properties": {
        "parties": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
        "signed_on": {"type": "string"},
        "yearly_amount": {"type": "string"},
    },
    "required": ["parties", "signed_on", "yearly_amount"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "contract", "schema": SCHEMA}}
QUESTION = "Extract the parties, the date and the yearly amount of the services agreement."


@dataclass
class Deployment:
    url: str
    headers: dict[str, str]
    document_id: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployment(tmp_path_factory: pytest.TempPathFactory, vllm_engine: VllmEngineGenerator
                     ) -> AsyncIterator[Deployment]:  # fmt: skip
    settings = Settings(data_dir=tmp_path_factory.mktemp("structured"),
                        generator=GeneratorSettings(enabled=False, max_answer_tokens=120))  # fmt: skip
    app = create_app(settings, with_generator=False)
    async with serve_in_process(app) as url:
        services = app.state.services
        services.container.generator = vllm_engine  # lent: the session fixture closes it, not the app
        try:
            await services.start_generator()
            headers = {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
                upload = await client.post("/v1/documents", files={"files": ("services-agreement.txt", CONTRACT.encode())})
                assert upload.status_code == 202, upload.text
                document_id = upload.json()["documents"][0]["document_id"]
                deadline = time.monotonic() + 120
                while (await client.get(f"/v1/documents/{document_id}")).json()["status"] != "ready":
                    assert time.monotonic() < deadline, "the contract was not ingested"
                    await asyncio.sleep(0.2)
            yield Deployment(url, headers, document_id)
        finally:
            services.container.generator = None


def check_structured(body: dict, document_id: str) -> None:
    """The answer is JSON valid against the schema, `data` is it parsed, and it cites the contract."""
    data = json.loads(body["answer"])
    validate(data, SCHEMA)
    assert body["data"] == data
    assert body["mode"] == "generate"
    assert body["citations"], body  # its values are the contract's words: each value is cited like a sentence
    assert {c["document_id"] for c in body["citations"]} == {document_id}


async def test_ask_returns_json_valid_against_the_schema_with_citations(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url, headers=deployment.headers, timeout=300) as client:
        response = await client.post("/v1/ask", json={"question": QUESTION, "response_format": FORMAT})
        assert response.status_code == 200, response.text
        check_structured(response.json(), deployment.document_id)

        # Streamed: the JSON comes whole as one token, then the citations, then `done` with the parsed `data`.
        events: list[tuple[str, dict]] = []
        async with client.stream("POST", "/v1/ask", json={"question": QUESTION, "response_format": FORMAT,
                                                          "stream": True}) as stream:  # fmt: skip
            assert stream.status_code == 200
            name = ""
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((name, json.loads(line.split(":", 1)[1])))
        names = [n for n, _ in events]
        assert names == ["token", "citations", "done"], names
        done = events[-1][1]
        assert events[0][1]["text"] == done["answer"]
        check_structured({**done, "citations": events[1][1]["citations"]}, deployment.document_id)


async def test_the_openai_client_gets_the_json_as_its_message(deployment: Deployment) -> None:
    from openai import AsyncOpenAI

    key = deployment.headers["Authorization"].split()[1]
    client = AsyncOpenAI(base_url=f"{deployment.url}/v1", api_key=key, timeout=300, max_retries=0)
    completion = await client.chat.completions.create(
        model="kb", messages=[{"role": "user", "content": QUESTION}], response_format=FORMAT  # type: ignore[arg-type]
    )
    content = completion.choices[0].message.content or ""
    validate(json.loads(content), SCHEMA)  # the content is the JSON alone: no source list appended
    citations = completion.model_extra["citations"]  # type: ignore[index]
    assert citations and {c["document_id"] for c in citations} == {deployment.document_id}


@pytest.mark.parametrize(
    ("response_format", "reason"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}, "not a valid JSON Schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": "parties"}}},
         "not a valid JSON Schema at required"),
        ({"type": "json_schema"}, "json_schema is required"),
        ({"type": "yaml"}, "must be 'text' or 'json_schema'"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
            f"field_{i}": {"type": "string", "description": "x" * 200} for i in range(100)}}}}, "larger than"),
    ],
)  # fmt: skip
async def test_an_invalid_schema_is_a_422_before_anything_runs(deployment: Deployment, response_format: dict,
                                                               reason: str) -> None:  # fmt: skip
    async with httpx.AsyncClient(base_url=deployment.url, headers=deployment.headers, timeout=60) as client:
        started = time.perf_counter()
        response = await client.post("/v1/ask", json={"question": QUESTION, "response_format": response_format})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert reason in response.json()["detail"], response.json()
        assert time.perf_counter() - started < 10  # refused up front: no retrieval or generation ran
        openai = await client.post("/v1/chat/completions", json={
            "model": "kb", "messages": [{"role": "user", "content": QUESTION}], "response_format": response_format})
        assert openai.status_code == 422, openai.text
        error = openai.json()["error"]
        assert reason in error["message"] and error["param"] == "response_format"
