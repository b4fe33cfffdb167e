"""The web page in a real browser (Debian's Chromium through Playwright) against `kb serve` with every part real:
the key from the link `kb serve` prints traded for a session cookie, a streamed answer with citations under the
page's strict CSP, the cited original opened at its page straight from kb, and a clear message without a key.
(tests/e2e/test_web_security.py: what a script inside an uploaded original can do; nothing.)"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.support import start_kb_serve, stop_process_group

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "kb-administrator-guide.pdf"
QUESTION = "What is the default upload size limit?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("web")
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}  # see kb.adapters.vllm_engine
    env["KB_DATA_DIR"] = str(data_dir)
    process, url = start_kb_serve(env, data_dir.parent / "serve-web.log")
    try:
        deadline = time.monotonic() + 300
        key = (data_dir / "admin.key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        uploaded = httpx.post(f"{url}/v1/documents", headers=headers, timeout=60,
                              files={"files": (SAMPLE.name, SAMPLE.read_bytes(), "application/pdf")})  # fmt: skip
        document_id = uploaded.json()["documents"][0]["document_id"]
        while httpx.get(f"{url}/v1/documents/{document_id}", headers=headers).json()["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.3)
        yield url, key
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium (deploy/setup.sh --with-browser)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


WATCH_CSP = """document.addEventListener("securitypolicyviolation",
  (e) => (window.__cspViolations = window.__cspViolations || []).push(e.violatedDirective + " " + e.blockedURI));"""


def test_without_a_key_the_page_says_what_is_missing(server: tuple[str, str], browser: Browser) -> None:
    url, _ = server
    page = browser.new_page()
    page.goto(f"{url}/")
    page.wait_for_selector("#key-box[data-state=signed-out]")
    assert "Not signed in" in page.inner_text("#key-summary")
    page.fill("#question", QUESTION)
    page.click("#ask-form button")
    # (A string expression would be eval'd in the page, which its CSP refuses: Playwright gets a function.)
    page.wait_for_function("() => document.getElementById('answer').textContent.length > 0")
    assert "401" in page.inner_text("#answer") and "API key is required" in page.inner_text("#answer")
    page.close()


def test_the_link_with_the_key_answers_with_citations_and_opens_the_original(
    server: tuple[str, str], browser: Browser
) -> None:
    url, key = server
    page = browser.new_page()
    errors: list[str] = []
    page.add_init_script(WATCH_CSP)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text)
            if "Content Security Policy" in message.text else None)  # fmt: skip
    page.goto(f"{url}/#key={key}")
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert page.evaluate("location.hash") == ""  # the key leaves the address bar (and the history)
    assert page.inner_text("#key-summary") == "Signed in: local admin"
    # Traded for an HttpOnly session cookie: no script on the page can read the key, nor the session.
    assert page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]
    page.fill("#question", QUESTION)
    page.click("#ask-form button")
    page.wait_for_selector("#citations li", timeout=120_000)
    assert "100 MB" in page.inner_text("#answer")
    citation = page.inner_text("#citations li a")
    assert citation == f"{SAMPLE.name}, page 2"
    href = page.get_attribute("#citations li a", "href")
    assert href.startswith("/v1/documents/") and href.endswith("/file#page=2")
    with page.context.expect_page() as opened, page.context.expect_event("response") as served:
        page.click("#citations li a")
    original = opened.value
    original.wait_for_load_state()
    # Opened straight from kb (the session cookie authorises it), never as a blob: of kb's origin.
    assert original.url == f"{url}{href}"
    response = served.value
    assert response.url == f"{url}{href.split('#')[0]}" and response.status == 200
    headers = response.all_headers()
    assert headers["content-type"] == "application/pdf"
    assert headers["content-disposition"] == f"inline; filename*=UTF-8''{SAMPLE.name}"
    assert headers["content-security-policy"].startswith("sandbox; default-src 'none'")
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "private, no-store"
    assert page.evaluate("window.__cspViolations || []") == []
    assert errors == []
    page.close()
