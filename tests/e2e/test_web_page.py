"""The web page in a real browser (Debian's Chromium through Playwright) against one `kb serve` with every part real
(engine, index, registry), as a person uses it:

- alice, signed in by the company's authenticating proxy (trusted headers from the proxy's address), drops two files
  on the page, watches them become ready, asks, sees the answer stream in, opens a citation at its highlighted span,
  asks a follow-up in the same conversation, reopens it from the list and rates the answer;
- an admin signs in with the link `kb serve` prints and opens a cited original at its page;
- bob, of another group, sees none of alice's documents, conversations or cited passages; the same headers sent
  straight to kb (not from the proxy's address) sign nobody in;
- keyboard alone, 390 px wide in dark mode, a Chinese browser, Markdown that tries to inject HTML, errors in words.

Every request of the browser must go to kb (or the proxy in front of it): anything else is blocked and fails the test,
and the page must cause no CSP violation. Screenshots of each step go to $KB_TEST_ARTIFACTS (default test-artifacts/).
(tests/e2e/test_web_security.py: what a script inside an uploaded original can do; nothing.)"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.browser import WATCH_CSP, chromium
from tests.support import free_port, start_kb_serve, stop_process_group

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "samples" / "kb-administrator-guide.pdf"
HANDBOOK = ROOT / "samples" / "kb-operations-handbook.docx"
QUESTION = "What is the default upload size limit?"
FOLLOW_UP = "How often does Prometheus scrape /metrics?"
PROXY_ADDRESS = "127.0.0.2"  # the authenticating proxy's address, the only one whose headers kb believes
ARTIFACTS = Path(os.environ.get("KB_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "web"
ANSWER_TIMEOUT = 180_000
WATCH = WATCH_CSP + """
window.__streamed = [];
new MutationObserver(() => {
  for (const body of document.querySelectorAll(".answer[data-state=streaming] .answer-body")) {
    const n = body.textContent.length;
    if (n && window.__streamed[window.__streamed.length - 1] !== n) window.__streamed.push(n);
    window.__stopShown ||= !document.getElementById("stop").hidden;
  }
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
"""
shared: dict[str, Any] = {}  # what alice's test leaves for the tests that check others cannot see it


HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


class AuthProxy:
    """A minimal authenticating reverse proxy in front of kb, as a company's SSO gateway is: it has signed its user in
    (here: the one user it was made for), drops any X-Forwarded-* header the browser sent, adds its own, and connects
    to kb from PROXY_ADDRESS. Streams responses through (the answer's Server-Sent Events)."""

    def __init__(self, upstream: str, user: str, groups: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        client = httpx.Client(transport=httpx.HTTPTransport(local_address=PROXY_ADDRESS), timeout=300)

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in HOP_HEADERS and not k.lower().startswith("x-forwarded-")
                           and k.lower() != "host"}  # fmt: skip
                headers.update({"X-Forwarded-User": user, "X-Forwarded-Groups": groups,
                                "X-Forwarded-Email": f"{user}@example.com"})  # fmt: skip
                with client.stream(self.command, upstream + self.path, headers=headers, content=body) as response:
                    self.send_response(response.status_code)
                    for name, value in response.headers.multi_items():
                        if name.lower() not in HOP_HEADERS:
                            self.send_header(name, value)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        for chunk in response.iter_raw():
                            self.wfile.write(chunk)
                            self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):  # the browser stopped the answer
                        pass
                self.close_connection = True

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = client

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("web")
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}  # see kb.adapters.vllm_engine
    env["KB_DATA_DIR"] = str(data_dir)
    env["KB_AUTH__TRUSTED_PROXIES"] = json.dumps([PROXY_ADDRESS])
    env["KB_AUTH__PROXY_INGEST_GROUPS"] = json.dumps(["eng"])  # alice (eng) uploads and deletes; bob (sales) reads
    process, url = start_kb_serve(env, data_dir.parent / "serve-web.log")
    try:
        yield url, (data_dir / "admin.key").read_text().strip()
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def proxies(server: tuple[str, str]) -> Iterator[dict[str, AuthProxy]]:
    url, _ = server
    running = {"alice": AuthProxy(url, "alice", "eng"), "bob": AuthProxy(url, "bob", "sales")}
    yield running
    for proxy in running.values():
        proxy.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


class Watched:
    """A browser context whose requests may only go to `origin` (anything else is blocked and recorded), with pages
    that record CSP violations and script errors."""

    def __init__(self, browser: Browser, origin: str, **options: Any) -> None:
        self.origin = origin
        self.context: BrowserContext = browser.new_context(**options)
        self.elsewhere: list[str] = []
        self.problems: list[str] = []
        self.context.add_init_script(WATCH)
        self.context.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        request = route.request.url
        # (The browser's own pages, such as its PDF viewer's chrome:// resources, are no network requests.)
        if request.startswith(self.origin + "/") or not request.startswith(("http:", "https:", "ws:", "wss:")):
            route.continue_()
        else:
            self.elsewhere.append(request)
            route.abort()

    def page(self, path: str = "/") -> Page:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))
        page.on("console", lambda message: self.problems.append(f"console: {message.text}")
                if "Content Security Policy" in message.text or "Refused to" in message.text else None)  # fmt: skip
        page.goto(self.origin + path)
        return page

    def check(self, page: Page) -> None:
        assert page.evaluate("window.__cspViolations || []") == []
        assert self.problems == [] and self.elsewhere == []

    def close(self) -> None:
        self.context.close()


