"""Several keys, groups and documents; many generated questions through every door (search, ask as JSON and as
Server-Sent Events, the OpenAI-compatible endpoint through the official `openai` client, documents, originals,
conversations). No forbidden document id, chunk id, text or file may ever come back. The access table below joins
every door (MCP's /mcp and its tools included) with every identity.

Every part is real: uvicorn serving the app in this process, unstructured, MiniLM, Qdrant Edge, SQLite and the
in-process vLLM engine."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from kb.models import ApiKey
from kb.settings import AuthSettings, GeneratorSettings, RateLimitSettings, Settings
from service.app import create_app
from service.auth import digest
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
    Doc(
        "hr-parental-leave.txt",
        ["hr"],
        "parental leave",
        "MAGENTA-HERON-417",
        "twenty weeks",
        "Parental leave policy. Employees receive twenty weeks of paid parental leave, taken in up to three blocks.",
    ),
    Doc(
        "hr-salary-bands.txt",
        ["hr"],
        "salary bands",
        "TEAL-OTTER-552",
        "82,000 euros",
        "Salary bands for 2026. Band four starts at 82,000 euros and band five at 97,000 euros per year.",
    ),
    Doc(
        "eng-deploy-runbook.txt",
        ["eng"],
        "deployment runbook",
        "AMBER-FALCON-238",
        "green for an hour",
        "Deployment runbook. Deploys run on Tuesdays and Thursdays after the canary has been green for an hour.",
    ),
    Doc(
        "eng-on-call.txt",
        ["eng"],
        "on-call rotation",
        "INDIGO-LYNX-806",
        "pager every Monday",
        "On-call rotation. Engineers hand over the pager every Monday at ten with a written incident summary.",
    ),
    Doc(
        "finance-q3-budget.txt",
        ["finance"],
        "third quarter budget",
        "CRIMSON-BADGER-119",
        "CFO's approval",
        "Third quarter budget. The travel budget is frozen and hardware purchases need the CFO's approval.",
    ),
    Doc(
        "office-wifi.txt",
        [],
        "office wifi",
        "OLIVE-MOOSE-674",
        "first day of each month",
        "Office wifi. The guest network is called Visitors and its password changes on the first day of each month.",
    ),
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
        return {"Authorization": f"Bearer {self.keys.get(name, self.admin)}"}


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
        denied = await client.post(
            "/v1/documents", files={"files": ("x.txt", b"hello")}, headers=deployment.headers("hr")
        )
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
            if path in OPENAI_PATHS:  # OpenAI's error shape, for its SDKs
                assert anonymous.headers["content-type"] == "application/json"
                assert "API key" in anonymous.json()["error"]["message"]
            else:
                assert anonymous.headers["content-type"] == "application/problem+json"
                assert "API key" in anonymous.json()["detail"]
            bogus = await client.request(method, path, json={}, headers={"Authorization": "Bearer kb_not-a-real-key"})
            assert bogus.status_code == 401, path
        for path in ("/v1/keys", "/metrics"):
            refused = await client.get(path, headers=deployment.headers("hr"))
            assert refused.status_code == 403 and refused.json()["title"] == "Forbidden"
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


# ---------------------------------------------------------------------------------------------------------------------
# The rule as a table: every door × every identity, each cell's expected status asserted against a served app (no
# generator: an authorised question answers 503 "the generator is off", which is past authentication and the scope
# check). A new door (Slack, MCP, a web route) is one more row in DOORS; a new kind of caller, one more IDENTITIES row.
# ---------------------------------------------------------------------------------------------------------------------

EVERY_VALID_KEY = frozenset()  # a door any valid key may pass (no particular scope)


@dataclass(frozen=True)
class Door:
    name: str
    method: str
    path: str  # "{document_id}" / "{key_id}": a fresh eng document / eng key made by `prepare`
    scopes: frozenset[str]  # the key needs one of these (admin holds them all); EVERY_VALID_KEY: any valid key
    passed: int  # the status once authorised
    json: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    eng_only: int | None = None  # the status for an authorised key outside group eng (the thing is eng's)
    prepare: str | None = None  # "document": a fresh eng document; "key": a fresh eng key (consumed by the cell)
    # MCP (JSON-RPC over streamable HTTP at /mcp): the HTTP layer admits any caller who signs in (200); a tool then
    # refuses a caller without its scope inside the JSON-RPC result (isError, naming the scope), as MCP clients expect.
    mcp: bool = False


ASK_BODY = {"question": "What is the deployment codeword?"}


def _mcp_call(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


MCP_INITIALIZE = _mcp_call("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                          "clientInfo": {"name": "acl-table", "version": "1"}})  # fmt: skip
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
OPENAI_PATHS = {"/v1/chat/completions", "/v1/models"}
DOORS: list[Door] = [
    # Add a row for every new door (Slack, MCP, new web routes): the table then proves it against every identity.
    Door("search", "POST", "/v1/search", frozenset({"search"}), 200, json={"query": "deployment runbook"}),
    Door("ask", "POST", "/v1/ask", frozenset({"ask"}), 503, json=ASK_BODY),
    Door("ask-sse", "POST", "/v1/ask", frozenset({"ask"}), 503, json={**ASK_BODY, "stream": True}),
    Door(
        "openai-chat",
        "POST",
        "/v1/chat/completions",
        frozenset({"ask"}),
        503,
        json={"model": "kb", "messages": [{"role": "user", "content": ASK_BODY["question"]}]},
    ),
    Door(
        "openai-chat-stream",
        "POST",
        "/v1/chat/completions",
        frozenset({"ask"}),
        503,
        json={"model": "kb", "stream": True, "messages": [{"role": "user", "content": ASK_BODY["question"]}]},
    ),
    Door("openai-models", "GET", "/v1/models", frozenset({"ask"}), 200),
    Door("conversation", "GET", f"/v1/conversations/{'c' * 32}", frozenset({"ask"}), 404),  # passed: none such
    Door("conversations-list", "GET", "/v1/conversations", frozenset({"ask"}), 200),
    Door("conversation-delete", "DELETE", f"/v1/conversations/{'c' * 32}", frozenset({"ask"}), 404),
    Door(
        "feedback-give",
        "POST",
        "/v1/feedback",
        frozenset({"ask"}),
        201,
        json={"rating": "down", "question": "What is the deployment codeword?", "answer": "I do not know."},
    ),
    Door("feedback-list", "GET", "/v1/feedback", frozenset({"admin"}), 200),
    Door("feedback-delete", "DELETE", f"/v1/feedback/{'f' * 32}", frozenset({"admin"}), 404),  # passed: none such
    Door(
        "document-chunk",
        "GET",
        "/v1/documents/{document_id}/chunks/{chunk_id}",
        frozenset({"search", "ask"}),
        404,
        eng_only=404,
        prepare="document",
    ),
    Door("documents-list", "GET", "/v1/documents", frozenset({"search"}), 200),
    Door(
        "document-status",
        "GET",
        "/v1/documents/{document_id}",
        frozenset({"search", "ingest"}),
        200,
        eng_only=404,
        prepare="document",
    ),
    Door(
        "document-file",
        "GET",
        "/v1/documents/{document_id}/file",
        frozenset({"search", "ask"}),
        200,
        eng_only=404,
        prepare="document",
    ),
    Door(
        "document-upload",
        "POST",
        "/v1/documents",
        frozenset({"ingest"}),
        202,
        eng_only=403,
        files={"files": ("table-upload.txt", b"Uploaded through the access table.", "text/plain")},
        data={"groups": "eng"},
    ),
    Door(
        "document-delete",
        "DELETE",
        "/v1/documents/{document_id}",
        frozenset({"ingest"}),
        204,
        eng_only=404,
        prepare="document",
    ),
    Door("keys-list", "GET", "/v1/keys", frozenset({"admin"}), 200),
    Door(
        "keys-create",
        "POST",
        "/v1/keys",
        frozenset({"admin"}),
        201,
        eng_only=403,
        json={"name": "made by the table", "scopes": ["search"], "groups": ["eng"]},
    ),
    Door("keys-revoke", "DELETE", "/v1/keys/{key_id}", frozenset({"admin"}), 204, eng_only=404, prepare="key"),
    Door("metrics", "GET", "/metrics", frozenset({"metrics"}), 200),
    Door("session-start", "POST", "/v1/session", EVERY_VALID_KEY, 200),
    Door("session-who", "GET", "/v1/session", EVERY_VALID_KEY, 200),
    Door("mcp-initialize", "POST", "/mcp", EVERY_VALID_KEY, 200, json=MCP_INITIALIZE, mcp=True),
    Door("mcp-search", "POST", "/mcp", frozenset({"search"}), 200, mcp=True,
         json=_mcp_call("tools/call", {"name": "search", "arguments": {"query": "deployment runbook"}})),
    Door("mcp-documents", "POST", "/mcp", frozenset({"search"}), 200, mcp=True, prepare="document",
         json=_mcp_call("tools/call", {"name": "list_documents", "arguments": {}})),
    Door("mcp-ask", "POST", "/mcp", frozenset({"ask"}), 200, mcp=True,
         json=_mcp_call("tools/call", {"name": "ask", "arguments": {"question": ASK_BODY["question"]}})),
]


@dataclass(frozen=True)
class Identity:
    name: str
    scopes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    credential: str = "key"  # key | none | forged | revoked | expired | proxy | proxy-untrusted

    @property
    def authenticated(self) -> bool:
        return self.credential in ("key", "proxy")


IDENTITIES: list[Identity] = [
    Identity("no-key", credential="none"),
    Identity("forged-key", credential="forged"),
    # Revoked and expired keys would be unrestricted admins: only the revocation or the expiry refuses them.
    Identity("revoked-admin", ("admin",), ("*",), credential="revoked"),
    Identity("expired-admin", ("admin",), ("*",), credential="expired"),
    *[Identity(f"{scope}-only@eng", (scope,), ("eng",)) for scope in ("search", "ask", "ingest", "metrics")],
    Identity("admin@eng", ("admin",), ("eng",)),
    Identity("admin@*", ("admin",), ("*",)),
    Identity("search+ask+ingest@hr", ("search", "ask", "ingest"), ("hr",)),
    Identity("admin@hr", ("admin",), ("hr",)),
    # Signed in by the company's authenticating proxy (its headers, from the trusted proxy's address), and the same
    # headers from any other address, which nobody may believe.
    Identity("proxy-user@eng", ("search", "ask", "ingest"), ("eng", "everyone"), credential="proxy"),
    Identity("proxy-headers-untrusted", credential="proxy-untrusted"),
]
PROXY_ADDRESS = "127.0.0.2"  # the trusted proxy: the table's proxy identity connects from here, everyone else not
PROXY_HEADERS = {"X-Forwarded-User": "ana", "X-Forwarded-Email": "ana@example.com", "X-Forwarded-Groups": "eng",
                 "X-KB-Request": "1"}  # fmt: skip


def expected_status(door: Door, who: Identity) -> int:
    if not who.authenticated:
        return 401
    if door.mcp:
        return 200  # the tool's refusal is in the JSON-RPC result: mcp_refusal
    if door.name == "session-start" and who.credential == "proxy":
        return 400  # the proxy signs its users in on every request: there is no key to trade for a cookie
    if door.scopes and "admin" not in who.scopes and not door.scopes & set(who.scopes):
        return 403
    if door.eng_only is not None and not {"eng", "*"} & set(who.groups):
        return door.eng_only
    return door.passed


@dataclass
class Table:
    url: str
    admin: str
    credentials: dict[str, str | None]  # identity name -> its Authorization header value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def table(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Table]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("acl-table"),
        generator=GeneratorSettings(enabled=False),
        rate_limit=RateLimitSettings(enabled=False),  # ~200 requests, dozens refused, from one address
        auth=AuthSettings(trusted_proxies=[PROXY_ADDRESS], proxy_ingest_groups=["eng"]),
    )
    app = create_app(settings)
    async with serve_in_process(app) as url:
        admin = settings.admin_key_path.read_text().strip()
        credentials: dict[str, str | None] = {}
        async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {admin}"}) as client:
            for who in IDENTITIES:
                if who.credential in ("none", "proxy", "proxy-untrusted"):
                    credentials[who.name] = None
                elif who.credential == "forged":
                    credentials[who.name] = "Bearer kb_" + secrets.token_urlsafe(32)
                elif who.credential == "expired":  # straight into the registry: nothing waits for a clock
                    secret = "kb_" + secrets.token_urlsafe(32)
                    app.state.services.container.registry.add_api_key(ApiKey(
                        key_id=uuid.uuid4().hex[:16], name=who.name, prefix=secret[:10], scopes=list(who.scopes),
                        groups=list(who.groups), expires_at=datetime.now(UTC) - timedelta(minutes=1)), digest(secret))  # fmt: skip
                    credentials[who.name] = f"Bearer {secret}"
                else:
                    created = await client.post("/v1/keys", json={"name": who.name, "scopes": list(who.scopes),
                                                                  "groups": list(who.groups)})  # fmt: skip
                    assert created.status_code == 201, created.text
                    credentials[who.name] = f"Bearer {created.json()['key']}"
                    if who.credential == "revoked":
                        assert (await client.delete(f"/v1/keys/{created.json()['key_id']}")).status_code == 204
        yield Table(url, admin, credentials)


async def _prepare(client: httpx.AsyncClient, door: Door, cell: str) -> str:
    """The door's path with a fresh eng document or key in it (made by the unrestricted admin)."""
    if door.prepare == "document":
        made = await client.post("/v1/documents", data={"groups": "eng"},
                                 files={"files": (f"{cell}.txt", f"Eng notes for {cell}.".encode(), "text/plain")})  # fmt: skip
        assert made.status_code == 202, made.text
        # A chunk id none such (the fresh document is not parsed yet): past the scope and group checks, 404 either
        # way; tests/integration/test_citation_view.py reads real chunks across groups.
        return door.path.format(document_id=made.json()["documents"][0]["document_id"], chunk_id="0" * 32)
    if door.prepare == "key":
        made = await client.post("/v1/keys", json={"name": cell, "scopes": ["search"], "groups": ["eng"]})
        assert made.status_code == 201, made.text
        return door.path.format(key_id=made.json()["key_id"])
    return door.path


