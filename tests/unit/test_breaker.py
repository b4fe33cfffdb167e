"""The circuit breaker around the generator server (kb/adapters/fallback_generator.py), with a scripted server and
the fake generator as the fallback: when it opens, what the fallback gets (a continuation, never a repeat), when a
probe closes it again, what counts as a failure, and the `degraded` mark through the ask pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from prometheus_client import REGISTRY

from kb.adapters.fallback_generator import CUT_MARK, BreakerGenerator, fallback_settings
from kb.models import Passage
from kb.ports import GeneratorServerError, GeneratorUnavailable
from kb.settings import AnswerSettings, GeneratorSettings, RetrievalSettings, Settings
from service.ask.events import Done
from service.ask.pipeline import AskPipeline, Question
from tests.fakes import FakeGenerator, FakeRetrieval

pytestmark = pytest.mark.unit

QUESTION = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "How large may an upload be?"}]


class ScriptedServer(FakeGenerator):
    """The generator server: each request plays the next step of `script` ("ok", "refused", "cut" after two pieces,
    "stall" before its first piece, "client-error"), then "ok" once the script is done. `gate`, when set, holds
    every request before its first piece until it is released."""

    def __init__(
        self, script: Sequence[str] = (), pieces: Sequence[str] = ("Uploads ", "may be ", "100 MB [1].")
    ) -> None:
        super().__init__(list(pieces))
        self.script = list(script)
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def stream(self, messages: Sequence[dict[str, str]], max_tokens: int | None = None) -> AsyncIterator[str]:
        self.calls += 1
        step = self.script.pop(0) if self.script else "ok"
        if self.gate is not None:
            await self.gate.wait()
        if step == "refused":
            raise GeneratorUnavailable("cannot reach the generator server at 127.0.0.1:1")
        if step == "client-error":
            raise GeneratorServerError("generator server answered 400: prompt too long")
        if step == "stall":
            await asyncio.sleep(60)
        for i, delta in enumerate(self.deltas):
            if step == "cut" and i == 2:
                raise GeneratorUnavailable("the generator server closed the stream before it finished")
            yield delta


def breaker(server: ScriptedServer, fallback: FakeGenerator | None = None, **settings: float) -> BreakerGenerator:
    options = {"breaker_failures": 2, "breaker_reset_s": 0.2, "breaker_timeout_s": 5.0, **settings}
    return BreakerGenerator(server, fallback or FakeGenerator("The fallback's answer."),
                            GeneratorSettings(**options), name=f"test-{id(server)}")  # type: ignore[arg-type]


async def answer(generator: BreakerGenerator, messages: Sequence[dict[str, str]] = QUESTION) -> tuple[str, bool]:
    stream = generator.stream(messages, 50)
    text = "".join([piece async for piece in stream])
    return text, stream.degraded


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_healthy_server_answers_and_the_breaker_stays_closed() -> None:
    server = ScriptedServer()
    generator = breaker(server)
    assert await answer(generator) == ("Uploads may be 100 MB [1].", False)
    assert generator.state == "closed" and await generator.health() == "ok"
    assert metric("kb_generator_breaker_state", generator=f"test-{id(server)}") == 0


async def test_failures_in_a_row_open_it_and_every_question_is_answered_by_the_fallback() -> None:
    server, fallback = ScriptedServer(["refused", "refused", "refused"]), FakeGenerator("The fallback's answer.")
    generator = breaker(server, fallback)
    name = f"test-{id(server)}"
    for _ in range(2):
        assert await answer(generator) == ("The fallback's answer. ", True)
    assert generator.state == "opened" and server.calls == 2
    assert metric("kb_generator_breaker_state", generator=name) == 2
    assert metric("kb_generator_breaker_transitions_total", generator=name, state="opened") == 1
    # Open: the server is not asked at all.
    assert await answer(generator) == ("The fallback's answer. ", True)
    assert server.calls == 2
    assert metric("kb_generator_fallback_answers_total", generator=name, fallback="engine", reason="failed") == 2
    assert metric("kb_generator_fallback_answers_total", generator=name, fallback="engine", reason="open") == 1
    health = await generator.health()
    assert health.startswith("degraded: the breaker to the generator server is open") and "cannot reach" in health
    # The fallback's window and tokenizer size the next prompts.
    assert generator.max_model_len == fallback.max_model_len


async def test_after_the_reset_time_one_probe_closes_it_again_or_opens_it_anew() -> None:
    server = ScriptedServer(["refused", "refused", "refused"])
    generator = breaker(server)
    name = f"test-{id(server)}"
    for _ in range(2):
        await answer(generator)
    await asyncio.sleep(0.25)
    # The probe fails: open again, for another reset time.
    assert (await answer(generator))[1] is True and generator.state == "opened" and server.calls == 3
    assert (await answer(generator))[1] is True and server.calls == 3
    await asyncio.sleep(0.25)
    # The server is back: the probe's answer closes the breaker.
    assert await answer(generator) == ("Uploads may be 100 MB [1].", False)
    assert generator.state == "closed"
    assert metric("kb_generator_breaker_transitions_total", generator=name, state="half-opened") == 2
    assert metric("kb_generator_breaker_transitions_total", generator=name, state="closed") == 1
    assert metric("kb_generator_breaker_state", generator=name) == 0


async def test_while_a_probe_runs_the_other_questions_keep_to_the_fallback() -> None:
    server = ScriptedServer(["refused", "refused"])
    generator = breaker(server)
    for _ in range(2):
        await answer(generator)
    await asyncio.sleep(0.25)
    server.gate = asyncio.Event()
    probe = asyncio.create_task(answer(generator))
    await asyncio.sleep(0.05)
    assert generator.state == "half-opened"
    assert await answer(generator) == ("The fallback's answer. ", True)  # not sent to the server beside the probe
    assert server.calls == 3
    server.gate.set()
    assert await probe == ("Uploads may be 100 MB [1].", False)
    assert generator.state == "closed"


async def test_a_server_failing_mid_answer_is_continued_by_the_fallback_without_repeating_a_word() -> None:
    server, fallback = ScriptedServer(["cut"]), FakeGenerator(["100 MB", " [1]."])
    generator = breaker(server, fallback)
    name = f"test-{id(server)}"
    assert await answer(generator) == ("Uploads may be 100 MB [1].", True)
    # The fallback got the question and, as the start of its own turn, the text the client already has.
    (messages, max_tokens), = fallback.requests
    assert messages[:-1] == QUESTION and messages[-1] == {"role": "assistant", "content": "Uploads may be "}
    assert max_tokens == 50 - fallback.count_tokens("Uploads may be ")
    assert metric("kb_generator_fallback_answers_total", generator=name, fallback="engine",
                  reason="failed_mid_answer") == 1  # fmt: skip
    assert generator.state == "closed"  # one failure of two


async def test_a_stalled_server_counts_as_failed_after_the_breaker_timeout() -> None:
    server = ScriptedServer(["stall", "stall"])
    generator = breaker(server, breaker_timeout_s=0.05)
    for _ in range(2):
        assert await answer(generator) == ("The fallback's answer. ", True)
    assert generator.state == "opened" and "TimeoutError" in await generator.health()


async def test_an_error_of_the_request_is_answered_by_the_fallback_but_is_no_outage() -> None:
    server = ScriptedServer(["client-error"] * 3)
    generator = breaker(server)
    for _ in range(3):
        assert (await answer(generator))[1] is True
    assert generator.state == "closed" and server.calls == 3


async def test_a_consumer_leaving_counts_for_nothing_before_the_first_token_and_as_a_success_after() -> None:
    server = ScriptedServer(["refused"])
    generator = breaker(server)  # two failures in a row open it
    await answer(generator)
    stream = generator.stream(QUESTION, 50)
    assert await anext(stream) == "Uploads "
    await stream.aclose()  # the server was answering: a success, the count starts again
    server.script = ["refused"]
    await answer(generator)
    assert generator.state == "closed"
    server.script, server.gate = ["refused", "refused"], asyncio.Event()
    leaving = asyncio.create_task(answer(generator))
    await asyncio.sleep(0.05)
    leaving.cancel()  # before any token: neither a failure (it would open now) nor a success
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert generator.state == "closed"
    server.gate.set()
    assert (await answer(generator))[1] is True and generator.state == "opened"


async def test_a_prompt_packed_for_the_servers_window_is_cut_to_the_fallbacks() -> None:
    fallback = FakeGenerator("Short.", max_model_len=200)
    generator = breaker(ScriptedServer(["refused"]), fallback)
    sources = " ".join(f"s{i}" for i in range(400))
    messages = [{"role": "system", "content": "Answer."}, {"role": "user", "content": f"{sources} Question: why?"}]
    assert (await answer(generator, messages))[1] is True
    (sent, _), = fallback.requests
    content = sent[1]["content"]
    assert CUT_MARK in content and content.startswith("s0 s1") and content.endswith("Question: why?")
    assert sum(fallback.count_tokens(m["content"]) for m in sent) <= 200 - 50


async def test_the_ask_pipeline_marks_a_fallback_answer_degraded() -> None:
    sources = [Passage(chunk_id="a-0", document_id="a", filename="a.pdf", text="Uploads may be 100 MB.", score=0.9,
                       page=1, ordinal=0)]  # fmt: skip
    server = ScriptedServer(["refused"], pieces=["Uploads may be 100 MB [1]."])
    generator = breaker(server, FakeGenerator(["Uploads may be 100 MB [1]."]))
    pipeline = AskPipeline(FakeRetrieval(sources), generator, RetrievalSettings(),  # type: ignore[arg-type]
                           GeneratorSettings(), answer_settings=AnswerSettings(mode="generate"))  # fmt: skip
    events = [event async for event in pipeline.stream(Question("How large may an upload be?"))]
    assert isinstance(events[-1], Done) and events[-1].degraded is True and "100 MB" in events[-1].answer
    healthy = [event async for event in pipeline.stream(Question("How large may an upload be?"))]
    assert isinstance(healthy[-1], Done) and healthy[-1].degraded is False


def test_the_fallback_engine_keeps_the_servers_sampling_with_its_own_model_and_window() -> None:
    gpu = GeneratorSettings(backend="openai", model="/models/Qwen2.5-7B-Instruct", dtype="float16",
                            max_model_len=131072, yarn=True, stop=[], temperature=0.2, fallback="engine")  # fmt: skip
    engine = fallback_settings(gpu)
    assert (engine.backend, engine.model, engine.dtype, engine.max_model_len, engine.yarn) == ("vllm", "", "bfloat16",
                                                                                              8192, False)  # fmt: skip
    assert engine.temperature == 0.2 and engine.stop == GeneratorSettings().stop and engine.fallback == "off"


def test_the_helm_chart_turns_the_fallback_on_and_waits_for_the_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_deploy_helm import render

    documents = render()
    config = next(d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kb")["data"]
    for name, value in config.items():
        monkeypatch.setenv(name, str(value))
    generator = Settings().generator  # the names are settings that exist, with values they accept
    assert (generator.backend, generator.fallback, generator.breaker_failures) == ("openai", "engine", 3)
    api = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "kb-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz" and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Room for the measured warm start (~40-70 s on two busy cores) several times over.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180


async def test_a_structured_answer_the_server_breaks_off_is_written_again_whole_by_the_fallback() -> None:
    """JSON cannot be continued under its grammar by another model: the server's pieces are held until it finished,
    and one it breaks off is asked of the fallback again, schema and all; the client never sees the broken part."""

    class JsonServer(ScriptedServer):
        async def stream(self, messages: Sequence[dict[str, str]], max_tokens: int | None = None, *,
                         json_schema: dict | None = None) -> AsyncIterator[str]:  # fmt: skip
            self.schemas = [*getattr(self, "schemas", []), json_schema]
            async for piece in super().stream(messages, max_tokens):
                yield piece

    schema = {"type": "object", "properties": {"limit": {"type": "string"}}, "required": ["limit"]}
    whole = JsonServer(pieces=('{"limit"', ': "100 MB', ' [1]"}'))
    fallback = FakeGenerator('{"limit": "100 MB per file [1]"}')
    generator = breaker(whole, fallback)
    pieces = [p async for p in generator.stream(QUESTION, 50, json_schema=schema)]
    assert pieces == ['{"limit": "100 MB [1]"}'] and whole.schemas == [schema]  # held, then whole

    broken = JsonServer(["cut"], pieces=('{"limit"', ': "100 MB', ' [1]"}'))
    generator = breaker(broken, fallback)
    stream = generator.stream(QUESTION, 50, json_schema=schema)
    assert "".join([p async for p in stream]).strip() == '{"limit": "100 MB per file [1]"}' and stream.degraded
    assert fallback.json_schemas[-1] == schema
    assert fallback.requests[-1][0][-1]["role"] != "assistant"  # asked again, not continued
