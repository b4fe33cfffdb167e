"""Generator backed by a vLLM OpenAI-compatible server (production mode), streamed over HTTP with SSE.

The stream is decoded by httpx-sse rather than the `openai` client because it keeps our httpx client as it is (its
timeouts, the exceptions service/problems.py maps to 503/504, closing the response to abort the request) and lets
us insist on `data: [DONE]`, whereas the `openai` client wraps every error in its own types and ends a stream that
the server cut mid-answer as if it were complete."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError
from tenacity import AsyncRetrying, RetryCallState, before_sleep_log, retry_if_exception, wait_exponential

from kb.ports import GeneratorServerError, GeneratorTimeout, GeneratorUnavailable  # noqa: F401 - raised here, re-exported
from kb.prompt_tokens import PromptTokenCache
from kb.settings import GeneratorSettings

logger = logging.getLogger(__name__)

# Attempts before the first token (each waiting twice as long as the last, from BACKOFF_BASE_S): a vLLM server
# restarting or a replica going away behind the Service is over in seconds.
CONNECT_ATTEMPTS = 4
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# Rough English average; only used when no tokenizer is available.
CHARS_PER_TOKEN_ESTIMATE = 4


# A health probe of the server answers at once or not at all: /readyz never waits for the request timeout.
READY_TIMEOUT_S = 3.0
MAX_IDLE_CONNECTIONS = 256  # kept open for the next answers; the number of open streams has no cap


def _retryable(exc: BaseException) -> bool:
    # Not a read timeout: the server is up and working on it (a long prefill, a queue); sending the request again
    # would only add to its load.
    return isinstance(exc, GeneratorUnavailable | httpx.ConnectError | httpx.ConnectTimeout | httpx.RemoteProtocolError)


def delta_text(chunk: dict[str, Any]) -> str:
    """Text added by one chat.completion.chunk; raises on an error event."""
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise GeneratorServerError(f"generator server error: {message}")
    parts = []
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            parts.append(content)
    return "".join(parts)


async def iter_sse_deltas(events: AsyncGenerator[ServerSentEvent, None]) -> AsyncIterator[str]:
    """Text deltas from the events of an OpenAI chat-completions SSE stream, up to `data: [DONE]`."""
    async with aclosing(events):
        async for event in events:
            data = event.data.strip()
            if not data:
                continue
            if data == "[DONE]":
                return
            text = delta_text(json.loads(data))
            if text:
                yield text
    # A body delimited by the connection's end looks complete when the server died mid-answer: only [DONE] says
    # the answer is whole.
    raise GeneratorUnavailable("the generator server closed the stream before it finished")


class OpenAIHttpGenerator:
    def __init__(
        self,
        settings: GeneratorSettings,
        model_dir: Path | str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_attempts: int = CONNECT_ATTEMPTS,
    ) -> None:
        """`connect_attempts`: fewer where a fallback generator stands behind this one (kb/adapters/
        fallback_generator.py): a question moves there sooner than the backoff would let a restart finish."""
        self._settings = settings
        self._connect_attempts = max(1, connect_attempts)
        self._model_dir = Path(model_dir) if model_dir else None
        self._tokenizer: Any = None
        self._prompt_tokens: PromptTokenCache | None = None
        self._client = httpx.AsyncClient(
            base_url=settings.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {settings.api_key}"},
            # Connecting is quick or the server is not there; reading waits for prefill (long at 128k) and decode.
            timeout=httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s),
            # One connection per streamed answer, without a cap: vLLM schedules and queues every request it is sent
            # (its queue shows in its /metrics), while httpx's default of 100 connections kept the 101st answer of a
            # replica waiting in this process for another to finish (bench.gpu_load: first token p50 5.1 s instead
            # of 0.6 s at 128 concurrent questions). Idle connections kept for the next answers.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=MAX_IDLE_CONNECTIONS),
            transport=transport,
        )

    @property
    def max_model_len(self) -> int:
        return self._settings.max_model_len

    async def start(self) -> None:
        if self._model_dir is not None and self._tokenizer is None:
            self._tokenizer = await asyncio.to_thread(self._load_tokenizer)

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self._model_dir))

    async def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None, *,
        json_schema: dict[str, Any] | None = None, session: str | None = None,
    ) -> AsyncIterator[str]:  # fmt: skip
        body = {
            "model": self._settings.served_model_name,
            "messages": list(messages),
            "max_tokens": max_tokens or self._settings.max_answer_tokens,
            "temperature": self._settings.temperature,
            "top_p": self._settings.top_p,
            "stop": list(self._settings.stop) or None,
            "repetition_penalty": self._settings.repetition_penalty,  # vLLM's extension of the OpenAI API
            "frequency_penalty": self._settings.frequency_penalty,
            "presence_penalty": self._settings.presence_penalty,
            "stream": True,
        }
        if json_schema is not None:
            # vLLM's structured outputs through OpenAI's own field; no stop string may cut the JSON.
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": json_schema}}
            body["stop"] = None
        # The conversation, for a router in front of several vLLM servers (KB_GENERATOR__SESSION_HEADER).
        headers = {self._settings.session_header: session} if session and self._settings.session_header else None
        budget = self._settings.request_timeout_s
        wait = wait_exponential(multiplier=BACKOFF_BASE_S, max=BACKOFF_MAX_S)

        def out_of_attempts(state: RetryCallState) -> bool:
            # Retries fit in the request timeout: a caller waits at most that long for the first token (or for the
            # last error), never the attempts times it.
            return state.attempt_number >= self._connect_attempts or state.seconds_since_start + wait(state) > budget

        retrying = AsyncRetrying(
            stop=out_of_attempts,
            wait=wait,
            retry=retry_if_exception(_retryable),
            before_sleep=before_sleep_log(logger, logging.WARNING),
            reraise=True,
        )
        # Once text went out a retry would repeat it, so only what happens before the first token is retried.
        try:
            # A safety net over the retries: each attempt's reads are bounded by the timeout already, but a server
            # that answers 503 slowly, again and again, must not hold the caller longer than the budget.
            async with asyncio.timeout(budget + self._settings.connect_timeout_s):
                async for attempt in retrying:
                    with attempt:
                        response, deltas, first = await self._first_delta(body, headers)
        except TimeoutError as exc:
            raise GeneratorTimeout(f"the generator server sent no answer within {budget:g} s") from exc
        try:
            if first is not None:
                yield first
            async for text in deltas:
                yield text
        finally:
            # However the stream ends (done, error, aclose, cancellation), the response is closed: the server
            # aborts the request when its client disconnects.
            await deltas.aclose()
            await response.aclose()

    async def _first_delta(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[httpx.Response, AsyncIterator[str], str | None]:
        """The open response, its remaining deltas and the first one (None: the answer is empty)."""
        request = self._client.build_request("POST", "chat/completions", json=body, headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            if response.status_code != httpx.codes.OK:
                await response.aread()
                retryable = response.status_code >= 500 or response.status_code == httpx.codes.TOO_MANY_REQUESTS
                error = GeneratorUnavailable if retryable else GeneratorServerError
                raise error(f"generator server answered {response.status_code}: {response.text[:500]}")
            deltas = iter_sse_deltas(EventSource(response).aiter_sse())
            try:
                first = await anext(deltas, None)
            except SSEError as exc:
                # Such a body (a proxy's page) read as a stream cut before [DONE] with the hand-written parser:
                # the same status and retries as that.
                raise GeneratorUnavailable(f"the generator server answered no event stream: {exc}") from exc
        except BaseException:
            await response.aclose()
            raise
        return response, deltas, first

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None and self._model_dir is not None:
            self._tokenizer = self._load_tokenizer()
        if self._tokenizer is None:
            return max(1, -(-len(text) // CHARS_PER_TOKEN_ESTIMATE)) if text else 0
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def count_tokens_many(self, texts: Sequence[str], separator: str | None = None) -> list[int]:
        """As the in-process engine counts them (kb.prompt_tokens), so both generators pack the same sources; the
        server tokenizes the prompt itself, so the pieces kept here only spare counting a source twice."""
        if not texts:
            return []
        if self._tokenizer is None and self._model_dir is not None:
            self._tokenizer = self._load_tokenizer()
        if self._tokenizer is None:
            return [self.count_tokens(text + (separator or "")) for text in texts]
        if self._prompt_tokens is None:
            self._prompt_tokens = PromptTokenCache(self._tokenizer)
        if separator is not None:
            return self._prompt_tokens.count_between(texts, separator)
        return [len(ids) for ids in self._prompt_tokens.encode_many(list(texts))]

    async def ready(self) -> bool:
        if self._client.is_closed:
            return False
        try:
            response = await self._client.get("models", timeout=httpx.Timeout(
                min(READY_TIMEOUT_S, self._settings.request_timeout_s), connect=self._settings.connect_timeout_s))
        except httpx.HTTPError:
            return False
        return response.status_code == httpx.codes.OK

    async def close(self) -> None:
        await self._client.aclose()
