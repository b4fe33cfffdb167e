"""Degrade, don't die: the generator server (vLLM's OpenAI server on a GPU) behind a circuit breaker, with the
in-process CPU engine and its small model as the fallback (`KB_GENERATOR__FALLBACK=engine`).

The breaker is purgatory's: asyncio-native, an async context manager around the guarded call, so that one stream is
guarded from its request to its last token, with consecutive-failure counting and a timed half-open state. Its
rules here:

- While the breaker is closed a question goes to the server. Refused connections, 5xx, a stream cut before
  `data: [DONE]`, no first token (or no next one) within `breaker_timeout_s`: a failure; `breaker_failures` of them
  in a row open the breaker. An answer from the server resets the count, and so does an error the server reports
  itself (a 4xx, an error event): the server answered, it is not away.
- While open, questions go straight to the fallback. After `breaker_reset_s` the next question probes the server
  (half-open; one probe at a time, the questions meanwhile keep to the fallback): its answer closes the breaker,
  its failure opens it again.
- A question that fails on the server still gets its answer, from the fallback. Where the server failed in the
  middle of an answer, the fallback *continues* the text the client already has: the partial answer is handed to the
  engine as the start of the assistant's turn (ContinuingEngineGenerator), so nothing is sent twice and the answer
  reads on; the pipeline's citation check then judges the whole answer like any other.
- A stream its consumer closes (the client left, the repetition guard ended it) counts for nothing before its first
  token and as the server's success after it.
- Every answer the fallback wrote, in whole or in part, says so: its stream's `degraded` is True, and the doors
  report `degraded: true`.

The breaker's state lives in this process (purgatory's in-memory store): each replica judges the server by its own
questions. /metrics shows it (kb_generator_breaker_state, kb_generator_breaker_transitions_total,
kb_generator_fallback_answers_total) and /readyz reports the generator as degraded while it is not closed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from kb.adapters.vllm_engine import VllmEngineGenerator
from kb.metrics import (
    BREAKER_STATES,
    GENERATOR_BREAKER_STATE,
    GENERATOR_BREAKER_TRANSITIONS,
    GENERATOR_FALLBACK_ANSWERS,
)
from kb.ports import Generator, GeneratorServerError, GeneratorTimeout, GeneratorUnavailable
from kb.settings import GeneratorSettings

log = logging.getLogger(__name__)

CIRCUIT = "generator"
# What moves a question to the fallback: the server's errors, transport errors, timeouts (TimeoutError is an OSError).
FAILOVER_ERRORS = (GeneratorServerError, httpx.HTTPError, OSError)
# Where a prompt packed for the server's longer window is cut to fit the fallback's.
CUT_MARK = "\n\n[…]\n\n"
FIT_MARGIN_TOKENS = 64  # the chat template's own tokens around the messages
# /readyz waits at most 3 s for all of its checks; the server's own probe gets less than that.
SERVER_PROBE_TIMEOUT_S = 2.0
STATE_WORDS = {"closed": "closed", "half-opened": "half-open (a question probes the server)", "opened": "open"}


def fallback_settings(settings: GeneratorSettings) -> GeneratorSettings:
    """The fallback engine's settings: the server's sampling, with the CPU engine's own model, window and dtype."""
    update: dict[str, Any] = {
        "backend": "vllm", "model": settings.fallback_model, "dtype": "bfloat16", "enforce_eager": True,
        "max_model_len": settings.fallback_max_model_len, "yarn": False, "hf_overrides": None, "fallback": "off",
    }  # fmt: skip
    if not settings.fallback_model:
        # The default small model's stop strings: a GPU model's settings often drop them (KB_GENERATOR__STOP=[]).
        update["stop"] = GeneratorSettings.model_fields["stop"].default
    return settings.model_copy(update=update)


def _not_an_outage(exc: BaseException) -> bool:
    """The server answered with an error of the request's own (a 4xx, an error event): not the server failing."""
    return not isinstance(exc, GeneratorUnavailable | GeneratorTimeout)


class ContinuingEngineGenerator(VllmEngineGenerator):
    """The in-process engine, able to continue an answer: a chat that ends with an assistant message is rendered with
    that message as the open start of the assistant's turn (not closed, no new turn after it), so the model writes on
    from where the text stands."""

    def prompt_token_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if messages and messages[-1].get("role") == "assistant":
            head = super().prompt_token_ids(messages[:-1])  # ends with the assistant turn's opening
            tokenizer = self.engine.get_tokenizer()
            return [*head, *tokenizer.encode(messages[-1]["content"], add_special_tokens=False)]
        return super().prompt_token_ids(messages)


