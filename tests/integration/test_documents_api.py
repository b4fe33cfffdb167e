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
        # The local admin key the app writes on first start: every group, every scope.
        test_client.headers["Authorization"] = f"Bearer {settings.admin_key_path.read_text().strip()}"
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
    again = upload(client, SAMPLES / "kb-administrator-guide.pdf", groups="admins,staff")["documents"][0]
    assert again["duplicate"] is True
    assert again["document_id"] == samples["kb-administrator-guide.pdf"]["document_id"]


def test_identical_bytes_for_another_audience_are_a_separate_document(
    client: TestClient, samples: dict[str, dict]
) -> None:
    # Deduplicating across groups would hand this uploader a document it may not see (or share it with them).
    other = upload(client, SAMPLES / "kb-administrator-guide.pdf", groups="finance")["documents"][0]
    assert other["duplicate"] is False
    assert other["document_id"] != samples["kb-administrator-guide.pdf"]["document_id"]
    assert other["groups"] == ["finance"]
    assert wait_terminal(client, other["document_id"])["status"] == "ready"


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


def test_a_new_version_replaces_the_old_content(client: TestClient, tmp_path: Path) -> None:
    first = tmp_path / "policy.md"
    first.write_text("# Travel policy\n\nEmployees book flights through the travel desk in Lisbon.")
    v1 = wait_terminal(client, upload(client, first)["documents"][0]["document_id"])
    assert (v1["status"], v1["version"], v1["live_version"]) == ("ready", 1, 1)

    first.write_text("# Travel policy\n\nEmployees book flights through the travel desk in Porto.")
    same_name = upload(client, first)["documents"][0]  # same name, same collection: the next version
    assert same_name["document_id"] == v1["document_id"] and same_name["version"] == 2
    v2 = wait_terminal(client, v1["document_id"])
    assert (v2["status"], v2["live_version"], v2["progress"]["stage"]) == ("ready", 2, "done")

    texts = [p["text"] for p in client.post("/v1/search", json={
        "query": "travel desk", "filters": {"document_ids": [v1["document_id"]]}}).json()["passages"]]
    assert texts and all("Porto" in t for t in texts) and not any("Lisbon" in t for t in texts)
    assert b"Porto" in client.get(f"/v1/documents/{v1['document_id']}/file").content

    explicit = client.post("/v1/documents", files=[("files", ("renamed.md", b"# Travel\n\nBook trains now."))],
                           data={"document_id": v1["document_id"]})
    assert explicit.status_code == 202 and explicit.json()["documents"][0]["version"] == 3
    assert wait_terminal(client, v1["document_id"])["live_version"] == 3


def test_a_failed_new_version_keeps_the_old_one_searchable(client: TestClient, tmp_path: Path) -> None:
    good = tmp_path / "rota.txt"
    good.write_text("The night rota starts on Mondays at 22:00 in the Oslo office.")
    document = wait_terminal(client, upload(client, good)["documents"][0]["document_id"])
    response = client.post("/v1/documents", files=[("files", ("rota.txt", b"   \n\t  "))],
                           data={"document_id": document["document_id"]})
    assert response.status_code == 202
    failed = wait_terminal(client, document["document_id"])
    assert failed["status"] == "failed" and failed["live_version"] == 1 and "empty" in failed["error"]
    passages = client.post("/v1/search", json={"query": "night rota Oslo",
                                                "filters": {"document_ids": [document["document_id"]]}}).json()
    assert passages["passages"] and "Oslo" in passages["passages"][0]["text"]


def test_upload_over_the_size_limit_is_413_and_stores_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = Settings(data_dir=tmp_path_factory.mktemp("small-limit"))
    settings.ingest.max_upload_bytes = 1000
    with TestClient(app=create_app(settings, with_generator=False), timeout=120) as small:
        small.headers["Authorization"] = f"Bearer {settings.admin_key_path.read_text().strip()}"
        response = small.post("/v1/documents", files=[("files", ("big.txt", b"x" * 2000))])
        assert response.status_code == 413
        assert "exceeds the upload limit" in response.text
        assert small.get("/v1/documents").json()["documents"] == []


def test_metadata_filters_apply_to_ingested_documents(client: TestClient, tmp_path: Path) -> None:
    note = tmp_path / "handover.txt"
    note.write_text("The handover checklist lists the on-call phone, the runbook and the open incidents.")
    response = client.post("/v1/documents", files=[("files", (note.name, note.read_bytes()))],
                           data={"metadata": '{"team": "ops", "collection": "runbooks"}'})
    document = wait_terminal(client, response.json()["documents"][0]["document_id"])
    assert document["status"] == "ready" and document["metadata"] == {"team": "ops", "collection": "runbooks"}
    found = client.post("/v1/search", json={"query": "handover checklist", "filters": {"metadata": {"team": "ops"}}})
    assert [p["document_id"] for p in found.json()["passages"]][:1] == [document["document_id"]]
    other = client.post("/v1/search", json={"query": "handover checklist", "filters": {"metadata": {"team": "hr"}}})
    assert other.json()["passages"] == []
