"""Source links into the web page: `{KB_PUBLIC_URL}/#doc=<document_id>&chunk=<chunk_id>`, what the Slack bot links
each source of an answer to, opened in a real browser (Debian's Chromium through Playwright, offline) against one
`kb serve` with a real index, registry and embedder (no generator: nothing here asks a question):

- a reader not signed in yet keeps the link through signing in, and then sees the source panel a clicked [n] opens:
  the chunk marked, its neighbours around it, "open the original" at its page;
- a link that also carries a key (#key=…&doc=…&chunk=…) signs in and opens it; the key leaves the address bar;
- on an open page: another link (hashchange), Back and Forward between links, closing the panel;
- a reader of another group, and a chunk that does not exist: the panel says in words that it cannot be shown.

As in tests/e2e/test_web_page.py, every request must go to kb and the page must cause no CSP violation; screenshots
go to $KB_TEST_ARTIFACTS/web (default test-artifacts/web)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page
from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed

from kb.models import Citation
from service.slack.answer import source_url
from tests.browser import chromium
from tests.e2e.test_web_page import GUIDE, Watched, shot
from tests.support import start_kb_serve, stop_process_group

pytestmark = pytest.mark.e2e

NOT_SHOWN = ("This passage cannot be shown: it is no longer in kb (its document was deleted or replaced), or it is "
             "shared only with groups you are not in.")  # fmt: skip
SIGN_IN_FIRST = "The linked passage opens once you sign in."


def link(document_id: str, chunk_id: str) -> str:
    """The fragment of the link the Slack bot writes for a source (its values URL-encoded)."""
    cited = Citation(n=1, document_id=document_id, filename="", page=None, snippet="", chunk_id=chunk_id)
    url = source_url("https://kb.example.com", cited)
    assert url is not None and url.startswith("https://kb.example.com/#")
    return url.split("#", 1)[1]


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`kb serve` with the administrator's guide shared with group eng, a key of eng and one of sales, and two
    chunks of the guide: the one on the upload limit (`a`) and another (`b`)."""
    data_dir = tmp_path_factory.mktemp("deeplink")
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}
    env["KB_DATA_DIR"] = str(data_dir)
    env["KB_GENERATOR__ENABLED"] = "false"  # an ingest-and-search node: the panel needs no model
    process, url = start_kb_serve(env, data_dir.parent / "serve-deeplink.log")
    try:
        admin_key = (data_dir / "admin.key").read_text().strip()
        admin = httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {admin_key}"})
        upload = admin.post("/v1/documents", files={"files": (GUIDE.name, GUIDE.read_bytes(), "application/pdf")},
                            data={"groups": "eng"})  # fmt: skip
        assert upload.status_code == 202, upload.text
        document_id = upload.json()["documents"][0]["document_id"]

        @retry(retry=retry_if_result(lambda status: status not in ("ready", "failed")), stop=stop_after_delay(300),
               wait=wait_fixed(1))  # fmt: skip
        def settled() -> str:
            return admin.get(f"/v1/documents/{document_id}").json()["status"]

        assert settled() == "ready", admin.get(f"/v1/documents/{document_id}").text
        keys = {group: admin.post("/v1/keys", json={"name": f"{group} reader", "scopes": ["search", "ask"],
                                                    "groups": [group]}).json()["key"]
                for group in ("eng", "sales")}  # fmt: skip
        found = httpx.post(f"{url}/v1/search", headers={"Authorization": f"Bearer {keys['eng']}"}, timeout=60,
                           json={"query": "What is the default upload size limit?", "top_k": 5,
                                 "filters": {"document_ids": [document_id]}}).json()["passages"]  # fmt: skip
        limit = next(p for p in found if "100 MB" in p["text"])
        other = next(p for p in found if p["chunk_id"] != limit["chunk_id"])
        yield {"url": url, "keys": keys, "document_id": document_id, "a": limit, "b": other}
        admin.close()
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def wait_for_chunk(page: Page, chunk: dict[str, Any]) -> None:
    """The panel shows `chunk`, all of it marked (a link names a chunk, not a span within it)."""
    page.wait_for_function("(text) => document.querySelector('#source-body mark.span')?.textContent === text",
                           arg=chunk["text"])  # fmt: skip
    assert page.is_visible("#source-panel")


