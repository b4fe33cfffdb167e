"""Sign-in through an authenticating reverse proxy, on the real app served over TCP by uvicorn (SQLite, Qdrant Edge,
MiniLM; no generator). The app trusts 127.0.0.1 (KB_AUTH__TRUSTED_PROXIES); the tests connect from 127.0.0.1 as the
proxy would, and from 127.0.0.2 as anyone else on the network would (loopback answers the whole 127/8, so the server
sees a different TCP peer). The user the proxy names gets its groups, by the same rules as a key's; the same headers
from any other address are ignored; a key always wins over them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from kb.settings import AuthSettings, GeneratorSettings, Settings
from service.app import create_app
from tests.support import serve_in_process

pytestmark = [pytest.mark.integration]
module_loop = pytest.mark.asyncio(loop_scope="module")  # the async tests share the served app's event loop

KB_REQUEST = {"X-KB-Request": "1"}
ALPHA = b"The alpha launch code word is HELIOTROPE. Only team A may read this memo."
BETA = b"The beta rollout code word is MARIGOLD. Only team B may read this memo."


def proxied(user: str, groups: str | None = None, email: str | None = None) -> dict[str, str]:
    """The headers an authenticating proxy adds for its signed-in user."""
    headers = {"X-Forwarded-User": user}
    if groups is not None:
        headers["X-Forwarded-Groups"] = groups
    if email is not None:
        headers["X-Forwarded-Email"] = email
    return headers


@dataclass
class Served:
    url: str
    admin: str
    alpha: str  # document ids
    beta: str

    def proxy(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client connecting from 127.0.0.1: the trusted proxy's address."""
        return httpx.AsyncClient(base_url=self.url, timeout=60, **kwargs)

    def outsider(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client connecting from 127.0.0.2: an address that is not the proxy's."""
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        return httpx.AsyncClient(base_url=self.url, timeout=60, transport=transport, **kwargs)

    async def key(self, scopes: list[str], groups: list[str]) -> tuple[str, str]:
        async with self.proxy(headers={"Authorization": f"Bearer {self.admin}"}) as client:
            created = await client.post("/v1/keys", json={"name": "t", "scopes": scopes, "groups": groups})
            assert created.status_code == 201, created.text
            return created.json()["key"], created.json()["key_id"]


async def _upload_and_wait(client: httpx.AsyncClient, name: str, body: bytes, group: str) -> str:
    uploaded = await client.post("/v1/documents", files={"files": (name, body, "text/plain")}, data={"groups": group})
    assert uploaded.status_code == 202, uploaded.text
    document_id = uploaded.json()["documents"][0]["document_id"]
    deadline = time.monotonic() + 180
    while (status := (await client.get(f"/v1/documents/{document_id}")).json()["status"]) != "ready":
        assert status != "failed" and time.monotonic() < deadline, status
        await asyncio.sleep(0.2)
    return document_id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("proxy"),
        generator=GeneratorSettings(enabled=False),
        auth=AuthSettings(trusted_proxies=["127.0.0.1/32"], proxy_admin_groups=["kb-admins"],
                          proxy_ingest_groups=["team-b"]),
    )
    async with serve_in_process(create_app(settings)) as url:
        admin = settings.admin_key_path.read_text().strip()
        async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {admin}"}) as client:
            alpha = await _upload_and_wait(client, "alpha-memo.txt", ALPHA, "team-a")
            beta = await _upload_and_wait(client, "beta-memo.txt", BETA, "team-b")
        yield Served(url, admin, alpha, beta)