@pytest.mark.parametrize(
    ("door", "who"),
    [(d, w) for d in DOORS for w in IDENTITIES],
    ids=[f"{d.name}-{w.name}" for d in DOORS for w in IDENTITIES],
)
async def test_every_door_admits_exactly_whom_the_rule_says(table: Table, door: Door, who: Identity) -> None:
    async with httpx.AsyncClient(base_url=table.url, timeout=60) as client:
        client.headers["Authorization"] = f"Bearer {table.admin}"
        path = await _prepare(client, door, f"{door.name}-{who.name}")
    headers = {"Authorization": table.credentials[who.name]} if table.credentials[who.name] else {}
    if who.credential.startswith("proxy"):
        headers = dict(PROXY_HEADERS)
    if door.mcp:
        headers.update(MCP_HEADERS)
    # The proxy identity's connection comes from the trusted proxy's address; every other one from 127.0.0.1.
    local = PROXY_ADDRESS if who.credential == "proxy" else "127.0.0.1"
    transport = httpx.AsyncHTTPTransport(local_address=local)
    async with httpx.AsyncClient(base_url=table.url, timeout=60, transport=transport) as client:
        response = await client.request(door.method, path, json=door.json, files=door.files, data=door.data,
                                        headers=headers)  # fmt: skip
    expected = expected_status(door, who)
    assert response.status_code == expected, f"{door.name} as {who.name}: {response.status_code} {response.text[:300]}"
    if door.mcp and expected == 200:
        _assert_mcp_outcome(door, who, response)
    detail = ""
    if expected >= 400 and door.path in OPENAI_PATHS:  # OpenAI's error shape, for its SDKs (service/ask/openai.py)
        assert response.headers["content-type"] == "application/json"
        detail = response.json()["error"]["message"]
    elif expected >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        detail = response.json()["detail"]
    if expected == 401:
        assert "WWW-Authenticate" in response.headers
        if who.credential == "expired":
            assert "expired" in detail
    if expected == 503:  # passed authentication and scope: refused only because this app runs no generator
        assert "generator" in detail


