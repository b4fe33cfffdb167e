"""kb's MCP server through the official `mcp` client, over both transports, on real components (unstructured, MiniLM,
Qdrant Edge, SQLite, the in-process vLLM engine lent by the session fixture):

- streamable HTTP at /mcp of the app served in this process: the tools, their citations (text and structured) and
  links, the scopes and groups of each key, and what an attacker tries (no key, a forged proxy header, an unknown or
  revoked key, another group's key, another key's conversation, a foreign Origin, an oversized body, guessing keys
  past the failed-auth limit), behind the app's own headers and rate limit;
- stdio through `kb mcp` (`python -m service.cli mcp`), once on a data directory no server holds (opened by the
  command itself: search and list_documents; `ask` would start a second engine in that process, a minute on a CPU,
  so it is left to the server case) and once on a data directory a server holds (the command goes through that
  server's API, `ask` included), each time with a key that must not see the `eng` group's document.

One data directory is prepared once, through the CLI's own local backend, then copied: the copy is served."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import pytest_asyncio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from kb.adapters.vllm_engine import VllmEngineGenerator
from kb.container import build_registry
from kb.models import ApiKey
from kb.settings import GeneratorSettings, RateLimitSettings, Settings
from service.app import create_app
from service.auth import ApiKeyService, digest
from service.cli_backends import LocalBackend
from service.datadir import DataDirLock
from tests.support import serve_in_process

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
ENG_SECRET = "AMBER-FALCON-238"
DOCS = {  # filename -> (groups, text)
    "eng-runbook.txt": (["eng"], "Deployment runbook. Deploys run on Tuesdays after the canary has been green for an "
                                 f"hour. The deployment codeword is {ENG_SECRET}."),
    "sales-pricing.txt": (["sales"], "Sales pricing sheet. Enterprise seats cost forty-one euros per month. The "
                                     "pricing codeword is TEAL-OTTER-552."),
    "office-wifi.txt": (["everyone"], "Office wifi. The guest network is called Visitors and its password changes on "
                                      "the first day of each month."),
}  # fmt: skip
KEYS = {  # name -> (scopes, groups)
    "eng": (["search", "ask"], ["eng"]),
    "sales": (["search", "ask"], ["sales", "everyone"]),
    "ask-only": (["ask"], ["eng"]),
    "search-only": (["search"], ["eng"]),
    "revoked": (["search", "ask"], ["eng"]),  # revoked before the server starts (the stdio start is refused)
    "revoked-later": (["search", "ask"], ["eng"]),  # revoked through the API while the server runs
}


@dataclass
class Deployment:
    local_dir: Path  # prepared, held by nobody: `kb mcp` opens it itself
    served_dir: Path  # its copy, held by the server served in this process
    url: str
    admin: str
    keys: dict[str, str]
    key_ids: dict[str, str]
    doc_ids: dict[str, str]  # filename -> document_id

    def leaks_eng(self, payload: str) -> bool:
        """Anything of the eng document: its id, name, codeword or words."""
        return any(s in payload for s in (self.doc_ids["eng-runbook.txt"], "eng-runbook", ENG_SECRET, "green for an"))


def _prepare(data_dir: Path, files_dir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Keys as `kb keys create` makes them, documents as `kb ingest` does (the CLI's LocalBackend)."""
    settings = Settings(data_dir=data_dir)
    registry = build_registry(settings)
    try:
        keys_service = ApiKeyService(registry, settings.auth)
        keys, key_ids = {}, {}
        for name, (scopes, groups) in KEYS.items():
            key, secret = keys_service.create(name, scopes, groups)
            keys[name], key_ids[name] = secret, key.key_id
        assert keys_service.revoke(key_ids["revoked"])
        # Expired a minute ago: straight into the registry, as tests/e2e/test_access_control.py does (no clock waits).
        secret = "kb_" + secrets.token_urlsafe(32)
        expired = ApiKey(key_id=uuid.uuid4().hex[:16], name="expired", prefix=secret[:10], scopes=["admin"],
                         groups=["*"], expires_at=datetime.now(UTC) - timedelta(minutes=1))  # fmt: skip
        registry.add_api_key(expired, digest(secret))
        keys["expired"] = secret
    finally:
        registry.close()
    lock = DataDirLock(settings.resolved_data_dir)
    assert lock.try_acquire()
    backend = LocalBackend(settings, lock)  # releases the lock at close
    try:
        submitted = {}
        for filename, (groups, text) in DOCS.items():
            path = files_dir / filename
            path.write_text(text)
            submitted[filename] = backend.submit(path, groups)["document_id"]
        done = backend.wait(list(submitted.values()), lambda _: None)
        assert [d["status"] for d in done] == ["ready"] * len(DOCS), done
    finally:
        backend.close()
    return keys, key_ids, submitted


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployment(tmp_path_factory: pytest.TempPathFactory, vllm_engine: VllmEngineGenerator
                     ) -> AsyncIterator[Deployment]:  # fmt: skip
    base = tmp_path_factory.mktemp("mcp")
    local_dir, served_dir = base / "local", base / "served"
    (base / "files").mkdir()
    keys, key_ids, doc_ids = await asyncio.to_thread(_prepare, local_dir, base / "files")
    shutil.copytree(local_dir, served_dir)
    settings = Settings(
        data_dir=served_dir, generator=GeneratorSettings(enabled=False, max_answer_tokens=40),
        # Every request of this module stays far below the per-key limit; the failed-auth limit is reached on purpose.
        rate_limit=RateLimitSettings(requests=600, failed_auth_requests=12),
    )  # fmt: skip
    app = create_app(settings, with_generator=False)
    lock = DataDirLock(settings.resolved_data_dir)
    async with serve_in_process(app) as url:
        assert lock.try_acquire()  # as `kb serve` does: a `kb mcp` on this directory goes through the server
        lock.publish_server(url)
        services = app.state.services
        services.container.generator = vllm_engine  # lent: the session fixture closes it, not the app
        try:
            await services.start_generator()
            yield Deployment(local_dir, served_dir, url, settings.admin_key_path.read_text().strip(), keys, key_ids,
                             doc_ids)  # fmt: skip
        finally:
            services.container.generator = None
            lock.release()


