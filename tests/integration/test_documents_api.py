"""Documents and search through the HTTP API on real parts (unstructured, MiniLM, Qdrant Edge, SQLite); no generator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from kb.settings import Settings
from service.app import create_app

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("api-data"))
    with TestClient(app=create_app(settings, with_generator=False), timeout=120) as test_client:
        yield test_client


def upload(client: TestClient, *paths: Path, groups: str | None = None) -> dict:
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    response = client.post("/v1/documents", files=files, data={"groups": groups} if groups else None)
    assert response.status_code == 202, response.text
    return response.json()


def wait_terminal(client: TestClient, document_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        document = client.get(f"/v1/documents/{document_id}").json()
        if document["status"] in ("ready", "failed"):
            return document
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.fixture(scope="module")
def samples(client: TestClient) -> dict[str, dict]:
    body = upload(client, *sorted(SAMPLES.iterdir()), groups="staff, admins")
    return {d["filename"]: wait_terminal(client, d["document_id"]) for d in body["documents"]}


def test_samples_become_ready_with_pages_and_chunks(samples: dict[str, dict]) -> None:
    pdf = samples["kb-administrator-guide.pdf"]
    assert pdf["status"] == "ready" and pdf["pages"] == 3 and pdf["chunks"] >= 3
    assert all(d["status"] == "ready" and d["chunks"] > 0 for d in samples.values())
    assert all(d["groups"] == ["staff", "admins"] for d in samples.values())


def test_search_returns_the_passage_with_source_metadata(client: TestClient, samples: dict[str, dict]) -> None:
    response = client.post("/v1/search", json={"query": "default upload size limit", "top_k": 3})
    assert response.status_code == 200
    top = response.json()["passages"][0]
    assert top["filename"] == "kb-administrator-guide.pdf" and top["page"] == 2
    assert "100 MB" in top["text"]


def test_chinese_question_finds_the_chinese_document(client: TestClient, samples: dict[str, dict]) -> None:
    passages = client.post("/v1/search", json={"query": "工作日值班时间是什么时候？"}).json()["passages"]
    assert passages[0]["filename"] == "知识库使用说明.md"
    assert "值班时间" in passages[0]["text"]


def test_group_filter_is_applied(client: TestClient, samples: dict[str, dict]) -> None:
    hidden = client.post("/v1/search", json={"query": "upload limit", "filters": {"groups": ["finance"]}}).json()
    assert hidden["passages"] == []
    shown = client.post("/v1/search", json={"query": "upload limit", "filters": {"groups": ["admins"]}}).json()
    assert shown["passages"]


def test_identical_bytes_return_the_existing_document(client: TestClient, samples: dict[str, dict]) -> None:
    again = upload(client, SAMPLES / "kb-administrator-guide.pdf")["documents"][0]
    assert again["duplicate"] is True
    assert again["document_id"] == samples["kb-administrator-guide.pdf"]["document_id"]


def test_unparseable_file_fails_with_its_reason_and_the_rest_goes_on(client: TestClient, samples: dict) -> None:
    body = upload(client, CORPUS / "pdf" / "password.pdf", CORPUS / "txt" / "norwich-city.txt")
    results = {d["filename"]: wait_terminal(client, d["document_id"]) for d in body["documents"]}
    assert results["password.pdf"]["status"] == "failed"
    assert "password" in results["password.pdf"]["error"]
    assert results["norwich-city.txt"]["status"] == "ready"


def test_empty_upload_is_rejected_clearly(client: TestClient) -> None:
    response = client.post("/v1/documents", files=[("files", ("empty.txt", b""))])
    assert response.status_code == 400
    assert "empty" in response.text


def test_delete_removes_chunks_row_and_original(client: TestClient, samples: dict) -> None:
    document = upload(client, CORPUS / "txt" / "fake-text.txt")["documents"][0]
    document = wait_terminal(client, document["document_id"])
    assert document["status"] == "ready"
    filters = {"document_ids": [document["document_id"]]}
    assert client.post("/v1/search", json={"query": "text", "filters": filters}).json()["passages"]
    assert client.delete(f"/v1/documents/{document['document_id']}").status_code == 204
    assert client.get(f"/v1/documents/{document['document_id']}").status_code == 404
    assert client.get(f"/v1/documents/{document['document_id']}/file").status_code == 404
    assert client.post("/v1/search", json={"query": "text", "filters": filters}).json()["passages"] == []


def test_openapi_schema_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/schema/openapi.json").json()["paths"]
    assert {"/v1/documents", "/v1/search", "/v1/ask", "/healthz", "/readyz"} <= set(paths)