async def test_the_table_covers_every_route_of_the_app() -> None:
    """A new route without a DOORS row fails here (public routes and the API description excepted)."""
    app = create_app(Settings(data_dir=Path("/nonexistent-kb-table"), generator=GeneratorSettings(enabled=False)))
    public = {"/", "/healthz", "/readyz"}
    routes = {(method, route.path) for route in app.routes for method in getattr(route, "methods", ())
              if method not in ("HEAD", "OPTIONS") and route.path not in public and not route.path.startswith("/schema")
              and not route.path.startswith("/static")}  # fmt: skip
    # An ASGI route (MCP's /mcp) takes every method: it needs at least one row, each row's method is its own.
    mounts = {route.path for route in app.routes if not getattr(route, "methods", None)}
    covered = {(door.method, _route_of(door.path)) for door in DOORS}
    unexempt = {(m, p) for m, p in routes if (m, p) not in covered and (m, p) not in TABLE_EXEMPT}
    assert not unexempt, f"routes without a DOORS row: {sorted(unexempt)}"
    assert mounts <= {path for _, path in covered}, f"ASGI routes without a DOORS row: {sorted(mounts)}"
    stray = {(m, p) for m, p in covered - routes if p not in mounts}
    assert not stray, f"DOORS rows for routes that do not exist: {sorted(stray)}"