def test_a_link_opened_before_signing_in_opens_the_cited_chunk_once_signed_in(
    kb: dict[str, Any], browser: Browser
) -> None:
    watched = Watched(browser, kb["url"], viewport={"width": 1280, "height": 860})
    chunk = kb["a"]
    fragment = link(kb["document_id"], chunk["chunk_id"])
    page = watched.page(f"/#{fragment}")
    page.wait_for_selector("#key-box[data-state=signed-out]")
    assert page.is_visible("#key")  # the box to paste a key is open, the panel says what the link waits for
    assert page.inner_text("#source-body") == SIGN_IN_FIRST and page.is_visible("#source-panel")
    assert page.evaluate("location.hash") == f"#{fragment}"  # kept for after signing in
    shot(page, "deeplink-01-sign-in-first")

    page.fill("#key", kb["keys"]["eng"])
    page.click("#key-form button[type=submit]")
    wait_for_chunk(page, chunk)
    assert page.inner_text("#key-summary").startswith("Signed in")
    assert page.inner_text("#source-title") == f"{GUIDE.name}, page {chunk['page']}"
    assert page.locator("#source-body .context").count() >= 1  # its neighbours
    original = page.locator("#source-body a.original")
    assert original.inner_text() == f"Open the original at page {chunk['page']}"
    assert original.get_attribute("href") == f"/v1/documents/{kb['document_id']}/file#page={chunk['page']}"
    assert "100 MB" in page.text_content("#source-body mark.span")
    shot(page, "deeplink-02-chunk-marked")

    # Closed, the panel takes the link out of the address bar: a reload does not open it again.
    page.keyboard.press("Escape")
    assert not page.is_visible("#source-panel")
    assert page.evaluate("location.hash") == ""
    page.reload()
    page.wait_for_selector("#key-box[data-state=signed-in]")
    assert not page.is_visible("#source-panel")
    watched.check(page)
    watched.close()


def test_links_on_an_open_page_follow_back_and_forward(kb: dict[str, Any], browser: Browser) -> None:
    watched = Watched(browser, kb["url"])
    a, b = kb["a"], kb["b"]
    link_a, link_b = link(kb["document_id"], a["chunk_id"]), link(kb["document_id"], b["chunk_id"])
    # The key and a source link in one link: signed in, the chunk shown; the key leaves the address bar.
    page = watched.page(f"/#key={kb['keys']['eng']}&{link_a}")
    wait_for_chunk(page, a)
    assert page.evaluate("location.hash") == f"#{link_a}"
    assert "key=" not in page.url
    page.keyboard.press("Escape")
    assert page.evaluate("location.hash") == ""

    # A link opened on the open page (a hashchange), then another; Back and Forward walk between them.
    page.evaluate("(fragment) => { location.hash = fragment; }", link_a)
    wait_for_chunk(page, a)
    page.evaluate("(fragment) => { location.hash = fragment; }", link_b)
    wait_for_chunk(page, b)
    page.go_back()
    wait_for_chunk(page, a)
    page.go_back()  # to the page before any link: the panel the link opened closes
    page.wait_for_selector("#source-panel", state="hidden")
    page.go_forward()
    wait_for_chunk(page, a)
    page.go_forward()
    wait_for_chunk(page, b)
    shot(page, "deeplink-03-back-and-forward")
    # A chunk that is not there (its values URL-encoded, as the bot writes them) is said so in words, as a chunk of
    # another group is (kb answers both alike).
    page.evaluate("(fragment) => { location.hash = fragment; }", link(kb["document_id"], "no such/chunk&x=1"))
    page.wait_for_selector("#source-body p.error")
    assert page.inner_text("#source-body p.error") == NOT_SHOWN
    assert page.locator("#source-body mark").count() == 0
    watched.check(page)
    watched.close()


def test_a_reader_of_another_group_is_told_the_passage_cannot_be_shown(kb: dict[str, Any], browser: Browser) -> None:
    watched = Watched(browser, kb["url"], viewport={"width": 1280, "height": 860})
    page = watched.page(f"/#key={kb['keys']['sales']}&{link(kb['document_id'], kb['a']['chunk_id'])}")
    page.wait_for_selector("#key-box[data-state=signed-in]")
    page.wait_for_selector("#source-body p.error")
    assert page.inner_text("#source-body p.error") == NOT_SHOWN
    assert page.inner_text("#source-title") == "Source"  # not even the file's name
    assert kb["a"]["text"][:40] not in page.inner_text("#source-panel")
    assert page.locator("#source-body mark, #source-body a.original").count() == 0
    shot(page, "deeplink-04-not-for-this-reader")
    watched.check(page)
    watched.close()