async def _visible(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[set[str], set[str]]:
    """(documents listed, documents found by searching for both code words) for the caller `headers` sign in."""
    listed = await client.get("/v1/documents", headers=headers)
    assert listed.status_code == 200, listed.text
    found: set[str] = set()
    for query in ("alpha launch code word HELIOTROPE", "beta rollout code word MARIGOLD"):
        searched = await client.post("/v1/search", json={"query": query}, headers={**headers, **KB_REQUEST})
        assert searched.status_code == 200, searched.text
        found |= {p["document_id"] for p in searched.json()["passages"]}
    return {d["document_id"] for d in listed.json()["documents"]}, found


@module_loop
async def test_the_proxys_user_is_signed_in_with_its_groups_and_sees_only_their_documents(served: Served) -> None:
    async with served.proxy() as proxy:
        who = await proxy.get("/v1/session", headers=proxied("bob", "team-b", "bob@example.com"))
        assert who.status_code == 200, who.text
        assert who.json() == {
            "signed_in": True, "key_id": None, "name": "bob", "user": "bob", "email": "bob@example.com",
            "scopes": ["ask", "ingest", "search"], "groups": ["team-b", "everyone"], "via": "proxy",
            "expires_at": None,
        }  # fmt: skip
        assert await _visible(proxy, proxied("bob", "team-b")) == ({served.beta}, {served.beta})
        assert await _visible(proxy, proxied("carol", "team-a")) == ({served.alpha}, {served.alpha})
        # Group B's user never reaches group A's document by its id either.
        for path in (f"/v1/documents/{served.alpha}", f"/v1/documents/{served.alpha}/file"):
            assert (await proxy.get(path, headers=proxied("bob", "team-b"))).status_code == 404
        assert (await proxy.get(f"/v1/documents/{served.beta}/file", headers=proxied("bob", "team-b"))).content == BETA
        # No groups header: only the groups every proxied user has (none of the memos).
        assert await _visible(proxy, proxied("dave")) == (set(), set())
        # The user has conversations of its own (none yet), under its own id.
        listed = await proxy.get("/v1/conversations", headers=proxied("bob", "team-b"))
        assert listed.status_code == 200 and listed.json() == {"conversations": []}
        gone = await proxy.delete(f"/v1/conversations/{'c' * 32}", headers={**proxied("bob", "team-b"), **KB_REQUEST})
        assert gone.status_code == 404


@module_loop
async def test_the_same_headers_from_another_address_are_ignored(served: Served) -> None:
    async with served.outsider() as outsider:
        for headers in (proxied("bob", "team-b"), {**proxied("bob", "team-b"), "X-Forwarded-For": "127.0.0.1"}):
            for method, path in (("GET", "/v1/session"), ("GET", "/v1/documents"), ("GET", "/v1/conversations")):
                refused = await outsider.request(method, path, headers=headers)
                assert refused.status_code == 401, (path, refused.text)
                assert refused.headers["content-type"] == "application/problem+json"
                assert "API key is required" in refused.json()["detail"]
        refused = await outsider.post("/v1/search", json={"query": "HELIOTROPE"}, headers={**proxied("root", "team-a"),
                                                                                           **KB_REQUEST})  # fmt: skip
        assert refused.status_code == 401
        # The outsider's own key still works from there: the address is not banned, only its headers ignored.
        key, _ = await served.key(["search"], ["team-a"])
        allowed = await outsider.get("/v1/documents", headers={"Authorization": f"Bearer {key}", **proxied("bob")})
        assert allowed.status_code == 200 and [d["document_id"] for d in allowed.json()["documents"]] == [served.alpha]


@module_loop
async def test_a_key_wins_over_forged_proxy_headers(served: Served) -> None:
    key, key_id = await served.key(["search"], ["team-a"])
    forged = {"Authorization": f"Bearer {key}", **proxied("bob", "team-b,kb-admins", "bob@example.com")}
    async with served.proxy() as proxy:
        who = (await proxy.get("/v1/session", headers=forged)).json()
        assert (who["via"], who["key_id"], who["user"], who["email"]) == ("key", key_id, None, None)
        assert (who["groups"], who["scopes"]) == (["team-a"], ["search"])
        assert await _visible(proxy, forged) == ({served.alpha}, {served.alpha})
        assert (await proxy.get("/v1/keys", headers=forged)).status_code == 403  # not the header's admin group
        # An invalid key is refused, whatever the headers say.
        bad = {"Authorization": "Bearer kb_not-a-key", **proxied("bob", "team-b")}
        assert (await proxy.get("/v1/documents", headers=bad)).status_code == 401


@module_loop
async def test_group_headers_are_read_strictly(served: Served) -> None:
    async with served.proxy() as proxy:
        messy = proxied("erin", "team-b ,, ,*, team a,\tteam-a , kb admins ,everyone")
        who = (await proxy.get("/v1/session", headers=messy)).json()
        # Trimmed, empties dropped, '*' (every group) never granted, names with spaces inside are no group.
        assert who["groups"] == ["team-b", "team-a", "everyone"] and "admin" not in who["scopes"]
        assert await _visible(proxy, messy) == ({served.alpha, served.beta}, {served.alpha, served.beta})
        only_star = proxied("mallory", "*")
        assert (await proxy.get("/v1/session", headers=only_star)).json()["groups"] == ["everyone"]
        assert await _visible(proxy, only_star) == (set(), set())
        # A header sent twice counts every value.
        twice = [("X-Forwarded-User", "frank"), ("X-Forwarded-Groups", "team-a"), ("X-Forwarded-Groups", "team-b")]
        assert (await proxy.get("/v1/session", headers=twice)).json()["groups"] == ["team-a", "team-b", "everyone"]
        # A user header that names nobody, or two people, is refused rather than guessed.
        for headers in ([("X-Forwarded-User", "")], [("X-Forwarded-User", "a"), ("X-Forwarded-User", "b")],
                        [("X-Forwarded-User", "alice, bob")]):  # fmt: skip
            refused = await proxy.get("/v1/documents", headers=headers)
            assert refused.status_code == 401 and "X-Forwarded-User" in refused.json()["detail"], refused.text
        # An email that is no address is left out, not shown.
        assert (await proxy.get("/v1/session", headers=proxied("gus", email="not an email"))).json()["email"] is None


@module_loop
async def test_unsafe_requests_through_the_proxy_need_the_page_header(served: Served) -> None:
    headers = proxied("bob", "team-b")
    async with served.proxy() as proxy:
        refused = await proxy.post("/v1/search", json={"query": "MARIGOLD"}, headers=headers)
        assert refused.status_code == 403 and "X-KB-Request: 1" in refused.json()["detail"]
        upload = await proxy.post("/v1/documents", files={"files": ("x.txt", b"x", "text/plain")}, headers=headers)
        assert upload.status_code == 403
        assert (await proxy.delete(f"/v1/conversations/{'c' * 32}", headers=headers)).status_code == 403
        assert (
            await proxy.post("/v1/search", json={"query": "MARIGOLD"}, headers={**headers, **KB_REQUEST})
        ).is_success
        # No cookie session is started from the proxy's sign-in: nothing to trade.
        session = await proxy.post("/v1/session", headers={**headers, **KB_REQUEST})
        assert session.status_code == 400 and "set-cookie" not in session.headers


@module_loop
async def test_admin_only_through_a_configured_admin_group_and_within_its_groups(served: Served) -> None:
    async with served.proxy() as proxy:
        user = proxied("bob", "team-b")
        assert (await proxy.get("/v1/feedback", headers=user)).status_code == 403
        assert (await proxy.get("/v1/keys", headers=user)).status_code == 403
        given = await proxy.post(
            "/v1/feedback",
            headers={**user, **KB_REQUEST},
            json={"rating": "down", "question": "Beta code word?", "answer": "MARIGOLD [1]."},
        )
        assert given.status_code == 201, given.text
        admin = proxied("ada", "kb-admins,team-b")
        who = (await proxy.get("/v1/session", headers=admin)).json()
        assert "admin" in who["scopes"] and who["groups"] == ["kb-admins", "team-b", "everyone"]
        listed = await proxy.get("/v1/feedback", headers=admin)
        assert listed.status_code == 200, listed.text
        mine = [f for f in listed.json()["feedback"] if f["feedback_id"] == given.json()["feedback_id"]]
        assert [(f["principal_id"], f["source"], f["groups"]) for f in mine] == [("user:bob", "web",
                                                                                  ["team-b", "everyone"])]  # fmt: skip
        # A proxied admin is restricted to its groups: it cannot grant '*' or another team's group.
        grant = await proxy.post("/v1/keys", headers={**admin, **KB_REQUEST},
                                 json={"name": "x", "scopes": ["search"], "groups": ["team-a"]})  # fmt: skip
        assert grant.status_code == 403
        other_admin = proxied("zed", "kb-admins,team-a")
        assert given.json()["feedback_id"] not in {
            f["feedback_id"] for f in (await proxy.get("/v1/feedback", headers=other_admin)).json()["feedback"]
        }


@module_loop
async def test_only_an_ingest_group_uploads_and_nobody_else_deletes_what_everyone_reads(served: Served) -> None:
    """Every proxied user is in "everyone": with ingest for all, any employee could delete the documents shared with
    everyone. Ingest comes only through KB_AUTH__PROXY_INGEST_GROUPS."""
    async with served.proxy(headers={"Authorization": f"Bearer {served.admin}"}) as admin:
        shared = await _upload_and_wait(admin, "company-holidays.txt", b"Company holidays: 24 and 25 December.",
                                        "everyone")  # fmt: skip
    reader = {**proxied("carol", "sales"), **KB_REQUEST}
    editor = {**proxied("bob", "team-b"), **KB_REQUEST}
    async with served.proxy() as proxy:
        assert (await proxy.get("/v1/session", headers=reader)).json()["scopes"] == ["ask", "search"]
        assert (await proxy.delete(f"/v1/documents/{shared}", headers=reader)).status_code == 403
        upload = await proxy.post("/v1/documents", files={"files": ("c.txt", b"carol", "text/plain")}, headers=reader)
        assert upload.status_code == 403
        assert "ingest" in (await proxy.get("/v1/session", headers=editor)).json()["scopes"]
        mine = await proxy.post("/v1/documents", files={"files": ("b.txt", b"bob's notes", "text/plain")},
                                data={"groups": "team-b"}, headers=editor)  # fmt: skip
        assert mine.status_code == 202, mine.text
        assert (await proxy.get(f"/v1/documents/{shared}", headers=reader)).status_code == 200