@asynccontextmanager
async def over_http(deployment: Deployment, key: str, mode: str = "auto") -> AsyncIterator[Client]:
    """`mode`: "auto" (the newest protocol the server speaks) or "legacy" (the initialize handshake of the 2025
    protocol versions, which most desktop clients still speak)."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
        async with Client(streamable_http_client(f"{deployment.url}/mcp", http_client=http), mode=mode) as client:
            yield client


@asynccontextmanager
async def over_stdio(data_dir: Path, key: str, log: Path, mode: str = "auto") -> AsyncIterator[Client]:
    env = {**os.environ, "KB_DATA_DIR": str(data_dir), "KB_API_KEY": key, "KB_LOGGING__FORMAT": "console"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "service.cli", "mcp"], env=env, cwd=ROOT)
    with log.open("a") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode) as client:
            yield client


def dump(result: CallToolResult) -> str:
    """Everything a tool result carries, text and structured content, as one string to search."""
    return json.dumps([c.model_dump() for c in result.content]) + json.dumps(result.structured_content)


def text(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def _search_and_list(client: Client, deployment: Deployment, name: str) -> tuple[set[str], set[str]]:
    """The document ids `name`'s key finds (searching for every document, and for all of them by id) and lists."""
    found: set[str] = set()
    everything = list(deployment.doc_ids.values())
    for arguments in ({"query": "deployment codeword canary Tuesdays", "top_k": 10},
                      {"query": "guest wifi network password", "top_k": 10},
                      {"query": "enterprise seat pricing codeword", "top_k": 10},
                      {"query": ENG_SECRET, "filters": {"groups": ["eng", "sales", "everyone"]}},
                      {"query": "codeword", "filters": {"document_ids": everything}}):  # fmt: skip
        result = await client.call_tool("search", arguments)
        assert not result.is_error, text(result)
        if name != "eng":
            assert not deployment.leaks_eng(dump(result)), (name, arguments, dump(result))
        passages = result.structured_content["passages"]
        found |= {p["document_id"] for p in passages}
        for p in passages:
            assert p["url"].endswith(f"/#doc={p['document_id']}&chunk={p['chunk_id']}")
            assert f"/v1/documents/{p['document_id']}/file" in p["original_url"]
    listed = await client.call_tool("list_documents", {})
    assert not listed.is_error, text(listed)
    if name != "eng":
        assert not deployment.leaks_eng(dump(listed)), dump(listed)
    documents = listed.structured_content["documents"]
    assert all(d["status"] == "ready" and d["chunks"] >= 1 for d in documents), documents
    return found, {d["document_id"] for d in documents}


