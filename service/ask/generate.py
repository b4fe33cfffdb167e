"""Generate: the model's answer, streamed as it is written."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from kb.ports import Generator


class Generation:
    """One answer being written: the deltas as they come, then the whole text and when the first token came."""

    def __init__(self, generator: Generator, messages: Sequence[dict[str, str]], max_tokens: int) -> None:
        self._generator = generator
        self._messages = messages
        self._max_tokens = max_tokens
        self._parts: list[str] = []
        self.first_token_at: float | None = None

    async def deltas(self) -> AsyncIterator[str]:
        # Closing this iterator early (the client left) closes the generator's stream, which aborts the engine's work.
        async for delta in self._generator.stream(self._messages, self._max_tokens):
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self._parts.append(delta)
            yield delta

    @property
    def text(self) -> str:
        return "".join(self._parts).strip()
