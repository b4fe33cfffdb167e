"""The caller's conversations, on the real app answering through the session's vLLM server (SQLite, Qdrant Edge,
MiniLM): GET /v1/conversations lists the caller's own, most recently continued first, each titled by its first
question; GET /v1/conversations/{id} gives the turns with the sources each answer's [n] points to (sources[n-1]);
DELETE removes one, for its owner only; feedback may name a conversation only its owner's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient

from kb.settings import GeneratorSettings, RateLimitSettings, Settings
from service.app import create_app
from tests.conftest import SERVER_MAX_MODEL_LEN
from tests.support import bearer

pytestmark = pytest.mark.integration

BACKUPS = (
    b"Backups run nightly at 02:00 on every production server.\n\n"
    b"Backups are kept for 30 days and then deleted.\n\n"
    b"Restores are requested through the service desk and take about an hour."
)
LONG_QUESTION = (
    "I am new here and I would like to know, in as much detail as possible, how long the nightly backups of the "
    "production servers are kept before they are deleted?"
)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, vllm_server: str) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("conversations"),
        generator=GeneratorSettings(backend="openai", base_url=vllm_server, max_model_len=SERVER_MAX_MODEL_LEN),
        rate_limit=RateLimitSettings(enabled=False),
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(settings), timeout=180) as test_client:
        deadline = time.monotonic() + 120
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, test_client.get("/readyz").text
            time.sleep(0.3)
        admin = bearer(settings.admin_key_path.read_text().strip())
        uploaded = test_client.post("/v1/documents", files={"files": ("backups.txt", BACKUPS, "text/plain")},
                                    data={"groups": "eng"}, headers=admin)  # fmt: skip
        assert uploaded.status_code == 202, uploaded.text
        document_id = uploaded.json()["documents"][0]["document_id"]
        while (status := test_client.get(f"/v1/documents/{document_id}", headers=admin).json()["status"]) != "ready":
            assert status != "failed" and time.monotonic() < deadline + 120, status
            time.sleep(0.3)
        yield test_client


def new_key(client: TestClient, settings: Settings, groups: list[str]) -> str:
    admin = settings.admin_key_path.read_text().strip()
    created = client.post("/v1/keys", json={"name": "t", "scopes": ["ask"], "groups": groups}, headers=bearer(admin))
    assert created.status_code == 201, created.text
    return created.json()["key"]


def ask(client: TestClient, key: str, question: str, conversation_id: str | None = None) -> dict:
    asked = client.post("/v1/ask", json={"question": question, "conversation_id": conversation_id},
                        headers=bearer(key))  # fmt: skip
    assert asked.status_code == 200, asked.text
    return asked.json()


def listed(client: TestClient, key: str, **params: object) -> list[dict]:
    response = client.get("/v1/conversations", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"conversations"}
    return response.json()["conversations"]


def test_a_reader_lists_reopens_and_deletes_its_own_conversations(client: TestClient, settings: Settings) -> None:
    alice, bob = new_key(client, settings, ["eng"]), new_key(client, settings, ["eng"])
    assert listed(client, alice) == []
    first = ask(client, alice, "When do backups run?")
    conversation_id = first["conversation_id"]
    assert first["citations"], first
    follow_up = ask(client, alice, "How long are they kept?", conversation_id)
    assert follow_up["conversation_id"] == conversation_id
    other = ask(client, alice, LONG_QUESTION)["conversation_id"]

    mine = listed(client, alice)
    assert [c["conversation_id"] for c in mine] == [other, conversation_id]  # the latest first
    assert [c["turns"] for c in mine] == [1, 2]
    assert mine[1]["title"] == "When do backups run?"
    assert len(mine[0]["title"]) <= 80 and mine[0]["title"].endswith("…")
    assert LONG_QUESTION.startswith(mine[0]["title"][:-1].rstrip())
    updated = [datetime.fromisoformat(c["updated_at"]) for c in mine]
    assert all(u.utcoffset() == timedelta(0) and abs(datetime.now(UTC) - u) < timedelta(minutes=5) for u in updated)
    assert updated[0] >= updated[1]
    assert [c["conversation_id"] for c in listed(client, alice, limit=1)] == [other]
    assert client.get("/v1/conversations", params={"limit": 0}, headers=bearer(alice)).status_code == 400

    # Reopened: the turns in order, and each answer's [n] is its sources[n-1].
    reopened = client.get(f"/v1/conversations/{conversation_id}", headers=bearer(alice))
    assert reopened.status_code == 200, reopened.text
    messages = reopened.json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "When do backups run?"), ("assistant", first["answer"]),
        ("user", "How long are they kept?"), ("assistant", follow_up["answer"]),
    ]  # fmt: skip
    for answer, message in ((first, messages[1]), (follow_up, messages[3])):
        for citation in answer["citations"]:
            source = message["sources"][citation["n"] - 1]
            assert (source["document_id"], source["chunk_id"]) == (citation["document_id"], citation["chunk_id"])
            assert source["filename"] == "backups.txt"

    # Feedback names a conversation only its owner's.
    rating = {"rating": "up", "question": "When do backups run?", "answer": first["answer"],
              "citations": first["citations"], "conversation_id": conversation_id}  # fmt: skip
    assert client.post("/v1/feedback", json=rating, headers=bearer(alice)).status_code == 201
    assert client.post("/v1/feedback", json=rating, headers=bearer(bob)).status_code == 404

    # Another reader of the same groups neither lists, reads, continues nor deletes it.
    assert listed(client, bob) == []
    assert client.get(f"/v1/conversations/{conversation_id}", headers=bearer(bob)).status_code == 404
    assert client.delete(f"/v1/conversations/{conversation_id}", headers=bearer(bob)).status_code == 404
    continued = client.post("/v1/ask", json={"question": "And restores?", "conversation_id": conversation_id},
                            headers=bearer(bob))  # fmt: skip
    assert continued.status_code == 404
    assert [c["turns"] for c in listed(client, alice)] == [1, 2]

    assert client.delete(f"/v1/conversations/{conversation_id}", headers=bearer(alice)).status_code == 204
    assert [c["conversation_id"] for c in listed(client, alice)] == [other]
    assert client.get(f"/v1/conversations/{conversation_id}", headers=bearer(alice)).status_code == 404
    assert client.delete(f"/v1/conversations/{conversation_id}", headers=bearer(alice)).status_code == 404


def test_the_conversation_routes_are_described_with_examples(client: TestClient) -> None:
    paths = client.get("/schema/openapi.json").json()["paths"]
    listing = paths["/v1/conversations"]["get"]
    assert listing["responses"]["200"]["content"]["application/json"]["examples"]
    assert [p["name"] for p in listing["parameters"]] == ["limit"]
    assert {"get", "delete"} <= set(paths["/v1/conversations/{conversation_id}"])
