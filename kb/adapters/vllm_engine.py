"""Generator backed by vLLM's in-process AsyncLLM engine (the embedded default)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import regex

from kb.process_guard import die_with_this_process
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


# Text that exercises the places where cutting a prompt could change its tokens: newline runs, indentation, tabs,
# punctuation glued to newlines, digits, accents, CJK, the chat markers, a source number before a digit, a bracket,
# a quote. Checked once per tokenizer.
_PROBE = (
    "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n[1] Hello world.\n\n[12] naïve café costs "
    "12.50 €, see §3.\n  indented line\n\tTabbed:\n\n\n[3] 中文文本。第二句！\n- item one\n- item two\n"
    "def f(x):\n    return x  # comment\n\n[4]  double  space ,punct!?\n\n[5] 2024 revenue\n\n[6] (see) x\n\n"
    "[7] 'quoted' it's\n\n[8] \u00e9t\u00e9\n\n[9] .\n\nUsing the text above, answer: what? "
    "<|im_end|>\n<|im_start|>assistant\n"
)
# What follows a source's closing separator in a prompt is never blank (the next "[n]", or the question's line).
_NEXT = "["
# Where a prompt may be cut: at a newline that meets a non-blank character that is no combining mark, after the
# newline (Qwen's and Llama 3's pre-tokenizer) or before it (GPT-2's); group 1 is a source's number "[n]" that
# starts the piece there, after which it may be cut too.
_CUTS = regex.compile(r"\n(?=[^\s\x1c-\x1f\p{M}])(\[\d+\](?= ))?")
_NUMBER = regex.compile(r"\[\d+\](?= )")


class PromptTokenCache:
    """Token ids of prompt pieces, so that no text is tokenized twice: not a source the packer has just counted,
    nor the 100k+ tokens of sources a follow-up question repeats.

    Tokenizing a prompt's 100k tokens of text costs ~0.2-0.4 s, more than vLLM then needs to prefill a follow-up's
    new end against its prefix cache. The text is cut into pieces at places where the tokenizer starts a new
    pre-token whatever is on either side: where a newline meets a non-blank character (after the run of newlines
    for Qwen's and Llama 3's pre-tokenizer regex, before its last newline for GPT-2's, SmolLM2's), and after a
    source's number "[n]". Which rules hold is checked against the real tokenizer once (`exact` is False when none
    does: that tokenizer is always given the whole text). Byte-level BPE never merges across pre-tokens, so each
    piece tokenized alone gives the tokens the whole text has there: pieces are remembered by their text, wherever
    they stand, and the tokens of a prompt are its pieces' tokens joined."""

    def __init__(self, tokenizer: Any, max_tokens: int = 1 << 20) -> None:
        self._tokenizer = tokenizer
        # About as many tokens as an H100's KV cache holds for Qwen2.5-7B at the full window: prompts older
        # than that are out of vLLM's prefix cache too.
        self._max_tokens = max_tokens
        self._pieces: OrderedDict[str, list[int]] = OrderedDict()
        self._counted: OrderedDict[tuple[str, str], int] = OrderedDict()  # count_between's answers
        self._lock = threading.Lock()
        self._tokens = 0
        self.exact = False
        for before_newline, cut_numbers in ((False, True), (True, True), (False, False), (True, False)):
            self._cut_before_newline, self._cut_numbers = before_newline, cut_numbers
            if self._pieces_match_whole(_PROBE):
                self.exact = True
                break

    def encode(self, text: str) -> list[int]:
        if not self.exact:
            return self._encode_whole(text)
        return list(itertools.chain.from_iterable(self._ids(self._split(text))))

    def count_between(self, texts: Sequence[str], separator: str) -> list[int]:
        """Tokens each text adds to a prompt in which it stands between two `separator`s (the packer's sources),
        its pieces kept for when that prompt is encoded."""
        if not self.exact:
            return [len(ids) for ids in self.encode_many([t + separator for t in texts])] if texts else []
        with self._lock:
            known = [self._counted.get((t, separator)) for t in texts]
            for text, count in zip(texts, known):
                if count is not None:
                    self._counted.move_to_end((text, separator))
        if None not in known:  # a follow-up question's sources: counted on the previous turn
            return known  # type: ignore[return-value]
        framed: list[list[str] | None] = []
        for text in texts:
            pieces = self._split(f"{separator}{text}{separator}{_NEXT}")
            # The first piece must hold only (part of) the opening separator, the last only the closing one's end
            # and what follows it; otherwise the text's edges join its neighbours' tokens (a text starting blank).
            ok = len(pieces) > 2 and len(pieces[0]) <= len(separator) and len(pieces[-1]) <= len(separator) + 1
            framed.append(pieces[1:-1] if ok else None)
        ids = self._ids([p for pieces in framed if pieces for p in pieces])
        counts, at = [], 0
        for text, pieces in zip(texts, framed):
            if pieces is None:
                counts.append(len(self._encode_whole(text + separator)))
            else:
                counts.append(sum(len(i) for i in ids[at : at + len(pieces)]))
                at += len(pieces)
        with self._lock:
            self._counted.update(((t, separator), n) for t, n in zip(texts, counts))
            while len(self._counted) > 16384:
                self._counted.popitem(last=False)
        return counts

    def _ids(self, pieces: list[str]) -> list[list[int]]:
        """Each piece's ids: remembered ones, the rest tokenized in one batch call (outside the lock, so that the
        Rust tokenizer of another thread's call runs meanwhile)."""
        with self._lock:  # the packer on the event loop, prompts in worker threads: the table is shared
            found = [self._pieces.get(p) for p in pieces]
            for piece, ids in zip(pieces, found):
                if ids is not None:
                    self._pieces.move_to_end(piece)
        missing = list(dict.fromkeys(p for p, ids in zip(pieces, found) if ids is None))
        if not missing:
            return found  # type: ignore[return-value]
        encoded = dict(zip(missing, self.encode_many(missing)))
        with self._lock:
            for piece, ids in encoded.items():
                if piece not in self._pieces:
                    self._pieces[piece] = ids
                    self._tokens += len(ids)
            while self._tokens > self._max_tokens and self._pieces:
                self._tokens -= len(self._pieces.popitem(last=False)[1])
        return [ids if ids is not None else encoded[p] for p, ids in zip(pieces, found)]

    def _pieces_match_whole(self, text: str) -> bool:
        try:
            pieces = self._split(text)
            return len(pieces) > 3 and sum(self.encode_many(pieces), []) == self._encode_whole(text)
        except Exception:
            return False

    def _encode_whole(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [self._encode_whole(texts[0])]
        # A list goes to the Rust tokenizer's batch encode, which spreads the pieces over the cores.
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if backend is not None:  # without transformers' per-text bookkeeping (~10 us a piece)
            return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        return [list(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _split(self, text: str) -> list[str]:
        # One pass of a compiled pattern: a 100k-token prompt has thousands of lines.
        shift = 0 if self._cut_before_newline else 1
        starts = [0]
        if self._cut_numbers and (number := _NUMBER.match(text)):
            starts.append(number.end())
        for match in _CUTS.finditer(text):
            starts.append(match.start() + shift)
            if self._cut_numbers and match.group(1):
                starts.append(match.end())
        return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]) if b > a]


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
        self, messages: Sequence[dict[str, str]], max_tokens: int | None = None
    ) -> AsyncIterator[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        engine = self.engine
        # Chat template and tokenizer off the event loop: 64 questions of 4k tokens arriving together would
        # otherwise stall every running stream while they are tokenized (bench.gpu_generation measures it).
        token_ids = await asyncio.to_thread(self.prompt_token_ids, messages)
        params = SamplingParams(
            **{
                "temperature": self._settings.temperature,
                "top_p": self._settings.top_p,
                "max_tokens": max_tokens or self._settings.max_answer_tokens,
                "stop": list(self._settings.stop) or None,
                "repetition_penalty": self._settings.repetition_penalty,
                **self._sampling_args,
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