def shot(page: Page, name: str, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def drop_files(page: Page, target: str, paths: list[Path]) -> None:
    """Drops files on `target` as a person dragging them from the desktop does (a DataTransfer with the files)."""
    files = [{"name": p.name, "type": "", "bytes": list(p.read_bytes())} for p in paths]
    page.evaluate(
        """([selector, files]) => {
          const data = new DataTransfer();
          for (const f of files) data.items.add(new File([new Uint8Array(f.bytes)], f.name, {type: f.type}));
          const target = document.querySelector(selector);
          for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
          }
        }""",
        [target, files],
    )


def wait_answer(page: Page, turns: int) -> None:
    page.wait_for_selector(f".turn:nth-child({turns}) .answer:is([data-state=done], [data-state=error])",
                           timeout=ANSWER_TIMEOUT)  # fmt: skip
    state = page.get_attribute(f".turn:nth-child({turns}) .answer", "data-state")
    assert state == "done", page.inner_text(f".turn:nth-child({turns}) .answer")


def test_without_a_key_the_page_says_what_is_missing(server: tuple[str, str], browser: Browser) -> None:
    url, _ = server
    watched = Watched(browser, url)
    page = watched.page()
    page.wait_for_selector("#key-box[data-state=signed-out]")
    assert "Not signed in" in page.inner_text("#key-summary")
    assert page.is_visible("#key")  # the box to paste a key is open
    page.fill("#question", QUESTION)
    page.click("#ask-form button")
    page.wait_for_selector(".answer[data-state=error]")
    note = page.inner_text(".answer .note")
    assert note.startswith("Not signed in:") and "API key is required" in note
    watched.check(page)
    watched.close()


def test_alice_signed_in_by_the_proxy_uploads_asks_checks_a_citation_follows_up_reopens_and_rates(
    server: tuple[str, str], proxies: dict[str, AuthProxy], browser: Browser
) -> None:
    url, admin_key = server
    alice = Watched(browser, proxies["alice"].url, viewport={"width": 1280, "height": 860})
    page = alice.page()
    # Signed in by the proxy: no key box, no sign-out (the proxy owns the session).
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert page.inner_text("#key-summary") == "Signed in: alice (company sign-in)"
    assert not page.is_visible("#key-form") and not page.is_visible("#sign-out")

    # 1. Two files dropped on the page, shared with her group eng; each has its progress bar and live status.
    page.wait_for_selector("#group-options input[value=eng]")
    page.check("#group-options input[value=eng]")
    drop_files(page, "#drop-zone", [GUIDE, HANDBOOK])
    page.wait_for_function("() => document.getElementById('upload-status').textContent.startsWith('Queued 2')")
    assert page.locator("#upload-list li progress").count() == 2
    page.click("#tab-library")
    page.wait_for_selector("#document-rows tr")
    shot(page, "01-library-uploading")
    page.wait_for_function("() => document.querySelectorAll('#document-rows tr[data-status=ready]').length === 2",
                           timeout=ANSWER_TIMEOUT)  # fmt: skip
    assert page.locator("#upload-list li[data-status=ready]").count() == 2  # no reload: polled
    rows = page.inner_text("#document-rows")
    assert GUIDE.name in rows and HANDBOOK.name in rows and "eng" in rows and "ready" in rows
    page.fill("#doc-search", "handbook")
    assert page.locator("#document-rows tr").count() == 1
    page.fill("#doc-search", "")
    shot(page, "02-library-ready")
    listed = proxies["alice"].client.get(f"{url}/v1/documents", headers={"X-Forwarded-User": "alice",
                                         "X-Forwarded-Groups": "eng"}).json()["documents"]  # fmt: skip
    shared["documents"] = {d["filename"]: d for d in listed}
    assert all("eng" in d["groups"] for d in shared["documents"].values())

    # 2. Ask: the answer streams in (text on screen before it is done), then its citations.
    page.click("#tab-ask")
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    wait_answer(page, 1)
    # Text was on screen while the answer was still streaming (recorded in the page as it happened), with Stop.
    assert page.evaluate("window.__streamed.length") >= 1 and page.evaluate("window.__stopShown") is True
    assert page.is_visible("#ask-button") and not page.is_visible("#stop")
    answer = page.inner_text(".turn:nth-child(1) .answer-body")
    assert "100 MB" in answer
    shot(page, "03-answer")

    # 3. A citation: hovering shows its snippet; opening it shows the passage with the cited span highlighted.
    cite = page.locator(".turn:nth-child(1) .answer-body button.cite").first
    cite.hover()
    page.wait_for_selector("#tooltip:not([hidden])")
    assert GUIDE.name in page.inner_text("#tooltip") and "100 MB" in page.inner_text("#tooltip")
    cite.click()
    page.wait_for_selector("#source-body mark.span")
    assert "100 MB" in page.inner_text("#source-body mark.span")
    assert page.inner_text("#source-title") == f"{GUIDE.name}, page 2"
    assert page.locator("#source-body .context").count() >= 1  # its neighbours around it
    link = page.locator("#source-body a.original")
    assert link.inner_text() == "Open the original at page 2"
    assert re.fullmatch(r"/v1/documents/[^/]+/file#page=2", link.get_attribute("href") or "")
    shot(page, "04-citation-highlighted")
    page.keyboard.press("Escape")
    assert not page.is_visible("#source-panel")

    # 4. A follow-up in the same conversation.
    page.fill("#question", FOLLOW_UP)
    page.press("#question", "Enter")
    wait_answer(page, 2)
    assert (
        "15 seconds" in page.inner_text(".turn:nth-child(2) .answer-body")
        or page.locator(".turn:nth-child(2) .sources li").count() >= 1
    )
    page.wait_for_function("() => /2 questions/.test(document.getElementById('conversations').textContent)")
    assert page.locator("#conversations li").count() == 1

    # 5. A new conversation empties the thread; the old one reopens from the list with both turns and sources.
    page.click("#new-conversation")
    assert page.locator("#thread .turn").count() == 0
    page.click("#conversations button.conversation")
    page.wait_for_selector("#thread .turn:nth-child(2)")
    assert page.inner_text(".turn:nth-child(1) .question-text") == QUESTION
    assert page.inner_text(".turn:nth-child(2) .question-text") == FOLLOW_UP
    assert "100 MB" in page.inner_text(".turn:nth-child(1) .answer-body")
    assert page.get_attribute("#conversations button.conversation", "aria-current") == "true"
    shot(page, "05-conversation-reopened")

    # 6. Feedback on the first answer, with a comment; an admin finds it through the API.
    page.click(".turn:nth-child(1) .feedback button[data-rating=up]")
    page.fill(".turn:nth-child(1) .feedback textarea", "Exactly what I needed")
    page.click(".turn:nth-child(1) .feedback .send-feedback")
    page.wait_for_selector(".turn:nth-child(1) .feedback-result.ok")
    assert page.inner_text(".turn:nth-child(1) .feedback-result") == "Thanks for the feedback."
    shot(page, "06-feedback")
    stored = httpx.get(f"{url}/v1/feedback", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    assert stored.status_code == 200, stored.text
    mine = [f for f in stored.json()["feedback"] if f["comment"] == "Exactly what I needed"]
    assert len(mine) == 1 and mine[0]["rating"] == "up" and mine[0]["question"] == QUESTION
    assert "100 MB" in mine[0]["answer"] and mine[0]["citations"]
    conversation_id = page.evaluate("() => document.querySelector('#conversations button.conversation').dataset.id")
    shared["conversation_id"] = conversation_id
    shared["citation_chunk"] = page.evaluate("""async () => {
        const r = await fetch('/v1/conversations/' + document.querySelector('#conversations button.conversation')
                              .dataset.id);
        const sources = (await r.json()).messages.flatMap((m) => m.sources);
        return sources[0];
    }""")
    assert shared["citation_chunk"]["chunk_id"]
    alice.check(page)
    alice.close()


def test_the_link_with_the_key_answers_with_citations_and_opens_the_original(
    server: tuple[str, str], browser: Browser
) -> None:
    url, key = server
    assert shared.get("documents"), "alice's test uploads the documents this one asks about"
    watched = Watched(browser, url)
    page = watched.page(f"/#key={key}")
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert page.evaluate("location.hash") == ""  # the key leaves the address bar (and the history)
    assert page.inner_text("#key-summary") == "Signed in: local admin"
    # Traded for an HttpOnly session cookie: no script on the page can read the key, nor the session.
    assert page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]
    page.fill("#question", QUESTION)
    page.click("#ask-form button")
    wait_answer(page, 1)
    assert "100 MB" in page.inner_text(".turn:nth-child(1) .answer-body")
    link = page.locator("#citations li a", has_text=GUIDE.name).first
    assert link.inner_text() == f"{GUIDE.name}, page 2"
    href = link.get_attribute("href") or ""
    assert href.startswith("/v1/documents/") and href.endswith("/file#page=2")
    with (
        page.context.expect_page() as opened,
        page.context.expect_event("response", lambda r: "/file" in r.url) as served,
    ):
        link.click()
    original = opened.value
    original.wait_for_load_state()
    # Opened straight from kb (the session cookie authorises it), never as a blob: of kb's origin.
    assert original.url == f"{url}{href}"
    response = served.value
    assert response.url == f"{url}{href.split('#')[0]}" and response.status == 200
    headers = response.all_headers()
    assert headers["content-type"] == "application/pdf"
    assert headers["content-disposition"] == f"inline; filename*=UTF-8''{GUIDE.name}"
    assert headers["content-security-policy"].startswith("sandbox; default-src 'none'")
    assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "private, no-store"
    original.close()
    watched.check(page)
    watched.close()


def test_bob_of_another_group_sees_none_of_alices_documents_conversations_or_citations(
    server: tuple[str, str], proxies: dict[str, AuthProxy], browser: Browser
) -> None:
    url, _ = server
    assert shared.get("conversation_id"), "alice's test leaves what bob must not see"
    bob = Watched(browser, proxies["bob"].url)
    page = bob.page()
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert page.inner_text("#key-summary") == "Signed in: bob (company sign-in)"
    page.click("#tab-library")
    page.wait_for_selector("#library-empty:not([hidden])")
    for name in shared["documents"]:
        assert name not in page.inner_text("#view-library")
    page.wait_for_selector("#conversations-empty:not([hidden])")
    assert page.locator("#conversations li").count() == 0
    chunk = shared["citation_chunk"]
    statuses = page.evaluate("""async ([conversation, chunk]) => [
        (await fetch('/v1/conversations/' + conversation)).status,
        (await fetch(`/v1/documents/${chunk.document_id}/chunks/${chunk.chunk_id}?neighbours=1`)).status,
        (await fetch(`/v1/documents/${chunk.document_id}/file`)).status,
    ]""", [shared["conversation_id"], chunk])  # fmt: skip
    assert statuses == [404, 404, 404]
    # bob asks alice's question: nothing of her group's documents comes back.
    page.click("#tab-ask")
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    wait_answer(page, 1)
    assert GUIDE.name not in page.inner_text("#thread") and HANDBOOK.name not in page.inner_text("#thread")
    shot(page, "07-bob-sees-nothing")
    bob.check(page)
    bob.close()

    # The proxy's headers sent by the browser straight to kb (not from the proxy's address) sign nobody in.
    forged = Watched(browser, url, extra_http_headers={"X-Forwarded-User": "alice", "X-Forwarded-Groups": "eng"})
    page = forged.page()
    page.wait_for_selector("#key-box[data-state=signed-out]")
    assert "Not signed in" in page.inner_text("#key-summary") and page.is_visible("#key")
    assert page.evaluate("async () => (await fetch('/v1/documents')).status") == 401
    forged.check(page)
    forged.close()


def test_keyboard_alone_asks_stops_and_opens_a_citation(
    server: tuple[str, str], proxies: dict[str, AuthProxy], browser: Browser
) -> None:
    watched = Watched(browser, proxies["alice"].url)
    page = watched.page()
    page.wait_for_selector("#key-box[data-state=signed-in]")
    page.keyboard.press("Tab")  # the first stop: the skip link to the question
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "question"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # focus is visible
    # Enter asks; Escape stops the answer being written.
    page.keyboard.type(QUESTION)
    page.keyboard.press("Enter")
    page.wait_for_selector("#stop:not([hidden])")
    page.keyboard.press("Escape")
    page.wait_for_selector(".turn:nth-child(1) .answer:not([data-state=waiting]):not([data-state=streaming])")
    assert page.get_attribute(".turn:nth-child(1) .answer", "data-state") in ("stopped", "done")
    if page.get_attribute(".turn:nth-child(1) .answer", "data-state") == "stopped":
        assert page.inner_text(".turn:nth-child(1) .note") == "Stopped."
    page.wait_for_selector("#ask-button:not([hidden])")
    # Shift+Enter is a new line, Enter asks again.
    page.focus("#question")
    page.keyboard.type("What is the default")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("upload size limit?")
    assert page.input_value("#question") == "What is the default\nupload size limit?"
    page.keyboard.press("Enter")
    wait_answer(page, 2)
    # Tab from the question back through the answer reaches a citation: focus shows its snippet, Enter opens it.
    for _ in range(60):
        page.keyboard.press("Shift+Tab")
        if page.evaluate("document.activeElement.classList.contains('cite')"):
            break
    assert page.evaluate("document.activeElement.classList.contains('cite')")
    page.wait_for_selector("#tooltip:not([hidden])")
    page.keyboard.press("Enter")
    page.wait_for_selector("#source-body mark.span")
    page.keyboard.press("Escape")
    assert not page.is_visible("#source-panel")
    assert page.evaluate("document.activeElement.classList.contains('cite')")  # focus back where it was
    # The conversation deleted from the list, after a confirmation.
    page.wait_for_selector("#conversations button.conversation[aria-current=true]", state="attached")
    conversation_id = page.get_attribute("#conversations button.conversation[aria-current=true]", "data-id")
    row = f"#conversations li:has(button.conversation[data-id='{conversation_id}'])"
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{row} button.delete-conversation")
    page.wait_for_selector(row, state="detached")
    assert page.locator("#thread .turn").count() == 0  # it was the one on screen
    watched.check(page)
    watched.close()


def test_390_px_wide_in_dark_mode(server: tuple[str, str], proxies: dict[str, AuthProxy], browser: Browser) -> None:
    watched = Watched(browser, proxies["alice"].url, viewport={"width": 390, "height": 844}, color_scheme="dark",
                      device_scale_factor=2)  # fmt: skip
    page = watched.page()
    page.wait_for_selector("#key-box[data-state=signed-in]")
    page.wait_for_selector("#conversations li", state="attached")
    assert not page.is_visible("#sidebar") and page.is_visible("#menu-toggle")  # the sidebar folds away
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sideways
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(int(v) for v in re.findall(r"\d+", background)[:3]) < 150  # dark
    page.click("#menu-toggle")
    assert page.is_visible("#sidebar")
    shot(page, "08-narrow-menu")
    page.click(f"#conversations button.conversation[data-id='{shared['conversation_id']}']")
    page.wait_for_selector("#thread .turn:nth-child(2)")
    assert not page.is_visible("#sidebar")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "09-narrow-dark-thread", full_page=True)
    page.click(".turn:nth-child(1) .answer-body button.cite")
    page.wait_for_selector("#source-body mark.span")
    box = page.locator("#source-panel").bounding_box()
    assert box is not None and box["width"] <= 390
    watched.check(page)
    watched.close()


