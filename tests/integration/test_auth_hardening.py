"""Findings 4, 5 and 8 of issue 12, through the real API: the app served by uvicorn in this process, SQLite, Qdrant
Edge, unstructured and MiniLM (no generator).

- uploads without groups land where the uploader can read them back;
- a key restricted to some groups cannot mint, list or revoke keys beyond them; keys expire;
- hostile JSON (100,000 nested `[`) and out-of-range search `top_k` answer 400, never 500 or silence;
- bidi and invisible characters leave stored file names and Content-Disposition;
- random bearer tokens are rate limited per address, valid keys from that address are not;
- a client that leaves mid-request is logged 499, not 500 (a dropped answer stream's access line is proven on the
  engine in tests/e2e/test_answering_sse_disconnect.py)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import pytest_asyncio
import structlog
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from kb.adapters.sql_registry import SqlRegistry
from kb.models import ApiKey
from kb.settings import GeneratorSettings, RateLimitSettings, Settings
from service.app import create_app
from service.auth import KEY_PREFIX, digest
from service.cli import app as cli_app
from tests.support import access_lines, serve_in_process

pytestmark = [pytest.mark.integration]
module_loop = pytest.mark.asyncio(loop_scope="module")  # the async tests share the served app's event loop

POSTGRES = os.environ.get("KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NESTED = "[" * 100_000


@dataclass
class Served:
    url: str
    app: Any
    admin: str

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60)

    async def key(self, scopes: list[str], groups: list[str] | None = None, by: str | None = None) -> str:
        async with self.client(by or self.admin) as client:
            created = await client.post("/v1/keys", json={"name": "t", "scopes": scopes, "groups": groups})
            assert created.status_code == 201, created.text
            return created.json()["key"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("hardening"),
        generator=GeneratorSettings(enabled=False),
        rate_limit=RateLimitSettings(enabled=False),  # its own test below
    )
    app = create_app(settings)
    async with serve_in_process(app) as url:
        yield Served(url, app, settings.admin_key_path.read_text().strip())


async def _upload(client: httpx.AsyncClient, name: str, body: bytes, **data: str) -> httpx.Response:
    return await client.post("/v1/documents", files={"files": (name, body, "text/plain")}, data=data or None)


# Finding 4 -------------------------------------------------------------------------------------------------------


@module_loop
async def test_an_upload_without_groups_goes_to_the_default_only_if_the_uploader_holds_it(served: Served) -> None:
    eng = await served.key(["search", "ingest"], ["eng"])
    eng_and_sales = await served.key(["search", "ingest"], ["eng", "sales"])
    member = await served.key(["search", "ingest"], ["everyone", "eng"])
    everyone = await served.key(["search"], ["everyone"])
    cases = [(eng, ["eng"]), (eng_and_sales, ["eng", "sales"]), (member, ["everyone"]), (served.admin, ["everyone"])]
    for n, (key, groups) in enumerate(cases):
        async with served.client(key) as client:
            body = f"Upload number {n} without groups.".encode()
            uploaded = await _upload(client, f"no-groups-{n}.txt", body)
            assert uploaded.status_code == 202, uploaded.text
            document = uploaded.json()["documents"][0]
            assert document["groups"] == groups
            # The uploader reads back what it uploaded: status, list, original.
            assert (await client.get(f"/v1/documents/{document['document_id']}")).status_code == 200
            listed = (await client.get("/v1/documents")).json()["documents"]
            assert document["document_id"] in {d["document_id"] for d in listed}
            original = await client.get(f"/v1/documents/{document['document_id']}/file")
            assert original.status_code == 200 and original.content == body
        async with served.client(everyone) as outsider:
            seen = await outsider.get(f"/v1/documents/{document['document_id']}")
            assert seen.status_code == (200 if "everyone" in groups else 404)
    # Naming a group one does not belong to is still refused, with its name.
    async with served.client(eng) as client:
        foreign = await _upload(client, "x.txt", b"x", groups="hr")
        assert foreign.status_code == 403 and "hr" in foreign.json()["detail"]


# Finding 5 and key expiry -----------------------------------------------------------------------------------------


@module_loop
async def test_a_restricted_admin_mints_lists_and_revokes_only_within_its_groups(served: Served) -> None:
    eng_admin = await served.key(["admin"], ["eng"])
    hr_reader = await served.key(["search"], ["hr"])
    async with served.client(eng_admin) as client:
        for groups in (["*"], ["hr"], ["eng", "hr"]):
            wider = await client.post("/v1/keys", json={"name": "wider", "scopes": ["search"], "groups": groups})
            assert wider.status_code == 403, (groups, wider.text)
            assert wider.headers["content-type"] == "application/problem+json"
        minted = await client.post("/v1/keys", json={"name": "eng bot", "scopes": ["search", "ask"], "groups": ["eng"]})
        assert minted.status_code == 201 and minted.json()["groups"] == ["eng"]
        defaulted = await client.post("/v1/keys", json={"name": "no groups", "scopes": ["admin"]})
        assert defaulted.status_code == 201 and defaulted.json()["groups"] == ["eng"]  # its own, not "everyone"
        listed = {k["key_id"]: k["groups"] for k in (await client.get("/v1/keys")).json()["keys"]}
        assert minted.json()["key_id"] in listed and all(set(g) <= {"eng"} for g in listed.values())
        async with served.client(served.admin) as root:
            everything = {k["key_id"]: k for k in (await root.get("/v1/keys")).json()["keys"]}
        hr_id = next(k for k, v in everything.items() if v["groups"] == ["hr"] and v["revoked_at"] is None)
        assert hr_id not in listed and len(everything) > len(listed)
        # Someone else's key: 404, exactly like a key that does not exist, and it keeps working.
        other = await client.delete(f"/v1/keys/{hr_id}")
        missing = await client.delete(f"/v1/keys/{'f' * 16}")
        assert other.status_code == missing.status_code == 404
        async with served.client(hr_reader) as hr:
            assert (await hr.post("/v1/search", json={"query": "x"})).status_code == 200
        assert (await client.delete(f"/v1/keys/{minted.json()['key_id']}")).status_code == 204
    async with served.client(minted.json()["key"]) as revoked:
        assert (await revoked.post("/v1/search", json={"query": "x"})).status_code == 401


@module_loop
async def test_keys_expire_and_an_expiring_key_cannot_mint_one_that_outlives_it(served: Served) -> None:
    async with served.client(served.admin) as client:
        soon = await client.post("/v1/keys", json={"name": "a day", "scopes": ["admin"], "groups": ["eng"],
                                                   "expires_in_s": 86400})  # fmt: skip
        assert soon.status_code == 201, soon.text
        expires_at = datetime.fromisoformat(soon.json()["expires_at"])
        assert timedelta(hours=23) < expires_at - datetime.now(UTC) <= timedelta(days=1)
        for bad in ({"expires_in_s": 0}, {"expires_at": "2001-01-01T00:00:00Z"},
                    {"expires_in_s": 60, "expires_at": "2999-01-01T00:00:00Z"}):  # fmt: skip
            refused = await client.post("/v1/keys", json={"name": "bad", "scopes": ["search"], **bad})
            assert refused.status_code == 400, (bad, refused.text)
    async with served.client(soon.json()["key"]) as expiring:
        later = await expiring.post("/v1/keys", json={"name": "later", "scopes": ["search"], "groups": ["eng"],
                                                      "expires_in_s": 30 * 86400})  # fmt: skip
        assert later.status_code == 403 and "outlive" in later.json()["detail"]
        inherited = await expiring.post("/v1/keys", json={"name": "inherits", "scopes": ["search"]})
        assert inherited.status_code == 201 and inherited.json()["expires_at"] == soon.json()["expires_at"]

    # An expired key (written straight into the registry: no test waits for a clock) is refused like a revoked one.
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    registry = served.app.state.services.container.registry
    registry.add_api_key(ApiKey(key_id=uuid.uuid4().hex[:16], name="expired", prefix=secret[:10], scopes=["admin"],
                                groups=["*"], expires_at=datetime.now(UTC) - timedelta(minutes=1)), digest(secret))  # fmt: skip
    async with served.client(secret) as expired:
        for method, path in (("POST", "/v1/search"), ("GET", "/v1/documents"), ("GET", "/v1/keys")):
            refused = await expired.request(method, path, json={"query": "x"})
            assert refused.status_code == 401 and "expired" in refused.json()["detail"], path


def test_kb_keys_create_expires_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    created = runner.invoke(cli_app, ["keys", "create", "--scopes", "search", "--groups", "eng", "--expires-in", "30d"])
    assert created.exit_code == 0, created.output
    assert created.output.strip().splitlines()[-1].startswith(KEY_PREFIX)
    listed = runner.invoke(cli_app, ["keys", "list", "--json"])
    (key,) = __import__("json").loads(listed.output)["keys"]
    left = datetime.fromisoformat(key["expires_at"]) - datetime.now(UTC)
    assert timedelta(days=29, hours=23) < left <= timedelta(days=30)
    wrong = runner.invoke(cli_app, ["keys", "create", "--scopes", "search", "--expires-in", "soon"])
    assert wrong.exit_code == 2 and "--expires-in" in wrong.output


@pytest.fixture(params=["sqlite", "postgresql"])
def old_registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A registry whose api_keys table predates expiry (no expires_at column), holding one key."""
    create = ("CREATE TABLE api_keys (key_id VARCHAR(32) PRIMARY KEY, name VARCHAR(255), prefix VARCHAR(32), "
              "digest VARCHAR(64) UNIQUE, scopes JSON, groups JSON, created_at TIMESTAMP, revoked_at TIMESTAMP, "
              "last_used_at TIMESTAMP)")  # fmt: skip
    insert = ("INSERT INTO api_keys (key_id, name, prefix, digest, scopes, groups) "
              "VALUES ('old', 'old key', 'kb_old', 'abc', '[\"search\"]', '[\"eng\"]')")  # fmt: skip
    if request.param == "sqlite":
        path = tmp_path / "registry.sqlite"
        with sqlite3.connect(path) as connection:
            connection.execute(create)
            connection.execute(insert)
        yield f"sqlite:///{path}"
        return
    schema = f"kb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
        connection.execute(text(f"SET search_path TO {schema}"))
        connection.execute(text(create.replace("TIMESTAMP", "TIMESTAMP WITH TIME ZONE")))
        connection.execute(text(insert))
    yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_an_old_registry_gets_the_expiry_column_and_keeps_its_keys(old_registry_url: str) -> None:
    for _ in range(2):  # idempotent: the second start finds the column
        registry = SqlRegistry(old_registry_url)
        columns = {c["name"] for c in inspect(registry._engine).get_columns("api_keys")}
        assert "expires_at" in columns
        (old,) = registry.list_api_keys()
        assert old.key_id == "old" and old.expires_at is None and old.active
        registry.close()
    registry = SqlRegistry(old_registry_url)
    later = datetime.now(UTC) + timedelta(days=3)
    stored = registry.add_api_key(ApiKey("new", "new", "kb_new", ["ask"], ["eng"], expires_at=later), "def")
    assert abs((stored.expires_at - later).total_seconds()) < 1
    assert registry.api_key_by_digest("def").expires_at == stored.expires_at
    registry.close()