def visible(deployment: Deployment, name: str) -> set[str]:
    groups = set(KEYS[name][1])
    return {deployment.doc_ids[f] for f, (doc_groups, _) in DOCS.items() if groups & set(doc_groups)}


# --- streamable HTTP ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_are_listed_with_their_output_schemas(deployment: Deployment, mode: str) -> None:
    async with over_http(deployment, deployment.keys["sales"], mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        searched = await client.call_tool("search", {"query": "guest wifi"})
        assert not searched.is_error and searched.structured_content["passages"]
    assert set(tools) == {"search", "ask", "list_documents"}
    assert tools["ask"].input_schema["required"] == ["question"]
    assert "conversation_id" in tools["ask"].input_schema["properties"]
    assert {"document_ids", "groups", "metadata", "created_after", "created_before"} <= set(
        tools["search"].input_schema["$defs"]["SearchFilters"]["properties"]
    )
    citation = tools["ask"].output_schema["$defs"]["CitationOut"]["properties"]
    assert {"n", "document_id", "filename", "page", "snippet", "url", "original_url"} <= set(citation)
    assert all(t.annotations.read_only_hint for t in tools.values())


async def test_each_key_searches_and_lists_only_its_groups_over_http(deployment: Deployment) -> None:
    for name in ("eng", "sales"):
        async with over_http(deployment, deployment.keys[name]) as client:
            found, listed = await _search_and_list(client, deployment, name)
        assert found == listed == visible(deployment, name), name  # not vacuous: each found all it may see


async def test_ask_cites_with_links_and_keeps_the_conversation_to_its_key(deployment: Deployment) -> None:
    async with over_http(deployment, deployment.keys["eng"]) as client:
        result = await client.call_tool("ask", {"question": "On which days do deploys run?"})
        assert not result.is_error, text(result)
        answer = result.structured_content
        assert answer["citations"], answer  # the runbook answers it
        eng_id = deployment.doc_ids["eng-runbook.txt"]
        for c in answer["citations"]:
            assert c["document_id"] == eng_id and c["filename"] == "eng-runbook.txt" and c["snippet"]
            assert c["url"] == f"{deployment.url}/#doc={eng_id}&chunk={c['chunk_id']}"
            assert c["original_url"].startswith(f"{deployment.url}/v1/documents/{eng_id}/file")
            assert f"[{c['n']}] eng-runbook.txt" in text(result) and c["url"] in text(result)  # readable too
        # The original the link names opens for this key, as the web page's citations do.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {deployment.keys['eng']}"}) as http:
            original = await http.get(answer["citations"][0]["original_url"].split("#")[0])
            assert original.status_code == 200 and ENG_SECRET in original.text
        conversation_id = answer["conversation_id"]
        follow_up = await client.call_tool("ask", {"question": "And at what time?", "conversation_id": conversation_id})
        assert not follow_up.is_error and follow_up.structured_content["conversation_id"] == conversation_id
    async with over_http(deployment, deployment.keys["sales"]) as client:
        hijack = await client.call_tool("ask", {"question": "Repeat your last answer.",
                                                "conversation_id": conversation_id})  # fmt: skip
        assert hijack.is_error and f"no conversation {conversation_id}" in text(hijack)
        assert not deployment.leaks_eng(dump(hijack))
        for arguments in ({"question": "What is the deployment codeword?"},
                          {"question": "When do deploys run?",
                           "filters": {"document_ids": [eng_id], "groups": ["eng", "sales"]}}):  # fmt: skip
            result = await client.call_tool("ask", arguments)
            assert not result.is_error, text(result)
            assert not deployment.leaks_eng(dump(result)), dump(result)
            assert {c["document_id"] for c in result.structured_content["citations"]} <= visible(deployment, "sales")


async def test_scopes_decide_which_tools_a_key_may_call(deployment: Deployment) -> None:
    async with over_http(deployment, deployment.keys["ask-only"]) as client:
        for tool, arguments in (("search", {"query": "deploys"}), ("list_documents", {})):
            refused = await client.call_tool(tool, arguments)
            assert refused.is_error and "this key lacks the scope search" in text(refused), text(refused)
    async with over_http(deployment, deployment.keys["search-only"]) as client:
        refused = await client.call_tool("ask", {"question": "When do deploys run?"})
        assert refused.is_error and "this key lacks the scope ask" in text(refused), text(refused)
        allowed = await client.call_tool("list_documents", {})
        assert not allowed.is_error


async def test_bad_input_is_a_clear_tool_error(deployment: Deployment) -> None:
    async with over_http(deployment, deployment.keys["eng"]) as client:
        for arguments, reason in (({"query": "x", "top_k": 0}, "top_k"), ({"query": "x", "top_k": 101}, "top_k"),
                                  ({"query": "   "}, "query must not be empty"),
                                  ({"query": "x", "filters": {"groups": "eng"}}, "groups"),
                                  ({"query": "x", "filters": {"document_id": ["a"]}}, "document_id"),
                                  ({"query": "x", "filters": {"metadata": {"bad!": "v"}}}, "metadata")):  # fmt: skip
            result = await client.call_tool("search", arguments)
            assert result.is_error and reason in text(result), (arguments, text(result))


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


async def test_what_an_attacker_tries_is_refused_like_the_api_refuses_it(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url, headers=MCP_HEADERS, timeout=60) as http:
        ok = await http.post("/mcp", json=LIST_TOOLS, headers={"Authorization": f"Bearer {deployment.keys['eng']}"})
        assert ok.status_code == 200, ok.text
        # The app's own headers and per-key rate limit apply to /mcp as to every route.
        assert ok.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert ok.headers["x-content-type-options"] == "nosniff" and ok.headers["x-frame-options"] == "DENY"
        again = await http.post("/mcp", json=LIST_TOOLS, headers={"Authorization": f"Bearer {deployment.keys['eng']}"})
        assert int(again.headers["ratelimit-remaining"]) < int(ok.headers["ratelimit-remaining"])

        refusals = {
            "no key": {},
            "an unknown key": {"Authorization": "Bearer kb_" + secrets.token_urlsafe(32)},
            "a key without the kb_ prefix": {"Authorization": f"Bearer {secrets.token_hex(16)}"},
            "a revoked key": {"Authorization": f"Bearer {deployment.keys['revoked']}"},
            "an expired admin key": {"Authorization": f"Bearer {deployment.keys['expired']}"},
            # The proxy's sign-in headers from an address that is not a trusted proxy: ignored, so no one.
            "forged proxy headers": {"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "eng,sales,*",
                                     "X-Forwarded-For": "10.0.0.5"},  # fmt: skip
        }
        for what, headers in refusals.items():
            refused = await http.post("/mcp", json=LIST_TOOLS, headers=headers)
            assert refused.status_code == 401, (what, refused.text)
            assert refused.headers["content-type"] == "application/problem+json", what
            assert refused.json()["instance"] == "/mcp"
        assert "expired" in (await http.post("/mcp", json=LIST_TOOLS, headers=refusals["an expired admin key"])
                             ).json()["detail"]  # fmt: skip

        # A key revoked while the server runs is refused from then on.
        later = {"Authorization": f"Bearer {deployment.keys['revoked-later']}"}
        assert (await http.post("/mcp", json=LIST_TOOLS, headers=later)).status_code == 200
        revoked = await http.delete(f"/v1/keys/{deployment.key_ids['revoked-later']}",
                                    headers={"Authorization": f"Bearer {deployment.admin}"})  # fmt: skip
        assert revoked.status_code == 204, revoked.text
        assert (await http.post("/mcp", json=LIST_TOOLS, headers=later)).status_code == 401

        # The web page's session cookie, as for every route: a POST must also carry X-KB-Request (no cross-site form).
        session = await http.post("/v1/session", headers={"Authorization": f"Bearer {deployment.keys['eng']}"})
        cookie = {"Cookie": f"kb_session={session.cookies['kb_session']}"}
        assert (await http.post("/mcp", json=LIST_TOOLS, headers=cookie)).status_code == 403
        assert (await http.post("/mcp", json=LIST_TOOLS, headers={**cookie, "X-KB-Request": "1"})).status_code == 200

        eng = {"Authorization": f"Bearer {deployment.keys['eng']}"}
        # A web page of another site (or a DNS-rebound one) calling with a key it got somehow: refused by Origin.
        cross_site = await http.post("/mcp", json=LIST_TOOLS, headers={**eng, "Origin": "https://evil.example"})
        assert cross_site.status_code == 403 and "evil.example" in cross_site.json()["detail"]
        # A form post (no JSON content type): the SDK refuses it.
        form = await http.post("/mcp", content=json.dumps(LIST_TOOLS), headers={**eng, "Content-Type": "text/plain"})
        assert form.status_code == 400
        too_large = await http.post("/mcp", content=b"{" + b" " * (1024 * 1024 + 10) + b"}", headers=eng)
        assert too_large.status_code == 413 and too_large.headers["content-type"] == "application/problem+json"

        # Guessing keys: past the failed-auth limit the address is answered 429; a valid key from it still works.
        statuses = [(await http.post("/mcp", json=LIST_TOOLS, headers={"Authorization": f"Bearer kb_guess{i}"}))
                    .status_code for i in range(14)]  # fmt: skip
        assert statuses[-1] == 429 and set(statuses) == {401, 429}, statuses
        assert (await http.post("/mcp", json=LIST_TOOLS, headers=eng)).status_code == 200


# --- stdio: `kb mcp` -----------------------------------------------------------------------------------------------


async def test_kb_mcp_on_a_data_directory_answers_within_the_key(deployment: Deployment, tmp_path: Path) -> None:
    async with over_stdio(deployment.local_dir, deployment.keys["sales"], tmp_path / "stdio.log") as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"search", "ask", "list_documents"}
        found, listed = await _search_and_list(client, deployment, "sales")
    assert found == listed == visible(deployment, "sales")
    log = (tmp_path / "stdio.log").read_text()
    assert f"the data directory {deployment.local_dir}" in log and "'sales'" in log, log[-2000:]


