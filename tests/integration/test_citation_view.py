"""Opening a citation through the HTTP API on real parts (unstructured, MiniLM, Qdrant Edge, SQLite; no generator):
the cited chunk with its neighbours in document order, within the caller's groups, and the original sent under its
own name and in its own charset."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from litestar.testing import TestClient

from kb.settings import Settings
from service.app import create_app
from tests.support import bearer

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
PDF = SAMPLES / "kb-administrator-guide.pdf"
TOPICS = ["harbour cranes", "glacier tunnels", "orchard frost", "violin varnish", "lighthouse lenses", "salt marshes",
          "beehive winters", "copper roofing", "kite festivals", "river ferries", "stone bridges", "clock towers"]  # fmt: skip
GB_TEXT = "值班安排：工作日值班时间为上午九点到下午六点。\n周末由运维小组轮流值班，紧急情况请拨打值班电话。\n"
GB_NAME = "值班安排说明.txt"


def long_report() -> bytes:
    """Twelve sections on unrelated topics, long enough to make several chunks."""
    sections = []
    for n, topic in enumerate(TOPICS, 1):
        words = " ".join(f"The {topic} survey notes item {n}-{i} about {topic} maintenance." for i in range(12))
        sections.append(f"Section {n}: {topic.title()}\n\n{words}\n")
    return "\n".join(sections).encode()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("citations"))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(settings, with_generator=False), timeout=120) as test_client:
        test_client.headers["Authorization"] = f"Bearer {settings.admin_key_path.read_text().strip()}"
        yield test_client


def new_key(client: TestClient, scopes: list[str], groups: list[str]) -> str:
    response = client.post("/v1/keys", json={"name": "reader", "scopes": scopes, "groups": groups})
    assert response.status_code == 201, response.text
    return response.json()["key"]


@pytest.fixture(scope="module")
def documents(client: TestClient) -> dict[str, dict]:
    files = [
        ("files", (PDF.name, PDF.read_bytes(), "application/pdf")),
        ("files", ("survey-report.txt", long_report(), "text/plain")),
        ("files", (GB_NAME, GB_TEXT.encode("gb2312"), "text/plain")),
    ]
    uploaded = client.post("/v1/documents", files=files, data={"groups": "staff"})
    assert uploaded.status_code == 202, uploaded.text
    ready = {}
    deadline = time.monotonic() + 180
    for document in uploaded.json()["documents"]:
        while (state := client.get(f"/v1/documents/{document['document_id']}").json())["status"] not in (
            "ready", "failed",
        ):  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert state["status"] == "ready", state
        ready[state["filename"]] = state
    return ready


def top_passage(client: TestClient, query: str) -> dict:
    passages = client.post("/v1/search", json={"query": query, "top_k": 1}).json()["passages"]
    assert passages, query
    return passages[0]


def test_a_pdf_citation_opens_at_its_chunk_with_the_page_link(client: TestClient, documents: dict[str, dict]) -> None:
    passage = top_passage(client, "default upload size limit")
    document_id = passage["document_id"]
    view = client.get(f"/v1/documents/{document_id}/chunks/{passage['chunk_id']}")
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["filename"] == PDF.name and body["media_type"] == "application/pdf" and body["pages"] == 3
    assert body["chunk"]["chunk_id"] == passage["chunk_id"] and body["chunk"]["text"] == passage["text"]
    assert body["chunk"]["page"] == 2 and "100 MB" in body["chunk"]["text"]
    assert body["original_url"] == f"/v1/documents/{document_id}/file"
    assert body["page_url"] == f"/v1/documents/{document_id}/file#page=2"
    # The links work as given (the page opens them with the session cookie; here the key).
    original = client.get(body["original_url"])
    assert original.status_code == 200 and original.content == PDF.read_bytes()


def test_neighbours_are_the_chunks_around_it_in_document_order(client: TestClient, documents: dict[str, dict]) -> None:
    report = documents["survey-report.txt"]
    assert report["chunks"] >= 5, report
    passage = top_passage(client, "violin varnish survey maintenance")
    assert passage["document_id"] == report["document_id"]
    url = f"/v1/documents/{report['document_id']}/chunks/{passage['chunk_id']}"

    one = client.get(url).json()  # the default: one on each side
    index = one["chunk"]["index"]
    assert [c["index"] for c in one["before"]] == ([index - 1] if index > 0 else [])
    assert [c["index"] for c in one["after"]] == ([index + 1] if index + 1 < report["chunks"] else [])
    assert one["page_url"] is None and one["media_type"] == "text/plain"

    wide = client.get(url, params={"neighbours": 5}).json()
    indexes = [c["index"] for c in wide["before"]] + [index] + [c["index"] for c in wide["after"]]
    assert indexes == list(range(max(0, index - 5), min(report["chunks"], index + 6)))
    # Read in order, the neighbours and the chunk are the document's text in sequence.
    texts = [c["text"] for c in wide["before"]] + [wide["chunk"]["text"]] + [c["text"] for c in wide["after"]]
    positions = [long_report().decode().find(t[:40]) for t in texts]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)

    alone = client.get(url, params={"neighbours": 0}).json()
    assert alone["before"] == [] and alone["after"] == [] and alone["chunk"] == one["chunk"]
    for bad in (6, -1):
        refused = client.get(url, params={"neighbours": bad})
        assert refused.status_code == 400 and refused.headers["content-type"].startswith("application/problem+json")


def test_a_reader_outside_the_groups_gets_404_as_for_nothing(client: TestClient, documents: dict[str, dict]) -> None:
    passage = top_passage(client, "default upload size limit")
    url = f"/v1/documents/{passage['document_id']}/chunks/{passage['chunk_id']}"
    staff_asker = new_key(client, ["ask"], ["staff"])
    assert client.get(url, headers=bearer(staff_asker)).status_code == 200  # `ask` is enough to check an answer
    outsider = new_key(client, ["search", "ask"], ["finance"])
    hidden = client.get(url, headers=bearer(outsider))
    missing = client.get(f"/v1/documents/{'0' * 32}/chunks/{passage['chunk_id']}", headers=bearer(outsider))
    assert hidden.status_code == missing.status_code == 404
    assert "staff" not in hidden.text and passage["text"][:30] not in hidden.text
    uploader = new_key(client, ["ingest"], ["staff"])
    assert client.get(url, headers=bearer(uploader)).status_code == 403
    assert client.get(url, headers={"Authorization": ""}).status_code == 401
    no_chunk = client.get(f"/v1/documents/{passage['document_id']}/chunks/not-a-chunk")
    assert no_chunk.status_code == 404 and "not-a-chunk" in no_chunk.json()["detail"]


def test_a_gb2312_text_keeps_its_chinese_name_and_reads_in_its_charset(
    client: TestClient, documents: dict[str, dict]
) -> None:
    document = documents[GB_NAME]
    original = client.get(f"/v1/documents/{document['document_id']}/file")
    assert original.status_code == 200
    assert original.headers["content-disposition"] == f"attachment; filename*=UTF-8''{quote(GB_NAME, safe='')}"
    media_type, _, charset = original.headers["content-type"].partition("; charset=")
    assert media_type == "text/plain" and charset in ("gb18030", "gbk")
    # The original bytes, and they read as the text that was uploaded in the charset the header names.
    assert original.content == GB_TEXT.encode("gb2312")
    assert original.content.decode(charset) == GB_TEXT == original.text
    assert original.headers["content-security-policy"] == "sandbox; default-src 'none'; frame-ancestors 'none'"
    assert original.headers["x-content-type-options"] == "nosniff"
    # Its citation shows the Chinese text too.
    passage = top_passage(client, "工作日值班时间")
    assert passage["document_id"] == document["document_id"]
    view = client.get(f"/v1/documents/{document['document_id']}/chunks/{passage['chunk_id']}").json()
    assert "值班时间为上午九点" in view["chunk"]["text"] and view["filename"] == GB_NAME


def test_an_ascii_text_is_sent_as_utf8_unchanged(client: TestClient) -> None:
    data = b"Plain notes, nothing but ASCII.\n"
    uploaded = client.post("/v1/documents", files={"files": ("notes.md", data, "text/markdown")})
    document_id = uploaded.json()["documents"][0]["document_id"]
    original = client.get(f"/v1/documents/{document_id}/file")
    assert original.headers["content-type"] == "text/markdown; charset=utf-8" and original.content == data