# Finding 8 --------------------------------------------------------------------------------------------------------


@module_loop
async def test_deeply_nested_json_is_a_clear_400(served: Served) -> None:
    async with served.client(served.admin) as client:
        for path, body in (("/v1/search", NESTED), ("/v1/ask", NESTED), ("/v1/chat/completions", NESTED),
                           ("/v1/keys", NESTED),
                           ("/v1/search", '{"query": "x", "filters": {"metadata": {"team": ' + NESTED + "}}}")):  # fmt: skip
            response = await client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, (path, response.text[:200])
            if path == "/v1/chat/completions":  # OpenAI's error shape there, for its SDKs
                assert response.headers["content-type"] == "application/json"
                assert "nested too deeply" in response.json()["error"]["message"]
                continue
            assert response.headers["content-type"] == "application/problem+json"
            assert "nested too deeply" in response.json()["detail"]
        form = await _upload(client, "nested.txt", b"nested metadata", metadata=NESTED)
        assert form.status_code == 400 and "nested too deeply" in form.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200


@module_loop
async def test_top_k_out_of_range_is_refused(served: Served) -> None:
    """Search's `top_k` (ask and the OpenAI route take as many passages as the context window holds: no top_k)."""
    async with served.client(served.admin) as client:
        for top_k in (0, -1, 101, 10**9):
            response = await client.post("/v1/search", json={"query": "upload limit", "top_k": top_k})
            assert response.status_code == 400, (top_k, response.text)
            assert response.json()["errors"][0]["key"] == "top_k"
        for top_k in (1, 100):
            assert (await client.post("/v1/search", json={"query": "x", "top_k": top_k})).status_code == 200


