"""Generator backed by vLLM's in-process AsyncLLM engine (the embedded default)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class VllmEngineGenerator:
    def __init__(self, settings: GeneratorSettings, model_dir: Path | str) -> None:
        self._settings = settings
        self._model = str(model_dir)
        self._engine: AsyncLLM | None = None
        self._tokenizer: Any = None
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
            hf_overrides=self._settings.hf_overrides or {},
        )
        # unstructured's tesseract module sets OMP_THREAD_LIMIT=1 for the whole process when imported; the EngineCore
        # spawned here would inherit it and generate nothing (empty answers, then a hang). Start it without.
        omp_limit = os.environ.pop("OMP_THREAD_LIMIT", None)
        try:
            self._engine = AsyncLLM.from_engine_args(args)
        finally:
            if omp_limit is not None:
                os.environ["OMP_THREAD_LIMIT"] = omp_limit
        self._tokenizer = self._engine.get_tokenizer()

    async def stream(
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None
    ) -> AsyncIterator[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        engine = self.engine
        prompt = self._tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        # The chat template already carries the special tokens; letting vLLM tokenize the text could add a second BOS.
        token_ids = self._tokenizer.encode(prompt, add_special_tokens=False)
        params = SamplingParams(
            temperature=self._settings.temperature,
            max_tokens=max_tokens or self._settings.max_answer_tokens,
            stop=list(self._settings.stop) or None,
            repetition_penalty=self._settings.repetition_penalty,
            output_kind=RequestOutputKind.DELTA,
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

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            # Before start() (e.g. sizing a context while the engine boots): the same files vLLM will load.
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._model)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

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
