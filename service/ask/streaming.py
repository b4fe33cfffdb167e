"""A streamed answer's first event comes before the door commits to a 200: retrieval and the generator's first token
happen first, so a dependency that is down fails the request with its problem status (503/504). A failure after
that ends the stream with a `Failed` event carrying the same problem fields."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from service.ask.events import AskEvent, Failed
from service.problems import dependency_failure

log = logging.getLogger("kb.errors")


async def opened(events: AsyncIterator[AskEvent]) -> AsyncIterator[AskEvent]:
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise

    async def rest() -> AsyncIterator[AskEvent]:
        try:
            yield first
            async for event in events:
                yield event
        except Exception as exc:
            failure = dependency_failure(exc)
            if failure is None:
                log.error("answer stream failed", exc_info=exc)
                yield Failed(status=500, title="Internal Server Error",
                             detail="an unexpected error occurred; the service log has the details")  # fmt: skip
            else:
                log.warning("answer stream failed: %s", failure.detail)
                yield Failed(status=failure.status, title=failure.title, detail=failure.detail,
                             dependency=failure.dependency)  # fmt: skip
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return rest()