class FallbackStream:
    """One answer's text, as an async iterator of pieces (closed with `aclose`), and whether the fallback wrote any
    of it (`degraded`, read by the ask pipeline once the stream ends)."""

    def __init__(self, pieces: Callable[[FallbackStream], AsyncIterator[str]]) -> None:
        self.degraded = False
        self._pieces: Any = pieces(self)

    def __aiter__(self) -> FallbackStream:
        return self

    async def __anext__(self) -> str:
        return await anext(self._pieces)

    async def aclose(self) -> None:
        await self._pieces.aclose()


class BreakerGenerator:
    """A Generator: `primary` (the HTTP generator) while it answers, `fallback` (the in-process engine) when it does
    not. `name` labels the metrics (the primary's backend)."""

    def __init__(
        self,
        primary: Generator,
        fallback: Generator,
        settings: GeneratorSettings,
        *,
        name: str = "openai",
        fallback_name: str = "engine",
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._settings = settings
        self._name = name
        self._fallback_name = fallback_name
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.breaker_failures,
            default_ttl=settings.breaker_reset_s,
            exclude=[(GeneratorServerError, _not_an_outage)],
        )
        self._state = "closed"
        self._probing = False
        self._last_failure = ""
        GENERATOR_BREAKER_STATE.labels(name).set(BREAKER_STATES["closed"])

    @property
    def state(self) -> str:
        """The breaker's state as last seen: closed, half-opened or opened."""
        return self._state

    @property
    def primary(self) -> Generator:
        return self._primary

    @property
    def fallback(self) -> Generator:
        return self._fallback

    def _active(self) -> Generator:
        """Where a question would go now: its window and tokenizer size the prompt (the packer asks before the
        question is sent; a prompt that then fails over is cut to the fallback's window, see _fit)."""
        return self._primary if self._state == "closed" else self._fallback

    @property
    def max_model_len(self) -> int:
        return self._active().max_model_len

    def count_tokens(self, text: str) -> int:
        return self._active().count_tokens(text)

    def count_tokens_many(self, texts: Sequence[str], separator: str | None = None) -> list[int]:
        return self._active().count_tokens_many(texts, separator)

    async def start(self) -> None:
        await self._primary.start()
        await self._fallback.start()

    async def warm_up(self) -> None:
        """One generation on the fallback engine: it is why the service may be ready while the server is away. The
        server is not asked: vLLM warms itself before it answers /health, and a server still starting would hold
        kb's readiness for nothing (its state is /readyz's to report)."""
        from kb.container import warm_generation  # the composition root's warm-up (one generation), not a copy

        await warm_generation(self._fallback)

    def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None, *,
        json_schema: dict[str, Any] | None = None, session: str | None = None,
    ) -> FallbackStream:  # fmt: skip
        return FallbackStream(lambda answer: self._answer(answer, list(messages), max_tokens, json_schema, session))

    async def _answer(
        self, answer: FallbackStream, messages: list[dict[str, str]], max_tokens: int | None,
        json_schema: dict[str, Any] | None = None, session: str | None = None,
    ) -> AsyncIterator[str]:  # fmt: skip
        breaker = await self._breakers.get_breaker(CIRCUIT)
        probe = await self._admit(breaker)
        reason = "open"
        sent: list[str] = []
        # A structured answer is held until the server finished it: a JSON text cannot be continued by another
        # model under its grammar, so one the server breaks off is written again, whole, by the fallback.
        extra = {"json_schema": json_schema} if json_schema is not None else {}
        if probe is not None:
            # The conversation's id goes to the server only: its router is what needs it.
            routed = {**extra, "session": session} if session is not None else extra
            pieces = self._timed(self._primary.stream(messages, max_tokens, **routed))
            try:
                async for text in pieces:
                    sent.append(text)
                    if json_schema is None:
                        yield text
            except FAILOVER_ERRORS as exc:
                await self._record(breaker, exc)
                reason = "failed_mid_answer" if sent else "failed"
                log.warning("the generator server failed %s (%s); the fallback engine answers",
                            "in the middle of an answer" if sent else "before its first token", self._last_failure)
            except BaseException:
                # Closed by its consumer (or cancelled): after text came, the server was answering.
                if sent:
                    await self._record(breaker, None)
                raise
            else:
                await self._record(breaker, None)
                if json_schema is not None and sent:
                    yield "".join(sent)
                return
            finally:
                await pieces.aclose()
                if probe:
                    self._probing = False

        answer.degraded = True
        GENERATOR_FALLBACK_ANSWERS.labels(self._name, self._fallback_name, reason).inc()
        partial = "".join(sent) if json_schema is None else ""
        budget = max_tokens or self._settings.max_answer_tokens
        chat = self._fit(messages, partial, budget)
        if partial:
            # The fallback continues the text the client already has; the answer's token budget is shared.
            chat.append({"role": "assistant", "content": partial})
            budget = max(1, budget - self._fallback.count_tokens(partial))
        stream = self._fallback.stream(chat, budget, **extra)
        try:
            async for text in stream:
                yield text
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _admit(self, breaker: Any) -> bool | None:
        """Whether this question goes to the server (True: as the half-open probe), or None: to the fallback (the
        breaker is open, or another question is probing)."""
        if breaker.context.state != "closed" and self._probing:
            return None
        try:
            await breaker.__aenter__()  # purgatory: raises OpenedState while open; after its TTL: half-open
        except OpenedState:
            return None
        finally:
            self._observe(breaker)
        probe = breaker.context.state != "closed"
        self._probing = self._probing or probe
        return probe

    async def _record(self, breaker: Any, exc: BaseException | None) -> None:
        """The outcome of one admitted question, as purgatory's context manager takes it."""
        if exc is None:
            await breaker.__aexit__(None, None, None)
        else:
            self._last_failure = _describe(exc)
            await breaker.__aexit__(type(exc), exc, exc.__traceback__)
        self._observe(breaker)

    def _observe(self, breaker: Any) -> None:
        state = breaker.context.state
        if state != self._state:
            level = logging.INFO if state == "closed" else logging.WARNING
            log.log(level, "generator breaker %s -> %s%s", self._state, state,
                    f" (last failure: {self._last_failure})" if state == "opened" else "")  # fmt: skip
            GENERATOR_BREAKER_TRANSITIONS.labels(self._name, state).inc()
            self._state = state
        GENERATOR_BREAKER_STATE.labels(self._name).set(BREAKER_STATES[state])

    async def _timed(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        """The server's pieces, each within breaker_timeout_s of the one before (the first: of the request). A stalled
        server is a failure like a refused one."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self._settings.breaker_timeout_s):
                        text = await anext(stream)
                except StopAsyncIteration:
                    return
                yield text
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    def _fit(self, messages: list[dict[str, str]], partial: str, max_tokens: int) -> list[dict[str, str]]:
        """The chat within the fallback's window. A prompt packed for the server's longer window loses the middle of
        its longest message (the sources): the first sources stay, and the end (the last sources, the conversation,
        the question)."""
        window = self._fallback.max_model_len - max_tokens - FIT_MARGIN_TOKENS
        counts = self._fallback.count_tokens_many([m["content"] for m in messages] + [partial])
        excess = sum(counts) - window
        chat = [dict(m) for m in messages]
        if excess <= 0 or not messages:
            return chat
        longest = max(range(len(messages)), key=lambda i: counts[i])
        text, others = messages[longest]["content"], sum(counts) - counts[longest]
        keep = max(0.0, (counts[longest] - excess) / max(1, counts[longest]))
        cut = CUT_MARK
        for _ in range(8):
            half = int(len(text) * keep) // 2
            cut = text[:half] + CUT_MARK + text[len(text) - half :] if half else CUT_MARK
            if half == 0 or others + self._fallback.count_tokens(cut) <= window:
                break
            keep *= 0.85
        chat[longest]["content"] = cut
        log.info("a prompt of %d tokens was cut to the fallback's window (%d)", sum(counts), window)
        return chat

    async def ready(self) -> bool:
        return await self._fallback.ready() or await self._primary.ready()

    async def health(self) -> str:
        """For /readyz: "ok" while the server answers; "degraded: …" while the answers come from the fallback (the
        service is ready); otherwise why neither answers."""
        fallback_ready, server_ready = await asyncio.gather(self._fallback.ready(), self._server_ready())
        fallback = "the fallback engine answers" if fallback_ready else "the fallback engine is not ready either"
        if self._state != "closed":
            why = f" after: {self._last_failure}" if self._last_failure else ""
            status = "degraded" if fallback_ready else "error"
            return f"{status}: the breaker to the generator server is {STATE_WORDS[self._state]}{why}; {fallback}"
        if server_ready:
            return "ok"
        status = "degraded" if fallback_ready else "not ready"
        return f"{status}: the generator server does not answer /models with 200; {fallback}"

    async def _server_ready(self) -> bool:
        try:
            return await asyncio.wait_for(self._primary.ready(), SERVER_PROBE_TIMEOUT_S)
        except (TimeoutError, *FAILOVER_ERRORS):
            return False

    async def close(self) -> None:
        try:
            await self._primary.close()
        finally:
            await self._fallback.close()


def _describe(exc: BaseException) -> str:
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
