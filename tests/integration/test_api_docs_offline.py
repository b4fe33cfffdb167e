"""The API's HTML documentation works on an intranet without internet access: ReDoc at /schema/redoc and Swagger UI
at /schema/swagger load every script and style from kb itself (vendored under service/web/vendor/apidocs), and, in a
real browser (Debian's Chromium through Playwright) that refuses every request to another origin, both render the
API's operations under their page's CSP without a single violation."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from litestar.testing import TestClient
from playwright.sync_api import Browser, Route

from kb.settings import GeneratorSettings, Settings
from service.app import create_app
from service.openapi import DOCS_CSP
from tests.browser import WATCH_CSP, chromium
from tests.support import start_kb_serve, stop_process_group

pytestmark = pytest.mark.integration

PAGES = {"/schema/redoc": "ReDoc", "/schema/swagger": "Swagger UI"}
# An operation's summary, as both viewers show it.
OPERATION = "Upload one or several files"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # hard-coded in redoc.standalone.js


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("docs"), generator=GeneratorSettings(enabled=False))
    with TestClient(app=create_app(settings, with_generator=False), timeout=60) as test_client:
        yield test_client


def local_urls(page: str) -> list[str]:
    """Every URL a page loads (src, href) or is started with (a spec URL); each must stay on kb's origin."""
    urls = re.findall(r"""(?:src|href|spec-url|data-spec-url)\s*=\s*["']([^"']*)["']""", page)
    assert urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), url
    return urls


@pytest.mark.parametrize("path", PAGES)
def test_the_viewers_load_only_kbs_own_files(client: TestClient, path: str) -> None:
    page = client.get(path)  # no key: the API's description is public, as /schema is
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == DOCS_CSP
    assert "'unsafe-eval'" not in DOCS_CSP and "script-src 'self';" in DOCS_CSP
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    html = page.text
    assert "http://" not in html and "https://" not in html and "fonts.googleapis" not in html
    # No inline script: every <script> has a src and an empty body.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.DOTALL)
    assert scripts and all(" src=" in attributes and not body.strip() for attributes, body in scripts)
    for url in local_urls(html):
        served = client.get(url)
        assert served.status_code == 200, url
        if url.endswith(".js"):
            assert served.headers["content-type"].startswith("text/javascript")
        elif url.endswith(".css"):
            assert served.headers["content-type"].startswith("text/css")
    assert client.get(f"{path}/assets/../../admin.key").status_code == 404
    assert client.get(f"{path}/assets/README.md").status_code == 404  # only the files the page loads


def test_the_description_itself_stays_json_at_schema(client: TestClient) -> None:
    described = client.get("/schema")
    assert described.status_code == 200 and described.json()["info"]["title"] == "kb"
    assert described.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_the_vendored_files_carry_their_licences_and_pinned_versions() -> None:
    vendor = Path(__file__).resolve().parents[2] / "service" / "web" / "vendor" / "apidocs"
    readme = (vendor / "README.md").read_text()
    assert "redoc" in readme and "2.5.4" in readme and "swagger-ui-dist" in readme and "5.35.0" in readme
    assert "MIT" in (vendor / "LICENSE.redoc").read_text()
    assert "Apache License" in (vendor / "LICENSE.swagger-ui").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("docs-served")
    env = {**os.environ, "KB_DATA_DIR": str(data_dir), "KB_GENERATOR__ENABLED": "false"}
    process, url = start_kb_serve(env, data_dir.parent / "serve-docs.log")
    try:
        yield url
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.mark.parametrize("path", PAGES)
def test_the_viewers_render_the_api_offline_in_a_real_browser(server: str, browser: Browser, path: str) -> None:
    context = browser.new_context()
    foreign: list[str] = []

    def offline(route: Route) -> None:
        url = route.request.url
        if url.startswith((f"{server}/", "data:", "blob:")):
            route.continue_()
        else:  # the intranet has no way out
            foreign.append(url)
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    errors: list[str] = []
    page.add_init_script(WATCH_CSP)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}{path}")
    # Rendered: the operation's summary is on screen (innerText holds only what is shown).
    page.wait_for_function(f"() => document.body.innerText.includes({OPERATION!r})", timeout=60_000)
    assert "/v1/chat/completions" in page.inner_text("body")
    assert foreign == [], foreign
    # The one thing either viewer would fetch from elsewhere, ReDoc's own logo from its CDN, the page's CSP refuses
    # before any request leaves (ReDoc then leaves the logo out); nothing else is refused.
    assert set(page.evaluate("window.__cspViolations || []")) <= {f"img-src {REDOC_LOGO}"}
    assert errors == []
    # The description came from kb (a request the page made to its own origin).
    assert httpx.get(f"{server}/schema/openapi.json", timeout=30).json()["paths"]["/v1/documents"]
    context.close()