# Routes the table leaves out, each with the reason.
TABLE_EXEMPT = {
    ("DELETE", "/v1/session"),  # signing out needs no key (an expired session must still be able to sign out)
    # Slack's door: its callers are Slack users behind Slack's signature, never a kb key, session or proxy user
    # (test_the_slack_door_believes_no_kb_identity below; Slack users × groups × channels in
    # tests/integration/test_slack_events.py and test_slack_adversarial.py).
    ("POST", "/slack/events"),
}


async def test_the_slack_door_believes_no_kb_identity(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every kb identity of the table (an unrestricted admin key, a session cookie, the trusted proxy's user) sending
    a well-formed Slack event without Slack's signature, or signed with another secret, gets 401 and nothing is
    posted in Slack."""
    from kb.settings import SlackSettings
    from tests.slack_fake import SlackFake, event_body, signed_headers

    with SlackFake(bot_token="xoxb-acl") as slack:
        slack.channel_members["C0ENG"] = ["U0ADMIN", slack.bot_user_id]
        settings = Settings(
            data_dir=tmp_path_factory.mktemp("acl-slack"), generator=GeneratorSettings(enabled=False),
            rate_limit=RateLimitSettings(enabled=False), auth=AuthSettings(trusted_proxies=[PROXY_ADDRESS]),
            slack=SlackSettings(bot_token="xoxb-acl", signing_secret="the-real-secret", api_url=slack.api_url,
                                user_groups={"U0ADMIN": ["eng"]}),
        )  # fmt: skip
        async with serve_in_process(create_app(settings)) as url:
            admin = settings.admin_key_path.read_text().strip()
            body = json.dumps(event_body({"type": "app_mention", "user": "U0ADMIN", "channel": "C0ENG",
                                          "text": "<@U0KBBOT> what are the eng notes?", "ts": "1.0"},
                                         "Ev0ACL")).encode()  # fmt: skip
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                session = await client.post("/v1/session", headers={"Authorization": f"Bearer {admin}"})
                assert session.status_code == 200
                cookie = session.cookies.get("kb_session")
            attempts: dict[str, tuple[dict[str, str], str]] = {
                "admin key": ({"Authorization": f"Bearer {admin}"}, "127.0.0.1"),
                "session cookie": ({"Cookie": f"kb_session={cookie}", "X-KB-Request": "1"}, "127.0.0.1"),
                "trusted proxy user": (PROXY_HEADERS, PROXY_ADDRESS),
                "another secret": (signed_headers(body, "not-the-secret"), "127.0.0.1"),
                "admin key, another secret": ({"Authorization": f"Bearer {admin}",
                                              **signed_headers(body, "not-the-secret")}, "127.0.0.1"),
            }  # fmt: skip
            for name, (headers, local) in attempts.items():
                transport = httpx.AsyncHTTPTransport(local_address=local)
                async with httpx.AsyncClient(base_url=url, timeout=60, transport=transport) as client:
                    response = await client.post("/slack/events", content=body,
                                                 headers={**headers, "Content-Type": "application/json"})  # fmt: skip
                assert response.status_code == 401, f"{name}: {response.status_code} {response.text[:200]}"
            await asyncio.sleep(1)  # an answer would have been started by now
            assert [m for m, _ in slack.calls() if m.startswith("chat.")] == []
            # The same body with Slack's own signature is heard (and answered in words: this app runs no model).
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                response = await client.post("/slack/events", content=body, headers={
                    **signed_headers(body, "the-real-secret"), "Content-Type": "application/json"})  # fmt: skip
            assert response.status_code == 200
            posted = await asyncio.to_thread(slack.wait_for, "chat.postMessage", lambda p: p.get("channel") == "C0ENG")
            assert posted.get("thread_ts") == "1.0"


def _mcp_result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a /mcp answer (one Server-Sent Event, or plain JSON)."""
    if response.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        assert len(data) == 1, response.text[:500]
        return json.loads(data[0])
    return response.json()


def _assert_mcp_outcome(door: Door, who: Identity, response: httpx.Response) -> None:
    message = _mcp_result(response)
    assert "error" not in message, f"{door.name} as {who.name}: {message}"
    result = message["result"]
    if door.name == "mcp-initialize":
        assert result["serverInfo"]["name"] and "tools" in result["capabilities"]
        return
    text = " ".join(c.get("text", "") for c in result["content"])
    refused = bool(door.scopes) and "admin" not in who.scopes and not door.scopes & set(who.scopes)
    if refused:
        assert result["isError"] and any(scope in text for scope in door.scopes), f"{door.name} as {who.name}: {text}"
    elif door.name == "mcp-ask":  # past the scope check: refused only because this app runs no generator
        assert result["isError"] and "generator" in text, f"{door.name} as {who.name}: {text}"
    else:
        assert not result.get("isError"), f"{door.name} as {who.name}: {text[:300]}"
        structured = result["structuredContent"]
        sees_eng = bool({"eng", "*"} & set(who.groups))  # every document of the table is eng's
        if door.name == "mcp-documents":
            groups = [set(d["groups"]) for d in structured["documents"]]
            assert bool(groups) == sees_eng and all(g <= {"eng"} for g in groups), f"{who.name}: {groups}"
        elif not sees_eng:
            assert structured["passages"] == [], f"{door.name} as {who.name}: {structured}"


def _route_of(path: str) -> str:
    path = path.replace("{document_id}", "{document_id:str}").replace("{key_id}", "{key_id:str}")
    path = path.replace("{chunk_id}", "{chunk_id:str}").replace(
        f"/v1/feedback/{'f' * 32}", "/v1/feedback/{feedback_id:str}"
    )
    return path.replace(f"/v1/conversations/{'c' * 32}", "/v1/conversations/{conversation_id:str}")


# Escalation: what a key could try beyond its reach.


async def test_a_restricted_admin_cannot_escalate(table: Table) -> None:
    eng_admin = {"Authorization": table.credentials["admin@eng"]}
    async with httpx.AsyncClient(base_url=table.url, timeout=60, headers=eng_admin) as client:
        # Mint a wider key: every group, a foreign group, or its own plus a foreign one.
        for groups in (["*"], ["hr"], ["eng", "hr"]):
            wider = await client.post("/v1/keys", json={"name": "wider", "scopes": ["admin"], "groups": groups})
            assert wider.status_code == 403, groups
        # Without groups it gets its creator's groups, never the default "everyone" it is not in.
        own = await client.post("/v1/keys", json={"name": "own", "scopes": ["search", "ingest"]})
        assert own.status_code == 201 and own.json()["groups"] == ["eng"]
        # It sees and revokes only keys within eng; another group's key is "not found" and keeps working.
        listed = (await client.get("/v1/keys")).json()["keys"]
        assert listed and all(set(k["groups"]) <= {"eng"} for k in listed)
        async with httpx.AsyncClient(base_url=table.url, timeout=60,
                                     headers={"Authorization": f"Bearer {table.admin}"}) as root:  # fmt: skip
            every = (await root.get("/v1/keys")).json()["keys"]
        hr = next(k for k in every if k["name"] == "admin@hr")
        assert hr["key_id"] not in {k["key_id"] for k in listed}
        assert (await client.delete(f"/v1/keys/{hr['key_id']}")).status_code == 404
        hr_client_headers = {"Authorization": table.credentials["admin@hr"]}
        assert (await client.get("/v1/keys", headers=hr_client_headers)).status_code == 200
    # The key it minted: uploads without groups land in eng (readable by it), foreign groups are refused.
    mine = {"Authorization": f"Bearer {own.json()['key']}"}
    async with httpx.AsyncClient(base_url=table.url, timeout=60, headers=mine) as client:
        uploaded = await client.post(
            "/v1/documents", files={"files": ("mine.txt", b"Minted key's notes.", "text/plain")}
        )
        assert uploaded.status_code == 202 and uploaded.json()["documents"][0]["groups"] == ["eng"]
        document_id = uploaded.json()["documents"][0]["document_id"]
        assert (await client.get(f"/v1/documents/{document_id}/file")).content == b"Minted key's notes."
        foreign = await client.post("/v1/documents", data={"groups": "hr"},
                                    files={"files": ("theirs.txt", b"x", "text/plain")})  # fmt: skip
        assert foreign.status_code == 403 and "hr" in foreign.json()["detail"]
    async with httpx.AsyncClient(base_url=table.url, timeout=60,
                                 headers={"Authorization": table.credentials["search+ask+ingest@hr"]}) as hr_client:  # fmt: skip
        assert (await hr_client.get(f"/v1/documents/{document_id}")).status_code == 404
