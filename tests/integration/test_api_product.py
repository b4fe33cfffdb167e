"""The API as a product, on real parts (MiniLM, Qdrant Edge, SQLite, Redis; no generator): keys and scopes, per-key
rate limits (in memory and shared through Redis by two replicas), RFC 9457 errors, the OpenAPI description,
Prometheus metrics and readiness reasons."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from kb.settings import RateLimitSettings, Settings
from service.app import create_app
from tests.support import bearer

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"


def admin_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_key_path.read_text().strip()}"}


def new_key(client: TestClient, settings: Settings, scopes: list[str], groups: list[str] | None = None) -> str:
    response = client.post("/v1/keys", json={"name": "test", "scopes": scopes, "groups": groups},
                           headers=admin_headers(settings))  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["key"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("product"))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(settings, with_generator=False), timeout=120) as test_client:
        yield test_client


def test_keys_are_stored_hashed_and_revocation_takes_effect(client: TestClient, settings: Settings) -> None:
    key = new_key(client, settings, ["search"], ["staff"])
    assert client.post("/v1/search", json={"query": "anything"}, headers=bearer(key)).status_code == 200
    listed = client.get("/v1/keys", headers=admin_headers(settings)).json()["keys"]
    mine = next(k for k in listed if key.startswith(k["prefix"]))
    assert "key" not in mine and mine["scopes"] == ["search"] and mine["groups"] == ["staff"]
    registry = settings.resolved_data_dir / "registry.sqlite3"
    assert key.encode() not in registry.read_bytes()  # only its digest
    assert client.delete(f"/v1/keys/{mine['key_id']}", headers=admin_headers(settings)).status_code == 204
    refused = client.post("/v1/search", json={"query": "anything"}, headers=bearer(key))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_a_key_without_the_scope_is_forbidden(client: TestClient, settings: Settings) -> None:
    key = new_key(client, settings, ["search"])
    for method, path in (("POST", "/v1/ask"), ("POST", "/v1/chat/completions"), ("POST", "/v1/documents"),
                         ("GET", "/v1/keys"), ("GET", "/metrics")):  # fmt: skip
        response = client.request(method, path, json={}, headers=bearer(key))
        assert response.status_code == 403, path
        if path == "/v1/chat/completions":  # OpenAI's error shape (tests/integration/test_openai_compat.py)
            assert response.json()["error"]["type"] == "permission_error"
        else:
            assert response.headers["content-type"] == "application/problem+json"


def test_errors_are_problem_details(client: TestClient, settings: Settings) -> None:
    headers = admin_headers(settings)
    invalid = client.post("/v1/search", json={"query": 42}, headers=headers)
    assert invalid.status_code == 400 and invalid.headers["content-type"] == "application/problem+json"
    body = invalid.json()
    assert body["type"] == "about:blank" and body["title"] == "Bad Request" and body["status"] == 400
    assert body["instance"] == "/v1/search" and body["request_id"] == invalid.headers["x-request-id"]
    assert "query" in body["detail"] and body["errors"][0]["key"] == "query"
    empty = client.post("/v1/search", json={"query": "  "}, headers=headers)
    assert empty.status_code == 400 and empty.json()["detail"] == "query must not be empty"
    broken = client.post("/v1/search", content=b"{not json", headers={**headers, "content-type": "application/json"})
    assert broken.status_code == 400 and broken.headers["content-type"] == "application/problem+json"
    missing = client.get("/v1/documents/nope", headers=headers)
    assert missing.status_code == 404 and missing.json()["title"] == "Not Found"
    assert missing.json()["detail"] == "no document nope"
    no_route = client.get("/v1/nothing-here", headers=headers)
    assert no_route.status_code == 404 and no_route.headers["content-type"] == "application/problem+json"
    wrong_method = client.put("/v1/search", headers=headers)
    assert wrong_method.status_code == 405 and wrong_method.json()["status"] == 405
    refused = client.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=headers)
    assert refused.status_code == 400 and "scopes must be some of" in refused.json()["detail"]


def examples(media: dict) -> list | dict | None:
    """OpenAPI 3.1 allows them on the media type or on its schema (Litestar puts request examples there)."""
    return media.get("examples") or media.get("schema", {}).get("examples")


def test_openapi_describes_every_route_with_examples_and_the_key(client: TestClient) -> None:
    schema = client.get("/schema/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer", "description": "kb API key"}  # fmt: skip
    assert schema["security"] == [{"ApiKey": []}]
    operations = [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]
    assert {p for p, _, _ in operations} >= {
        "/v1/documents", "/v1/documents/{document_id}", "/v1/documents/{document_id}/file", "/v1/search", "/v1/ask",
        "/v1/conversations/{conversation_id}", "/v1/chat/completions", "/v1/models", "/v1/keys", "/v1/keys/{key_id}",
        "/healthz", "/readyz",
    }  # fmt: skip
    for path, method, operation in operations:
        assert operation.get("summary"), (method, path)
        body = operation.get("requestBody")
        if body is not None:
            content = next(iter(body["content"].values()))
            assert examples(content), f"{method} {path}: request without an example"
        if method == "delete":
            continue
        success = next(v for k, v in operation["responses"].items() if k.startswith("2"))
        content = next(iter(success["content"].values()))
        assert examples(content), f"{method} {path}: response without an example"
    for public in ("/healthz", "/readyz"):
        assert schema["paths"][public]["get"]["security"] == [{}]
    upload = schema["paths"]["/v1/documents"]["post"]
    assert "curl" in upload["description"] and "groups" in upload["description"]


def test_readyz_names_what_is_not_ready(settings: Settings, tmp_path: Path) -> None:
    # Generator enabled in settings but not started: not ready, and it says which part and why.
    with TestClient(app=create_app(Settings(data_dir=tmp_path), with_generator=False)) as starting:
        response = starting.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["checks"]["index"] == "ok" and body["checks"]["registry"] == "ok"
    assert "starting" in body["checks"]["generator"]


def test_rate_limit_is_per_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, rate_limit=RateLimitSettings(requests=5, window="minute"))
    with TestClient(app=create_app(settings, with_generator=False)) as client:
        first, second = (new_key(client, settings, ["search"]) for _ in range(2))
        statuses = [client.post("/v1/search", json={"query": "q"}, headers=bearer(first)).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        limited = client.post("/v1/search", json={"query": "q"}, headers=bearer(first))
        assert limited.headers["content-type"] == "application/problem+json"
        assert limited.headers["ratelimit-limit"] == "5" and limited.headers["ratelimit-remaining"] == "0"
        assert client.post("/v1/search", json={"query": "q"}, headers=bearer(second)).status_code == 200
        assert client.get("/healthz").status_code == 200  # never limited


def test_two_replicas_share_the_limit_through_redis(tmp_path: Path) -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: it runs on this machine for the tests")
    shared_registry = f"sqlite:///{tmp_path / 'registry.sqlite3'}"

    def replica(name: str) -> Settings:
        return Settings(
            data_dir=tmp_path / name, registry_url=shared_registry,
            rate_limit=RateLimitSettings(requests=6, window="minute", redis_url=REDIS_URL),
        )  # fmt: skip

    one, two = replica("one"), replica("two")
    with (
        TestClient(app=create_app(one, with_generator=False)) as a,
        TestClient(app=create_app(two, with_generator=False)) as b,
    ):
        key = new_key(a, one, ["search"])  # one registry: the key works on both replicas
        statuses = [c.post("/v1/search", json={"query": "q"}, headers=bearer(key)).status_code
                    for c in (a, b, a, b, a, b, a, b)]  # fmt: skip
    assert statuses == [200] * 6 + [429, 429]


def test_metrics_cover_requests_ingestion_and_retrieval(client: TestClient, settings: Settings) -> None:
    headers = admin_headers(settings)
    upload = client.post("/v1/documents", files={"files": ("metrics-note.txt", b"The metrics note says hello.")},
                         headers=headers)  # fmt: skip
    document_id = upload.json()["documents"][0]["document_id"]
    deadline = time.monotonic() + 120
    while client.get(f"/v1/documents/{document_id}", headers=headers).json()["status"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    client.post("/v1/search", json={"query": "metrics note"}, headers=headers)
    scraper = new_key(client, settings, ["metrics"])
    text = client.get("/metrics", headers=bearer(scraper)).text

    def value(pattern: str) -> float:
        match = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.MULTILINE)
        assert match, pattern
        return float(match.group(1))

    assert value(r'kb_requests_total\{[^}]*path="/v1/search"[^}]*\}') >= 1
    assert value(r'kb_request_duration_seconds_count\{[^}]*path="/v1/documents/\{document_id\}"[^}]*\}') >= 1
    assert value(r"kb_retrieval_latency_seconds_count") >= 1
    assert value(r'kb_ingest_documents_total\{outcome="ready"\}') >= 1
    assert value(r"kb_ingest_document_duration_seconds_count") >= 1
    assert value(r"kb_ingest_queue_depth") == 0
    # Families the generator feeds exist from the start (with a generator they count answers; see the e2e tests).
    assert "# TYPE kb_time_to_first_token_seconds histogram" in text
    assert "# TYPE kb_generated_tokens_total counter" in text


def test_cli_creates_lists_and_revokes_keys(tmp_path: Path) -> None:
    env = {"KB_DATA_DIR": str(tmp_path), "PATH": str(Path(sys.executable).parent)}

    def kb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip

    created = kb("keys", "create", "--scopes", "search,ask", "--groups", "staff", "--groups", "ops", "--name", "bot")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("kb_") and len(key) > 40
    listed = json.loads(kb("keys", "list", "--json").stdout)["keys"]
    assert [(k["name"], k["scopes"], k["groups"], k["revoked_at"]) for k in listed] == [
        ("bot", ["search", "ask"], ["staff", "ops"], None)]  # fmt: skip
    settings = Settings(data_dir=tmp_path)
    with TestClient(app=create_app(settings, with_generator=False)) as client:
        assert client.post("/v1/search", json={"query": "q"}, headers=bearer(key)).status_code == 200
        assert kb("keys", "revoke", listed[0]["key_id"]).returncode == 0
        time.sleep(5.1)  # another process revoked it: this one's verification cache lives 5 s
        assert client.post("/v1/search", json={"query": "q"}, headers=bearer(key)).status_code == 401
    bad = kb("keys", "create", "--scopes", "everything")
    assert bad.returncode == 2 and "scopes must be some of" in bad.stderr
    assert kb("keys", "revoke", "no-such-key").returncode == 1
