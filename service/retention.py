"""Conversation retention (KB_CONVERSATIONS__RETENTION_DAYS): each API process forgets the conversations last continued
longer ago than that, with their messages and the sources kept for follow-ups, at start and then every hour. Replicas
doing the same work at once is harmless: the deletes are idempotent, in batches (SqlRegistry.forget_conversations)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from kb.ports import ConversationStore

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0


async def keep_conversations(store: ConversationStore, retention_days: float) -> None:
    """Runs until cancelled. A registry outage is logged and tried again at the next round."""
    while True:
        try:
            before = datetime.now(UTC) - timedelta(days=retention_days)
            forgotten = await asyncio.to_thread(store.forget_conversations, before)
        except Exception as exc:  # noqa: BLE001 - the registry's outage: the next round tries again
            log.warning("forgetting conversations older than %g day(s) failed: %s: %s",
                        retention_days, type(exc).__name__, exc)  # fmt: skip
        else:
            if forgotten:
                log.info("forgot %d conversation(s) last continued before %s (retention %g day(s))",
                         forgotten, before.isoformat(timespec="seconds"), retention_days)  # fmt: skip
        await asyncio.sleep(RETENTION_EVERY_S)
