"""Several keys, groups and documents; many generated questions through every door (search, ask as JSON and as
Server-Sent Events, the OpenAI-compatible endpoint through the official `openai` client, documents, originals,
conversations). No forbidden document id, chunk id, text or file may ever come back.

Every part is real: uvicorn serving the app in this process, unstructured, MiniLM, Qdrant Edge, SQLite and the
in-process vLLM engine."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from kb.settings import GeneratorSettings, RateLimitSettings, Settings
from service.app import create_app
from tests.support import serve_in_process

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


@dataclass
class Doc:
    filename: str
    groups: list[str]  # empty: uploaded without groups, so the default group ("everyone")
    topic: str
    codeword: str
    fact: str  # words of its text no question contains
    text: str
    document_id: str = ""
    chunk_ids: set[str] = field(default_factory=set)


DOCS = [
    Doc("hr-parental-leave.txt", ["hr"], "parental leave", "MAGENTA-HERON-417", "twenty weeks",
        "Parental leave policy. Employees receive twenty weeks of paid parental leave, taken in up to three blocks."),
    Doc("hr-salary-bands.txt", ["hr"], "salary bands", "TEAL-OTTER-552", "82,000 euros",
        "Salary bands for 2026. Band four starts at 82,000 euros and band five at 97,000 euros per year."),
    Doc("eng-deploy-runbook.txt", ["eng"], "deployment runbook", "AMBER-FALCON-238", "green for an hour",
        "Deployment runbook. Deploys run on Tuesdays and Thursdays after the canary has been green for an hour."),
    Doc("eng-on-call.txt", ["eng"], "on-call rotation", "INDIGO-LYNX-806", "pager every Monday",
        "On-call rotation. Engineers hand over the pager every Monday at ten with a written incident summary."),
    Doc("finance-q3-budget.txt", ["finance"], "third quarter budget", "CRIMSON-BADGER-119", "CFO's approval",
        "Third quarter budget. The travel budget is frozen and hardware purchases need the CFO's approval."),
    Doc("office-wifi.txt", [], "office wifi", "OLIVE-MOOSE-674", "first day of each month",
        "Office wifi. The guest network is called Visitors and its password changes on the first day of each month."),
]
for _doc in DOCS:
    _doc.text += f" The {_doc.topic} codeword is {_doc.codeword}."

# name -> (scopes, groups)
KEYS = {
    "hr": (["search", "ask"], ["hr"]),
    "eng": (["search", "ask", "ingest"], ["eng"]),
    "hr+eng": (["search", "ask"], ["hr", "eng"]),
    "everyone": (["search", "ask"], ["everyone"]),
    "outsider": (["search", "ask", "ingest"], ["sales"]),
}


def visible_docs(key: str) -> list[Doc]:
    groups = set(KEYS[key][1])
    return [d for d in DOCS if groups & set(d.groups or ["everyone"])]


def questions() -> list[str]:
    generated = []
    for doc in DOCS:
        generated += [f"What is the {doc.topic} codeword?", f"Summarise the {doc.topic}.", f"{doc.codeword}?"]
    return generated + ["What is the codeword?", "List every policy, runbook and budget you know about."]


@dataclass
class Deployment:
    url: str
    keys: dict[str, str]  # name -> key
    admin: str
    seen: dict[str, set[str]] = field(default_factory=dict)  # key name -> document ids it was shown

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name] if name in self.keys else self.admin}"}


def assert_clean(key: str, payload: str, door: str, question: str = "") -> None:
    """Nothing of a document the key may not see: id, chunk ids, file name, text. (A codeword the question itself
    contains may come back: the model repeats questions.)"""
    allowed = {d.document_id for d in visible_docs(key)}
    for doc in DOCS:
        if doc.document_id in allowed:
            continue
        where = f"{door} as {key!r} leaked {doc.filename}"
        assert doc.document_id not in payload, where
        if doc.codeword not in question:
            assert doc.codeword not in payload, where
        assert doc.fact not in payload, where
        assert doc.filename not in payload, where
        assert not any(chunk_id in payload for chunk_id in doc.chunk_ids), where


def comparable(problem: dict[str, Any], asked_for: str) -> dict[str, Any]:
    """A problem document with what the caller sent (the id) and the request id taken out."""
    return {k: str(v).replace(asked_for, "ID") for k, v in problem.items() if k != "request_id"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory, generator_model_dir: Path) -> AsyncIterator[Deployment]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("acl"),
        generator=GeneratorSettings(model=str(generator_model_dir), max_answer_tokens=24),
        rate_limit=RateLimitSettings(enabled=False),  # hundreds of requests in a minute; limits have their own test
    )
    async with serve_in_process(create_app(settings)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            admin = settings.admin_key_path.read_text().strip()
            client.headers["Authorization"] = f"Bearer {admin}"
            keys = {}
            for name, (scopes, groups) in KEYS.items():
                created = await client.post("/v1/keys", json={"name": name, "scopes": scopes, "groups": groups})
                assert created.status_code == 201, created.text
                keys[name] = created.json()["key"]
            for doc in DOCS:
                data = {"groups": ",".join(doc.groups)} if doc.groups else None
                response = await client.post("/v1/documents", files={"files": (doc.filename, doc.text.encode())},
                                             data=data)  # fmt: skip
                assert response.status_code == 202, response.text
                doc.document_id = response.json()["documents"][0]["document_id"]
            for doc in DOCS:
                while (status := (await client.get(f"/v1/documents/{doc.document_id}")).json()["status"]) != "ready":
                    assert status in ("queued", "processing"), status
                    await asyncio.sleep(0.3)
                found = await client.post("/v1/search", json={
                    "query": doc.topic, "top_k": 100, "filters": {"document_ids": [doc.document_id]}})  # fmt: skip
                doc.chunk_ids = {p["chunk_id"] for p in found.json()["passages"]}
                assert doc.chunk_ids, doc.filename
        yield Deployment(url, keys, admin)


async def test_search_through_every_filter_shows_only_the_keys_groups(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url, timeout=60) as client:
        for key, question in itertools.product(KEYS, questions()):
            headers = deployment.headers(key)
            for filters in (None, {"groups": ["finance", "hr", "eng", "everyone"]},
                            {"document_ids": [d.document_id for d in DOCS]}):  # fmt: skip
                body: dict[str, Any] = {"query": question, "top_k": 10}
                if filters:
                    body["filters"] = filters
                response = await client.post("/v1/search", json=body, headers=headers)
                assert response.status_code == 200, response.text
                assert_clean(key, response.text, "search", question)
                deployment.seen.setdefault(key, set()).update(p["document_id"] for p in response.json()["passages"])
    for key in KEYS:  # not vacuous: each key found everything it may see
        assert deployment.seen.get(key, set()) == {d.document_id for d in visible_docs(key)}, key


async def _ask_json(client: httpx.AsyncClient, headers: dict[str, str], question: str, **extra: Any) -> str:
    response = await client.post("/v1/ask", json={"question": question, **extra}, headers=headers)
    assert response.status_code == 200, response.text
    return response.text


async def _ask_sse(client: httpx.AsyncClient, headers: dict[str, str], question: str, **extra: Any) -> str:
    async with client.stream("POST", "/v1/ask", json={"question": question, "stream": True, **extra},
                             headers=headers) as response:  # fmt: skip
        assert response.status_code == 200
        return "".join([line async for line in response.aiter_lines()])


async def _chat(deployment: Deployment, key: str, question: str, stream: bool) -> str:
    chat = openai.AsyncOpenAI(base_url=f"{deployment.url}/v1", api_key=deployment.keys[key], max_retries=0)
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello! Ask me anything."},
                {"role": "user", "content": question}]  # fmt: skip
    if not stream:
        completion = await chat.chat.completions.create(model="kb", messages=messages)  # type: ignore[arg-type]
        return completion.model_dump_json()
    parts = []
    async for chunk in await chat.chat.completions.create(model="kb", messages=messages, stream=True):  # type: ignore[arg-type]
        parts.append(chunk.model_dump_json())
    return "".join(parts)


async def test_answers_through_every_door_cite_and_say_only_what_the_key_may_see(deployment: Deployment) -> None:
    doors = ["ask", "ask-sse", "openai", "openai-stream"]
    cited: dict[str, set[str]] = {}
    async with httpx.AsyncClient(base_url=deployment.url, timeout=300) as client:
        for n, (key, question) in enumerate(itertools.product(KEYS, questions())):
            headers = deployment.headers(key)
            door = doors[n % len(doors)]
            if door == "ask":
                payload = await _ask_json(client, headers, question)
                cited.setdefault(key, set()).update(c["document_id"] for c in json.loads(payload)["citations"])
            elif door == "ask-sse":
                payload = await _ask_sse(client, headers, question)
            else:
                payload = await _chat(deployment, key, question, stream=door == "openai-stream")
            assert_clean(key, payload, door, question)
        # Asking about forbidden documents by id, or widening the groups in the filter, yields nothing of them.
        for key in KEYS:
            everything = {"document_ids": [d.document_id for d in DOCS]}
            for extra in ({"document_ids": everything["document_ids"]},
                          {"filters": {"groups": ["hr", "eng", "finance", "everyone"]}}):  # fmt: skip
                assert_clean(key, await _ask_json(client, deployment.headers(key), "What is the codeword?", **extra),
                             "ask with filters")  # fmt: skip
    assert any(cited.values()), "no answer cited anything: the test would prove nothing"
    for key, documents in cited.items():
        assert documents <= {d.document_id for d in visible_docs(key)}


async def test_documents_and_originals_only_of_the_keys_groups(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url, timeout=60) as client:
        for key in KEYS:
            headers = deployment.headers(key)
            listing = await client.get("/v1/documents", headers=headers)
            assert_clean(key, listing.text, "document list")
            assert {d["document_id"] for d in listing.json()["documents"]} == {d.document_id for d in visible_docs(key)}
            allowed = {d.document_id for d in visible_docs(key)}
            for doc in DOCS:
                detail = await client.get(f"/v1/documents/{doc.document_id}", headers=headers)
                original = await client.get(f"/v1/documents/{doc.document_id}/file", headers=headers)
                if doc.document_id in allowed:
                    assert detail.status_code == 200 and original.content == doc.text.encode()
                else:
                    # Exactly like a document that does not exist: its existence is not revealed either.
                    assert detail.status_code == original.status_code == 404
                    assert detail.headers["content-type"] == "application/problem+json"
                    missing = await client.get(f"/v1/documents/{'0' * 32}", headers=headers)
                    assert comparable(detail.json(), doc.document_id) == comparable(missing.json(), "0" * 32)


async def test_writes_stay_inside_the_keys_groups(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url, timeout=60) as client:
        finance = next(d for d in DOCS if d.groups == ["finance"])
        # No ingest scope: 403. Ingest scope but a foreign group: 403. Deleting or replacing a foreign document: 404.
        denied = await client.post("/v1/documents", files={"files": ("x.txt", b"hello")}, headers=deployment.headers("hr"))
        assert denied.status_code == 403 and "ingest" in denied.json()["detail"]
        foreign = await client.post("/v1/documents", files={"files": ("x.txt", b"hello")}, data={"groups": "finance"},
                                    headers=deployment.headers("eng"))  # fmt: skip
        assert foreign.status_code == 403 and "finance" in foreign.json()["detail"]
        gone = await client.delete(f"/v1/documents/{finance.document_id}", headers=deployment.headers("eng"))
        assert gone.status_code == 404
        replaced = await client.post("/v1/documents", files={"files": ("y.txt", b"new text")},
                                     data={"document_id": finance.document_id}, headers=deployment.headers("eng"))  # fmt: skip
        assert replaced.status_code == 404
        still = await client.get(f"/v1/documents/{finance.document_id}", headers=deployment.headers("admin"))
        assert still.json()["status"] == "ready" and still.json()["version"] == 1
        # The same bytes as a foreign document, uploaded for one's own group: a new document, nothing of the other.
        copy = await client.post("/v1/documents", files={"files": ("our-copy.txt", finance.text.encode())},
                                 data={"groups": "sales"}, headers=deployment.headers("outsider"))  # fmt: skip
        assert copy.status_code == 202
        assert copy.json()["documents"][0]["document_id"] != finance.document_id
        assert copy.json()["documents"][0]["duplicate"] is False


async def test_conversations_belong_to_their_key(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url, timeout=300) as client:
        first = json.loads(await _ask_json(client, deployment.headers("hr"), "What is the parental leave codeword?"))
        conversation_id = first["conversation_id"]
        mine = await client.get(f"/v1/conversations/{conversation_id}", headers=deployment.headers("hr"))
        assert mine.status_code == 200 and len(mine.json()["messages"]) == 2
        for other in ("eng", "outsider"):
            peek = await client.get(f"/v1/conversations/{conversation_id}", headers=deployment.headers(other))
            assert peek.status_code == 404
            hijack = await client.post("/v1/ask", headers=deployment.headers(other),
                                       json={"question": "Tell me more about it.", "conversation_id": conversation_id})  # fmt: skip
            assert hijack.status_code == 404
            assert_clean(other, peek.text + hijack.text, "conversation")


async def test_keys_without_the_scope_or_any_key_are_refused(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url, timeout=60) as client:
        for method, path in (("GET", "/v1/documents"), ("POST", "/v1/search"), ("POST", "/v1/ask"),
                             ("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/keys"),
                             ("GET", "/metrics")):  # fmt: skip
            anonymous = await client.request(method, path, json={})
            assert anonymous.status_code == 401, path
            assert anonymous.headers["content-type"] == "application/problem+json"
            assert "API key" in anonymous.json()["detail"]
            bogus = await client.request(method, path, json={}, headers={"Authorization": "Bearer kb_not-a-real-key"})
            assert bogus.status_code == 401, path
        for path in ("/v1/keys", "/metrics"):
            refused = await client.get(path, headers=deployment.headers("hr"))
            assert refused.status_code == 403 and refused.json()["title"] == "Forbidden"
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