def test_a_chinese_browser_gets_the_chinese_interface(
    server: tuple[str, str], proxies: dict[str, AuthProxy], browser: Browser
) -> None:
    watched = Watched(browser, proxies["alice"].url, locale="zh-CN")
    page = watched.page()
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert page.inner_text("#tab-ask") == "提问" and page.inner_text("#tab-library") == "文档库"
    assert page.inner_text("#key-summary") == "已登录：alice（公司统一登录）"
    assert page.get_attribute("#question", "placeholder").startswith("输入问题")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    assert "Noto Sans CJK SC" in page.evaluate("getComputedStyle(document.body).fontFamily")
    page.click("#tab-library")
    page.wait_for_selector("#document-rows tr[data-status=ready]")
    assert "就绪" in page.inner_text("#document-rows")
    shot(page, "10-chinese-library")
    watched.check(page)
    watched.close()


def test_markdown_from_the_model_or_a_document_cannot_inject_html(server: tuple[str, str], browser: Browser) -> None:
    url, _ = server
    watched = Watched(browser, url)
    page = watched.page()
    page.wait_for_selector("#key-box[data-state=signed-out]")
    hostile = ("**Limits** are *strict* <img src=x onerror=\"window.__pwned=1\"> <script>window.__pwned=2</script>\n"
               "[click](javascript:window.__pwned=3) [docs](https://example.com/a) `<b>code</b>`\n\n"
               "- one [1]\n- two [2, 3]\n\n```\n<svg onload=alert(1)>\n```\n<iframe src=/v1/keys></iframe>")  # fmt: skip
    result = page.evaluate("""async (text) => {
        const {renderMarkdown} = await import('/static/markdown.js');
        const box = document.createElement('div');
        box.append(renderMarkdown(text, {citation: (n) => Object.assign(document.createElement('button'),
                                                                        {className: 'cite', textContent: `[${n}]`})}));
        document.body.append(box);
        await new Promise((r) => setTimeout(r, 200));
        return {pwned: window.__pwned ?? null, text: box.textContent,
                tags: [...box.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()),
                links: [...box.querySelectorAll('a')].map((a) => a.getAttribute('href')),
                cites: [...box.querySelectorAll('button.cite')].map((b) => b.textContent)};
    }""", hostile)  # fmt: skip
    assert result["pwned"] is None
    assert not {"img", "script", "iframe", "svg", "b"} & set(result["tags"])
    assert {"strong", "em", "code", "ul", "li", "pre", "a"} <= set(result["tags"])
    assert '<img src=x onerror="window.__pwned=1">' in result["text"] and "<script>" in result["text"]
    assert "<iframe src=/v1/keys></iframe>" in result["text"] and "<svg onload=alert(1)>" in result["text"]
    assert result["links"] == ["https://example.com/a"]  # a javascript: link stays text
    assert result["cites"] == ["[1]", "[2]", "[3]"]
    # A sentence no source supports is marked even where it spans formatting and a citation marker.
    marked = page.evaluate("""async () => {
        const {renderMarkdown, markText} = await import('/static/markdown.js');
        const box = document.createElement('p');
        box.append(renderMarkdown('Uploads are **limited** to 100 MB [1]. Nothing else.', {citation: (n) =>
            Object.assign(document.createElement('button'), {textContent: `[${n}]`})}));
        const found = markText(box, 'Uploads are limited to 100 MB [1].', () => document.createElement('mark'),
                               (node) => Boolean(node.parentElement.closest('button')));
        return [found, [...box.querySelectorAll('mark')].map((m) => m.textContent).join('|')];
    }""")
    assert marked == [True, "Uploads are |limited| to 100 MB |."]
    watched.check(page)
    watched.close()