@module_loop
async def test_bidi_and_invisible_characters_leave_stored_names_and_the_download_header(served: Served) -> None:
    invisible = "\u202e\u200e\u200f\u2066\u2067\u2068\u2069\u061c\u200b\u200d\ufeff\u2060"
    name = f"invoice{invisible[:6]}fdp{invisible[6:]}.txt"
    async with served.client(served.admin) as client:
        uploaded = await _upload(client, name, b"An invoice with a hidden name.", groups="eng")
        assert uploaded.status_code == 202, uploaded.text
        document = uploaded.json()["documents"][0]
        assert document["filename"] == "invoicefdp.txt"
        stored = (await client.get(f"/v1/documents/{document['document_id']}")).json()["filename"]
        assert stored == "invoicefdp.txt"
        original = await client.get(f"/v1/documents/{document['document_id']}/file")
        disposition = unquote(original.headers["content-disposition"])
        assert "invoicefdp.txt" in disposition
        assert not any(ch in disposition for ch in invisible), disposition


@module_loop
async def test_refused_authentication_is_rate_limited_per_address(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, generator=GeneratorSettings(enabled=False),
                        rate_limit=RateLimitSettings(failed_auth_requests=20))  # fmt: skip
    async with serve_in_process(create_app(settings)) as url:
        valid = settings.admin_key_path.read_text().strip()
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            statuses = []
            for _ in range(40):
                forged = {"Authorization": f"Bearer {KEY_PREFIX}{secrets.token_urlsafe(32)}"}
                statuses.append((await client.post("/v1/search", json={"query": "x"}, headers=forged)).status_code)
            assert statuses[:20] == [401] * 20
            assert 429 in statuses[:39] and set(statuses[20:]) == {429}
            limited = await client.get("/v1/documents", headers=forged)
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
            assert "invalid API key" in limited.json()["detail"]
            # A request with no credential guesses nothing (the signed-out web page asking who is signed in; many
            # users behind one proxy): it is neither counted nor limited, just told a key is needed.
            for _ in range(25):
                assert (await client.get("/v1/session")).status_code == 401
            # A valid key from the same address is unaffected.
            for _ in range(5):
                ok = await client.post("/v1/search", json={"query": "x"}, headers={"Authorization": f"Bearer {valid}"})
                assert ok.status_code == 200, ok.text


# Disconnected streams ---------------------------------------------------------------------------------------------


# (A stream dropped mid-answer leaves one access line too: tests/e2e/test_answering_sse_disconnect.py, on its engine.)


@module_loop
async def test_a_client_gone_while_its_body_is_read_is_logged_499_not_500(served: Served) -> None:
    """A client that leaves mid-upload (a load generator stopped, a closed tab) is not a server error."""
    host, port = served.url.removeprefix("http://").split(":")
    request_id = uuid.uuid4().hex
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/search HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {served.admin}\r\n"
            f"X-Request-ID: {request_id}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            '{"query": "'.encode()
        )
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()  # 11 of the 100,000 announced bytes sent
        lines = await access_lines(logs, request_id)
    assert len(lines) == 1, logs
    assert lines[0]["status"] == 499, lines
