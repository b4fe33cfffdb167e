"""The web page's session and kb's response headers, on the real app (SQLite, Qdrant Edge, MiniLM; no generator):
POST /v1/session trades a key for an HttpOnly cookie holding a signed, expiring token; the cookie authorises requests
without a key, but unsafe methods only with `X-KB-Request: 1` (CSRF); forged, tampered, expired and revoked sessions
are refused; every response carries the CSP and its companions, and originals can never run as a page of kb."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from litestar.testing import TestClient

from kb.adapters.sql_registry import SqlRegistry
from kb.settings import AuthSettings, Settings
from service.app import API_CSP, PAGE_CSP, create_app
from service.auth import ApiKeyService
from service.openapi import DOCS_CSP
from service.routes.session import SESSION_COOKIE, SessionTokens
from tests.support import bearer

pytestmark = pytest.mark.integration

SAMPLE_PDF = Path(__file__).resolve().parents[2] / "samples" / "kb-administrator-guide.pdf"
ORIGINAL_CSP = "sandbox; default-src 'none'; frame-ancestors 'none'"
KB_REQUEST = {"X-KB-Request": "1"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("session"), auth=AuthSettings(session_ttl_s=600))


@pytest.fixture(scope="module")
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(settings, with_generator=False), timeout=120) as client:
        yield client


def admin_key(settings: Settings) -> str:
    return settings.admin_key_path.read_text().strip()


def new_key(client: TestClient, settings: Settings, scopes: list[str], groups: list[str]) -> tuple[str, str]:
    """(key, key_id) of a new key created by the local admin."""
    response = client.post("/v1/keys", json={"name": "page user", "scopes": scopes, "groups": groups},
                           headers=bearer(admin_key(settings)))  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["key_id"]


def signed_in(client: TestClient, key: str) -> TestClient:
    """A fresh client of the running app (its own cookie jar, as a second browser) signed in with `key`."""
    browser = TestClient(app=client.app, base_url=str(client.base_url), timeout=120)
    response = browser.post("/v1/session", headers=bearer(key))
    assert response.status_code == 200, response.text
    assert SESSION_COOKIE in browser.cookies
    return browser


def set_cookie_attributes(header: str) -> dict[str, str]:
    name_value, *attributes = [part.strip() for part in header.split(";")]
    out = {"_": name_value}
    for attribute in attributes:
        name, _, value = attribute.partition("=")
        out[name.lower()] = value
    return out


def test_the_cookie_is_httponly_strict_short_lived_and_secure_over_https(
    app_client: TestClient, settings: Settings
) -> None:
    key, key_id = new_key(app_client, settings, ["search"], ["staff"])
    before = time.time()
    response = app_client.post("/v1/session", headers=bearer(key))
    assert response.status_code == 200
    body = response.json()
    assert body["key_id"] == key_id and body["scopes"] == ["search"] and body["groups"] == ["staff"]
    assert key not in response.text
    cookie = set_cookie_attributes(response.headers["set-cookie"])
    assert cookie["_"].startswith(f"{SESSION_COOKIE}={key_id}.")
    assert key not in cookie["_"]  # a signed token naming the key, never the key
    assert "httponly" in cookie and cookie["samesite"].lower() == "strict" and cookie["path"] == "/"
    assert "secure" not in cookie  # plain http on loopback: a Secure cookie would never come back
    assert 590 <= int(cookie["max-age"]) <= 600  # KB_AUTH__SESSION_TTL_S
    expiry = int(cookie["_"].split(".")[1])
    assert before + 590 <= expiry <= time.time() + 600
    over_https = TestClient(app=app_client.app, base_url="https://testserver.local")  # the app already runs
    secure = set_cookie_attributes(over_https.post("/v1/session", headers=bearer(key)).headers["set-cookie"])
    assert "secure" in secure and "httponly" in secure
    # The secret the tokens are signed with: created once, readable by the service's user only.
    assert (settings.resolved_data_dir / "session.secret").stat().st_mode & 0o777 == 0o600


def test_the_cookie_authorises_reads_and_unsafe_methods_need_the_request_header(
    app_client: TestClient, settings: Settings
) -> None:
    key, key_id = new_key(app_client, settings, ["search", "ingest"], ["staff"])
    page = signed_in(app_client, key)
    assert page.get("/v1/session").json()["key_id"] == key_id
    assert page.get("/v1/documents").status_code == 200
    for method, path, kwargs in (
        ("POST", "/v1/search", {"json": {"query": "anything"}}),
        ("POST", "/v1/documents", {"files": {"files": ("a.txt", b"hello", "text/plain")}}),
        ("DELETE", "/v1/documents/0123456789abcdef", {}),
        ("DELETE", "/v1/session", {}),  # sign-out, below
    ):
        refused = page.request(method, path, **kwargs)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.headers["content-type"] == "application/problem+json"
        assert "X-KB-Request: 1" in refused.json()["detail"]
    assert page.post("/v1/search", json={"query": "anything"}, headers=KB_REQUEST).status_code == 200
    assert page.delete("/v1/documents/0123456789abcdef", headers=KB_REQUEST).status_code == 404  # past the check
    # A key sent as usual needs no such header, cookie or not (no browser sends it by itself).
    assert page.post("/v1/search", json={"query": "anything"}, headers=bearer(key)).status_code == 200
    assert page.post("/v1/search", json={"query": "anything"}, headers={"X-API-Key": key}).status_code == 200
    # A session starts from a key, never from another session (it would extend itself forever).
    assert page.post("/v1/session", headers=KB_REQUEST).status_code == 401


def test_signing_out_clears_the_cookie_and_needs_the_request_header(app_client: TestClient, settings: Settings) -> None:
    key, _ = new_key(app_client, settings, ["search"], ["staff"])
    page = signed_in(app_client, key)
    assert page.delete("/v1/session").status_code == 403  # a cross-site request cannot sign the user out either
    assert page.get("/v1/session").status_code == 200
    signed_out = page.delete("/v1/session", headers=KB_REQUEST)
    assert signed_out.status_code == 204
    cleared = set_cookie_attributes(signed_out.headers["set-cookie"])
    assert cleared["_"] in (f"{SESSION_COOKIE}=", f'{SESSION_COOKIE}=""') and cleared["max-age"] == "0"
    assert SESSION_COOKIE not in page.cookies
    assert page.get("/v1/session").status_code == 401
    # Signing out works even when the session is no longer valid (nothing to authenticate).
    page.cookies.set(SESSION_COOKIE, "garbage")
    assert page.delete("/v1/session", headers=KB_REQUEST).status_code == 204


def test_an_expired_session_is_refused(app_client: TestClient, settings: Settings) -> None:
    key, key_id = new_key(app_client, settings, ["search"], ["staff"])
    tokens = SessionTokens.from_settings(settings)  # the app's own secret, from DATA_DIR/session.secret
    page = TestClient(app=app_client.app, timeout=120)
    fresh, _ = tokens.issue(key_id)
    page.cookies.set(SESSION_COOKIE, fresh)
    assert page.get("/v1/documents").status_code == 200  # the same secret: a genuine token
    expired, _ = tokens.issue(key_id, expires=int(time.time()) - 1)
    page.cookies.set(SESSION_COOKIE, expired)
    refused = page.get("/v1/documents")
    assert refused.status_code == 401 and "sign in again" in refused.json()["detail"]
    assert refused.headers["content-type"] == "application/problem+json"


def test_forged_and_tampered_sessions_are_refused(app_client: TestClient, settings: Settings) -> None:
    key, key_id = new_key(app_client, settings, ["search"], ["staff"])
    admin_id = app_client.get("/v1/session", headers=bearer(admin_key(settings))).json()["key_id"]
    genuine = signed_in(app_client, key).cookies[SESSION_COOKIE]
    kid, expiry, nonce, signature = genuine.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    other_secret, _ = SessionTokens(b"not the service's secret, 32 b.", 600).issue(admin_id)
    forged = {
        "signature changed": f"{kid}.{expiry}.{nonce}.{flipped}",
        "another key's id": f"{admin_id}.{expiry}.{nonce}.{signature}",  # escalation to the admin key
        "later expiry": f"{kid}.{int(expiry) + 86400}.{nonce}.{signature}",
        "no signature": f"{kid}.{expiry}.{nonce}",
        "empty signature": f"{kid}.{expiry}.{nonce}.",
        "signed with another secret": other_secret,
        "the key itself": key,
        "garbage": "x" * 300,
        "empty": "",
    }
    for why, token in forged.items():
        page = TestClient(app=app_client.app, timeout=120)
        page.cookies.set(SESSION_COOKIE, token)
        response = page.get("/v1/documents")
        assert response.status_code == 401, why
        assert response.headers["content-type"] == "application/problem+json", why
    page = TestClient(app=app_client.app, timeout=120)
    page.cookies.set(SESSION_COOKIE, genuine)
    assert page.get("/v1/documents").status_code == 200
    assert page.get("/v1/keys").status_code == 403  # the key's own rights, nothing more
    assert page.get("/v1/session").json()["key_id"] == key_id


def test_revoking_the_key_ends_its_sessions(app_client: TestClient, settings: Settings) -> None:
    admin = bearer(admin_key(settings))
    # Revoked through the API of this replica: at once (the key cache is cleared).
    key, key_id = new_key(app_client, settings, ["search"], ["staff"])
    page = signed_in(app_client, key)
    assert page.get("/v1/documents").status_code == 200
    assert app_client.delete(f"/v1/keys/{key_id}", headers=admin).status_code == 204
    assert page.get("/v1/documents").status_code == 401
    # Revoked elsewhere (`kb keys revoke` on the same registry): within the key cache's time, 5 s.
    key, key_id = new_key(app_client, settings, ["search"], ["staff"])
    page = signed_in(app_client, key)
    assert page.get("/v1/documents").status_code == 200
    registry = SqlRegistry(settings.resolved_registry_url)
    try:
        assert ApiKeyService(registry, settings.auth).revoke(key_id)
    finally:
        registry.close()
    revoked_at = time.monotonic()
    while page.get("/v1/documents").status_code == 200:
        assert time.monotonic() - revoked_at < 5 + 5, "the session outlived its revoked key past the cache time"
        time.sleep(0.25)
    assert page.get("/v1/documents").status_code == 401


def test_a_configured_secret_signs_tokens_every_replica_accepts(tmp_path: Path) -> None:
    secret = "a shared secret for every replica"
    settings = Settings(data_dir=tmp_path, auth=AuthSettings(session_secret=secret))
    with TestClient(app=create_app(settings, with_generator=False), timeout=120) as client:
        key_id = client.get("/v1/session", headers=bearer(admin_key(settings))).json()["key_id"]
        token, _ = SessionTokens(secret.encode(), 600).issue(key_id)  # as another replica would sign it
        client.cookies.set(SESSION_COOKIE, token)
        assert client.get("/v1/session").json()["key_id"] == key_id
    assert not (settings.resolved_data_dir / "session.secret").exists()


def assert_kb_headers(response, csp: str = API_CSP) -> None:  # noqa: ANN001 - an httpx response
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    assert response.headers.get("content-security-policy") == csp, where
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("x-frame-options") == "DENY", where
    assert response.headers.get("referrer-policy") == "no-referrer", where


def test_every_response_carries_the_csp_and_its_companions(app_client: TestClient, settings: Settings) -> None:
    admin = bearer(admin_key(settings))
    page = app_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert_kb_headers(page, PAGE_CSP)
    # The page has no inline script, style or event handler: the CSP above would refuse them.
    html = page.text.lower()
    assert "<style" not in html and not re.search(r"\sstyle\s*=", html) and not re.search(r"\son\w+\s*=", html)
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, flags=re.S)
    assert scripts and all(body.strip() == "" for body in scripts)
    assert all(" src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    for asset, content_type in (("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")):
        served = app_client.get(asset)  # no key needed: the page loads them before it is signed in
        assert served.status_code == 200 and served.headers["content-type"].startswith(content_type)
        assert_kb_headers(served)
    assert "localStorage.setItem" not in app_client.get("/static/app.js").text
    for response in (
        app_client.get("/healthz"),
        app_client.get("/v1/documents", headers=admin),  # JSON
        app_client.get("/v1/documents"),  # 401 problem
        app_client.get("/v1/documents/0123456789abcdef", headers=admin),  # 404 problem
        app_client.post("/v1/search", json={"query": 42}, headers=admin),  # 400 problem
        app_client.get("/no/such/route"),  # no route at all
        app_client.get("/static/../admin.key"),
        app_client.get("/schema/openapi.json"),
        app_client.get("/schema"),
        app_client.post("/v1/session", headers=admin),
    ):
        assert_kb_headers(response)
    schema = app_client.get("/schema")
    assert schema.status_code == 200 and schema.json()["info"]["title"] == "kb"  # the description, no viewer page
    assert app_client.get("/schema/openapi.json").json()["paths"]["/v1/session"]["post"]["summary"]
    for viewer in ("/schema/redoc", "/schema/swagger"):  # kb's own files only: tests/integration/test_api_docs_offline.py
        assert_kb_headers(app_client.get(viewer), DOCS_CSP)


HOSTILE_HTML = b"<html><body><p>Hello</p><script>fetch('/v1/keys')</script></body></html>"
HOSTILE_SVG = (b'<svg xmlns="http://www.w3.org/2000/svg"><script>fetch("/v1/keys")</script>'
               b'<text x="1" y="10">hi</text></svg>')  # fmt: skip
FAKE_PDF = b"<html><!-- %PDF-1.7 --><body><script>fetch('/v1/keys')</script></body></html>"
POLYGLOT = b"%PDF-1.4\n<html><body><script>fetch('/v1/keys')</script></body></html>\n%%EOF\n"


@pytest.mark.parametrize(
    ("filename", "data", "disposition"),
    [
        ('q3 "report";\r\nX-Evil: 1.html', HOSTILE_HTML, "attachment"),
        ("drawing.svg", HOSTILE_SVG, "attachment"),
        ("invoice.pdf", FAKE_PDF, "attachment"),  # named .pdf, HTML inside
        ("notes.txt", b"plain words", "attachment"),
        ("polyglot.pdf", POLYGLOT, "inline"),  # %PDF magic: the PDF viewer shows it, nosniff keeps it from HTML
        (SAMPLE_PDF.name, SAMPLE_PDF.read_bytes(), "inline"),
    ],
)
def test_originals_are_sandboxed_downloads_except_real_pdfs(
    app_client: TestClient, settings: Settings, filename: str, data: bytes, disposition: str
) -> None:
    admin = bearer(admin_key(settings))
    uploaded = app_client.post("/v1/documents", headers=admin, files={"files": (filename, data, "application/pdf")})
    assert uploaded.status_code == 202, uploaded.text
    document = uploaded.json()["documents"][0]
    original = app_client.get(f"/v1/documents/{document['document_id']}/file", headers=admin)
    assert original.status_code == 200 and original.content == data
    assert_kb_headers(original, ORIGINAL_CSP)
    assert original.headers["cache-control"] == "private, no-store"
    assert original.headers["content-disposition"] == (
        f"{disposition}; filename*=UTF-8''{quote(document['filename'], safe='')}"
    )
    assert "\r" not in original.headers["content-disposition"] and '"' not in original.headers["content-disposition"]
    is_pdf = original.headers["content-type"].startswith("application/pdf")
    assert (disposition == "inline") == (is_pdf and data.startswith(b"%PDF"))
    # The same through the page's session cookie (the citation link in a new tab).
    page = signed_in(app_client, admin_key(settings))
    through_cookie = page.get(f"/v1/documents/{document['document_id']}/file")
    assert through_cookie.status_code == 200 and through_cookie.content == data
    assert through_cookie.headers["content-disposition"] == original.headers["content-disposition"]