def test_errors_are_said_in_words(server: tuple[str, str], browser: Browser) -> None:
    """The page's words for what the API answers when it is busy, still loading, or out of reach (kb's own
    responses to these are tested at the API; here the browser is handed them, to see what a reader is told)."""
    url, key = server
    watched = Watched(browser, url)
    page = watched.page(f"/#key={key}")
    page.wait_for_selector("#key-box[data-state=signed-in]")
    cases = [
        (lambda route: route.fulfill(status=429, headers={"Retry-After": "7", "Content-Type": "application/problem+json"},
                                     body=json.dumps({"status": 429, "detail": "rate limit exceeded"})),
         "Too many requests: retry in 7 s."),
        (lambda route: route.fulfill(status=503, headers={"Content-Type": "application/problem+json"},
                                     body=json.dumps({"status": 503, "detail": "the generator is starting"})),
         "The model is still loading"),
        (lambda route: route.abort("connectionrefused"), "kb cannot be reached"),
    ]  # fmt: skip
    for n, (handler, words) in enumerate(cases, start=1):
        page.route("**/v1/ask", handler)
        page.fill("#question", QUESTION)
        page.press("#question", "Enter")
        page.wait_for_selector(f".turn:nth-child({n}) .answer[data-state=error]")
        assert page.inner_text(f".turn:nth-child({n}) .note").startswith(words)
        page.unroute("**/v1/ask")
    shot(page, "11-errors-in-words")
    # An expired session: the sign-in box opens with the reason.
    page.context.clear_cookies()
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    page.wait_for_selector("#key-box[data-state=signed-out]")
    assert page.is_visible("#key")
    assert "sign in again" in page.inner_text("#key-summary")
    watched.check(page)
    watched.close()


