"""Generator backed by vLLM's in-process AsyncLLM engine (the embedded default)."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from kb.process_guard import die_with_this_process
from kb.prompt_tokens import PromptTokenCache
from kb.settings import GeneratorSettings

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM


def apply_cpu_env_defaults(settings: GeneratorSettings) -> None:
    """vLLM reads these from the environment; explicit env vars set by the operator win."""
    # Without a KV cache size the CPU build refuses to start ("Available memory ... less than desired").
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # Spinning OpenMP threads would steal the cores that ingestion shares with generation.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Diagnostics go to stderr, as kb's own do: stdout carries results (`kb ask --json > answer.json`). vLLM reads
    # this when it is first imported, which is after this call.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")


class VllmEngineGenerator:
    """`engine_args` and `sampling_args` pass further AsyncEngineArgs / SamplingParams fields that GeneratorSettings
    does not cover (e.g. `load_format="dummy"`, `gpu_memory_utilization`, `ignore_eos=True` for benchmarks)."""

    def __init__(
        self,
        settings: GeneratorSettings,
        model_dir: Path | str,
        *,
        engine_args: dict[str, Any] | None = None,
        sampling_args: dict[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._model = str(model_dir)
        self._engine_args = dict(engine_args or {})
        self._sampling_args = dict(sampling_args or {})
        self._engine: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._prompt_tokens: PromptTokenCache | None = None
        # Questions, the system prompt, history turns: counted again on every turn of a conversation.
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._counts_lock = threading.Lock()
        apply_cpu_env_defaults(settings)

    @property
    def engine(self) -> AsyncLLM:
        if self._engine is None:
            raise RuntimeError("VllmEngineGenerator.start() has not been awaited")
        return self._engine

    @property
    def max_model_len(self) -> int:
        return self._settings.max_model_len

    async def start(self) -> None:
        if self._engine is not None:
            return
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=self._model,
            served_model_name=self._settings.served_model_name,
            dtype=self._settings.dtype,
            max_model_len=self._settings.max_model_len,
            enforce_eager=self._settings.enforce_eager,
            hf_overrides=self._settings.engine_hf_overrides(),  # YaRN's long window when settings.yarn
            **self._engine_args,
        )
        # unstructured's tesseract module sets OMP_THREAD_LIMIT=1 for the whole process when imported; the EngineCore
        # spawned here would inherit it and generate nothing (empty answers, then a hang). Start it without.
        omp_limit = os.environ.pop("OMP_THREAD_LIMIT", None)
        before = {child.pid for child in psutil.Process().children(recursive=True)}
        try:
            self._engine = AsyncLLM.from_engine_args(args)
        finally:
            if omp_limit is not None:
                os.environ["OMP_THREAD_LIMIT"] = omp_limit
        # The EngineCore process (GBs) must not outlive this process, even one killed with SIGKILL.
        for child in psutil.Process().children(recursive=True):
            if child.pid not in before:
                die_with_this_process(child.pid)
        self._tokenizer = self._engine.get_tokenizer()
        if self._prompt_tokens is None:  # else built from the same tokenizer files while the engine started
            self._prompt_tokens = PromptTokenCache(self._tokenizer)
        # What is alive now (torch, vLLM, transformers, the tokenizer: millions of objects) stays alive: freeze it,
        # so that the oldest generation's collections, which would otherwise walk all of it in the middle of a
        # request, skip it. vLLM's own server does the same after its start.
        gc.collect()
        gc.freeze()

    def prompt_token_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The chat's prompt as the engine receives it: chat template applied, its special tokens kept as is."""
        if self._prompt_tokens is None:
            raise RuntimeError("VllmEngineGenerator.start() has not been awaited")
        prompt = self._tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        # The chat template already carries the special tokens; letting vLLM tokenize the text could add a second BOS.
        return self._prompt_tokens.encode(prompt)

    async def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None, *,
        json_schema: dict[str, Any] | None = None, session: str | None = None,
    ) -> AsyncIterator[str]:  # fmt: skip
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        engine = self.engine
        # Chat template and tokenizer off the event loop: 64 questions of 4k tokens arriving together would
        # otherwise stall every running stream while they are tokenized (bench.gpu_generation measures it).
        token_ids = await asyncio.to_thread(self.prompt_token_ids, messages)
        params = SamplingParams(
            **{
                "temperature": self._settings.temperature,
                "top_p": self._settings.top_p,
                "max_tokens": max_tokens or self._settings.max_answer_tokens,
                "stop": (list(self._settings.stop) or None) if json_schema is None else None,
                "repetition_penalty": self._settings.repetition_penalty,
                "frequency_penalty": self._settings.frequency_penalty,
                "presence_penalty": self._settings.presence_penalty,
                **self._sampling_args,
                **({"structured_outputs": StructuredOutputsParams(json=json_schema)} if json_schema is not None else {}),
                "output_kind": RequestOutputKind.DELTA,
            }
        )
        (engine_input,) = await engine.renderer.render_cmpl_async([TokensPrompt(prompt_token_ids=token_ids)])
        request_id = f"kb-{uuid.uuid4().hex}"
        finished = False
        outputs = engine.generate(engine_input, params, request_id)
        try:
            async for output in outputs:
                finished = output.finished
                text = output.outputs[0].text if output.outputs else ""
                if text:
                    yield text
        finally:
            # If the consumer stopped early (aclose, cancellation, garbage collection), free the slot now rather
            # than letting the engine generate up to max_tokens for nobody.
            await outputs.aclose()
            if not finished and not engine.errored:
                await engine.abort(request_id)

    def count_tokens_many(self, texts: Sequence[str], separator: str | None = None) -> list[int]:
        """count_tokens for many texts in one batch call (the Rust tokenizer spreads a batch over the cores and
        holds the GIL once, not once per text). With a `separator`: the tokens each text adds to a prompt in which
        it stands between separators, as the packer places sources, remembered so that the prompt's encoding
        tokenizes none of them again."""
        if not texts:
            return []
        pieces = self._piece_cache()
        if separator is not None:
            return pieces.count_between(texts, separator)
        with self._counts_lock:
            known = {t: self._counts[t] for t in texts if t in self._counts}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            counted = dict(zip(missing, (len(ids) for ids in pieces.encode_many(missing))))
            known.update(counted)
            self._remember_counts(counted)
        return [known[t] for t in texts]

    def count_tokens(self, text: str) -> int:
        return self.count_tokens_many([text])[0] if text else 0

    def _remember_counts(self, counts: dict[str, int]) -> None:
        with self._counts_lock:
            self._counts.update(counts)
            while len(self._counts) > 16384:
                self._counts.popitem(last=False)

    def _piece_cache(self) -> PromptTokenCache:
        if self._prompt_tokens is None:
            if self._tokenizer is None:
                # Before start() (e.g. sizing a context while the engine boots): the same files vLLM will load.
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self._model)
            self._prompt_tokens = PromptTokenCache(self._tokenizer)
        return self._prompt_tokens

    async def ready(self) -> bool:
        if self._engine is None or self._engine.errored:
            return False
        try:
            await self._engine.check_health()
        except Exception:
            return False
        return True

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            # The engine's cycles (its in-process core holds the KV cache) must be collectable again.
            gc.unfreeze()
            gc.collect()

