"""Conversation retention on the real app (SQLite registry): with KB_CONVERSATIONS__RETENTION_DAYS set, a conversation
last continued longer ago than that disappears from its owner's list and from GET /v1/conversations/{id}, its messages
(and the sources kept with them) deleted; one continued since is kept whole. The app forgets at start and then every
RETENTION_EVERY_S (an hour; shortened here)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from kb.adapters.sql_registry import SqlRegistry
from kb.settings import GeneratorSettings, RateLimitSettings, Settings
from service import retention
from service.app import create_app
from tests.support import backdate_conversation, bearer

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", generator=GeneratorSettings(enabled=False),
                    rate_limit=RateLimitSettings(enabled=False), conversations={"retention_days": 30})  # fmt: skip


@pytest.fixture
def client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(retention, "RETENTION_EVERY_S", 0.2)
    with TestClient(app=create_app(settings), timeout=60) as test_client:
        yield test_client


def test_a_conversation_past_its_retention_is_forgotten_and_one_continued_since_is_kept(
    settings: Settings, client: TestClient
) -> None:
    admin = bearer(settings.admin_key_path.read_text().strip())
    created = client.post("/v1/keys", json={"name": "reader", "scopes": ["ask"], "groups": []}, headers=admin)
    assert created.status_code == 201, created.text
    reader, key_id = bearer(created.json()["key"]), created.json()["key_id"]
    registry = SqlRegistry(settings.resolved_registry_url)
    try:
        for conversation_id in ("last-spring", "last-week"):
            assert registry.claim_conversation(conversation_id, key_id)
            registry.add_message(conversation_id, "user", f"A question of {conversation_id}")
            registry.add_message(conversation_id, "assistant", "An answer [1].", [{"document_id": "d", "chunk_id": "c"}])
        backdate_conversation(settings.resolved_registry_url, "last-spring", days=200)
        backdate_conversation(settings.resolved_registry_url, "last-week", days=7)
    finally:
        registry.close()

    deadline = time.monotonic() + 30
    while [c["conversation_id"] for c in client.get("/v1/conversations", headers=reader).json()["conversations"]] != [
        "last-week"
    ]:
        assert time.monotonic() < deadline, client.get("/v1/conversations", headers=reader).text
        time.sleep(0.2)
    assert client.get("/v1/conversations/last-spring", headers=reader).status_code == 404
    kept = client.get("/v1/conversations/last-week", headers=reader)
    assert kept.status_code == 200 and len(kept.json()["messages"]) == 2, kept.text


def test_without_a_retention_nothing_is_forgotten(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=tmp_path / "data", generator=GeneratorSettings(enabled=False),
                        rate_limit=RateLimitSettings(enabled=False))  # fmt: skip
    assert settings.conversations.retention_days == 0  # the default: kept until their owner deletes them
    settings.resolved_data_dir.mkdir(parents=True)
    registry = SqlRegistry(settings.resolved_registry_url)
    registry.claim_conversation("years-ago", "key-a")
    registry.add_message("years-ago", "user", "An old question")
    registry.close()
    backdate_conversation(settings.resolved_registry_url, "years-ago", days=2000)
    monkeypatch.setattr(retention, "RETENTION_EVERY_S", 0.1)
    with TestClient(app=create_app(settings), timeout=60):
        time.sleep(1.0)
    registry = SqlRegistry(settings.resolved_registry_url)
    try:
        assert registry.conversation_owner("years-ago") == "key-a" and registry.conversation("years-ago")
    finally:
        registry.close()