def test_ask_about_chosen_documents_then_delete_one(server: tuple[str, str], browser: Browser) -> None:
    url, key = server
    notes = ROOT / "samples" / "知识库使用说明.md"
    watched = Watched(browser, url)
    page = watched.page(f"/#key={key}")
    page.wait_for_selector("#key-box[data-state=signed-in]")
    empty = {"name": "empty.txt", "mimeType": "text/plain", "buffer": b""}
    page.set_input_files(
        "#files", [{"name": notes.name, "mimeType": "text/markdown", "buffer": notes.read_bytes()}, empty]
    )
    page.click("#upload-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('upload-status').textContent.startsWith('Queued 1')")
    # The file kb refuses says why, beside the one it took.
    assert page.inner_text("#upload-status").endswith("empty.txt: empty file")
    assert page.inner_text("#upload-list li[data-file='empty.txt'] .upload-state") == "empty.txt: empty file"
    page.click("#tab-library")
    row = f'#document-rows tr:has(td.filename:text-is("{notes.name}"))'
    page.wait_for_selector(f"{row}[data-status=ready]", timeout=ANSWER_TIMEOUT)
    # Only ready documents can be chosen; "ask about these" asks within them (the API's document_ids).
    page.check(f"{row} input[type=checkbox]")
    assert page.inner_text("#ask-selected") == "Ask about these (1)"
    page.click("#ask-selected")
    assert page.is_visible("#view-ask") and page.inner_text("#scope-text") == f"Asking within: {notes.name}"
    page.fill("#question", "知识库支持哪些文档格式？")
    page.press("#question", "Enter")
    wait_answer(page, 1)
    sources = page.locator(".turn:nth-child(1) .sources li a").all_inner_texts()
    assert sources and all(name.startswith(notes.name) for name in sources)
    shot(page, "12-asked-within-a-document")
    # Delete, after a confirmation (ingest scope only).
    page.click("#tab-library")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"{row} button[data-role=delete]")
    page.wait_for_selector(row, state="detached")
    assert page.inner_text("#upload-status") == f"Deleted {notes.name}."
    listed = httpx.get(f"{url}/v1/documents", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    assert notes.name not in {d["filename"] for d in listed["documents"]}
    watched.check(page)
    watched.close()