async def test_kb_mcp_refuses_a_key_the_data_directory_does_not_accept(deployment: Deployment) -> None:
    for key in (deployment.keys["revoked"], "kb_" + secrets.token_urlsafe(32)):
        env = {**os.environ, "KB_DATA_DIR": str(deployment.local_dir), "KB_API_KEY": key}
        run = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "service.cli", "mcp"], env=env, cwd=ROOT,
                                      input=b"", capture_output=True, timeout=120)  # fmt: skip
        assert run.returncode == 2, run.stderr.decode()[-2000:]
        assert b"the API key is unknown or revoked" in run.stderr and run.stdout == b""


async def test_kb_mcp_through_the_server_that_holds_the_directory(deployment: Deployment, tmp_path: Path) -> None:
    # The 2025 protocol's handshake here (Claude Desktop's), the newest protocol in the data-directory case.
    async with over_stdio(deployment.served_dir, deployment.keys["sales"], tmp_path / "stdio.log", "legacy") as client:
        found, listed = await _search_and_list(client, deployment, "sales")
        assert found == listed == visible(deployment, "sales")
        result = await client.call_tool("ask", {"question": "How much does an enterprise seat cost?"})
        assert not result.is_error, text(result)
        assert not deployment.leaks_eng(dump(result))
        for c in result.structured_content["citations"]:  # links to the server the command went through
            assert c["url"] == f"{deployment.url}/#doc={c['document_id']}&chunk={c['chunk_id']}"
        assert {c["document_id"] for c in result.structured_content["citations"]} <= visible(deployment, "sales")
        refused = await client.call_tool("ask", {"question": "x", "conversation_id": "y" * 65})
        assert refused.is_error and "conversation_id" in text(refused)
    assert f"the server at {deployment.url}" in (tmp_path / "stdio.log").read_text()
