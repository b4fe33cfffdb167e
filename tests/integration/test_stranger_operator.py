"""Conversation retention racing an answer in flight (found trying KB_CONVERSATIONS__RETENTION_DAYS as a stranger).

/v1/ask claims the conversation (service.ask.access.claim_conversation), generates the answer (seconds), then stores
the question and the answer (ConversationStage.remember). If the retention sweep runs between the claim and the
store, it deletes the conversation's owner row and its old messages; the new turn is then written under no owner:
the owner no longer sees the conversation they have just continued, and the next key that asks with the same
conversation_id claims it and reads the owner's question and answer through GET /v1/conversations/{id}.
The steps below are those calls, in that order, on the real app and SQLite registry."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from litestar.exceptions import NotFoundException
from litestar.testing import TestClient

from kb.adapters.sql_registry import SqlRegistry
from kb.settings import GeneratorSettings, RateLimitSettings, Settings
from service.app import create_app
from service.ask.access import claim_conversation
from service.auth import Principal
from tests.support import backdate_conversation, bearer

pytestmark = pytest.mark.integration

SECRET = "The Q3 numbers: revenue 4.2 M, margin 31 %"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", generator=GeneratorSettings(enabled=False),
                    rate_limit=RateLimitSettings(enabled=False), conversations={"retention_days": 30})  # fmt: skip


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(app=create_app(settings), timeout=60) as test_client:
        yield test_client


def test_a_conversation_continued_while_retention_runs_is_neither_lost_to_its_owner_nor_readable_by_another_key(
    settings: Settings, client: TestClient
) -> None:
    admin = bearer(settings.admin_key_path.read_text().strip())
    keys = {}
    for name in ("alice", "mallory"):
        created = client.post("/v1/keys", json={"name": name, "scopes": ["ask"], "groups": []}, headers=admin)
        assert created.status_code == 201, created.text
        keys[name] = (bearer(created.json()["key"]), created.json()["key_id"])
    (alice, alice_id), (mallory, mallory_id) = keys["alice"], keys["mallory"]
    registry = SqlRegistry(settings.resolved_registry_url)
    try:
        assert registry.claim_conversation("standup-notes", alice_id)
        registry.add_message("standup-notes", "user", "What did we decide in the spring?")
        registry.add_message("standup-notes", "assistant", "To wait [1].", [{"document_id": "d", "chunk_id": "c"}])
        backdate_conversation(settings.resolved_registry_url, "standup-notes", days=200)

        # Alice continues it: /v1/ask claims it (hers), and starts generating.
        assert registry.claim_conversation("standup-notes", alice_id)
        # The hourly sweep runs meanwhile (service.retention.keep_conversations with 30 days).
        assert registry.forget_conversations(datetime.now(UTC) - timedelta(days=30)) == 1
        # The answer is ready: ConversationStage.remember stores the turn, as the key that claimed it.
        registry.add_message("standup-notes", "user", "And what are the Q3 numbers?", owner=alice_id)
        registry.add_message("standup-notes", "assistant", SECRET, owner=alice_id)

        owner = registry.conversation_owner("standup-notes")
        stored = registry.conversation("standup-notes")
        # Mallory asks with the same conversation_id (as /v1/ask would claim it for her), then reads it back.
        registry.claim_conversation("standup-notes", mallory_id)
    finally:
        registry.close()
    read = client.get("/v1/conversations/standup-notes", headers=mallory)
    assert SECRET not in read.text, f"another key reads Alice's answer: {read.status_code} {read.text}"
    # No turn is kept without its owner: either the conversation is still Alice's, or the turn is gone too.
    if owner is None:
        assert stored == [], f"messages kept under no owner: {stored}"
    else:
        listed = client.get("/v1/conversations", headers=alice).json()["conversations"]
        assert [c["conversation_id"] for c in listed] == ["standup-notes"]


def test_a_key_that_guesses_a_slack_threads_conversation_id_cannot_take_it(
    settings: Settings, client: TestClient
) -> None:
    """The Slack bot keeps a thread's turns under `slack-<team>-<channel>-<ts>`, owned by no key. An API key that
    asks with that id (ids are the client's to choose) must not claim it and then read the thread's answers."""
    admin = bearer(settings.admin_key_path.read_text().strip())
    created = client.post("/v1/keys", json={"name": "mallory", "scopes": ["ask"], "groups": []}, headers=admin)
    assert created.status_code == 201, created.text
    mallory, mallory_id = bearer(created.json()["key"]), created.json()["key_id"]
    thread = "slack-T0KB-C0PRIVATE-1764590000.000100"
    registry = SqlRegistry(settings.resolved_registry_url)
    try:
        registry.add_message(thread, "user", "What are the Q3 numbers?")  # as service.slack.answer stores a turn
        registry.add_message(thread, "assistant", SECRET, [{"document_id": "d", "chunk_id": "c", "groups": ["fin"]}])
        # What /v1/ask, the OpenAI route and MCP's ask do first with a conversation_id (this app runs no generator,
        # so /v1/ask itself would answer 503 before getting there).
        with pytest.raises(NotFoundException):
            claim_conversation(registry, Principal(mallory_id, "mallory", frozenset({"ask"}), ()), thread)
    finally:
        registry.close()
    read = client.get(f"/v1/conversations/{thread}", headers=mallory)
    assert read.status_code == 404 and SECRET not in read.text
