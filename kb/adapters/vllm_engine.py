"""Generator backed by vLLM's in-process AsyncLLM engine (the embedded default)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import unicodedata
import uuid
from collections import OrderedDict
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


# Text that exercises the places where cutting a prompt could change its tokens: newline runs, indentation, tabs,
# punctuation glued to newlines, digits, accents, CJK, the chat markers. Checked once per tokenizer.
_PROBE = (
    "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n[1] Hello world.\n\n[12] naïve café costs "
    "12.50 €, see §3.\n  indented line\n\tTabbed:\n\n\n[3] 中文文本。第二句！\n- item one\n- item two\n"
    "def f(x):\n    return x  # comment\n\n[4]  double  space ,punct!?\n\nUsing the text above, answer: what? "
    "<|im_end|>\n<|im_start|>assistant\n"
)

_COUNT_PROBES = ("[12] Hello world.", "[3] naïve café", "[7] 中文文本", "(1) über alles", "[4] It's", "[9] a\nb", "x y")


class PromptTokenCache:
    """Token ids of recent prompts, reused for the stable start of the next prompt.

    A follow-up question repeats the system prompt and the sources (100k+ tokens at the full window) and only its
    end is new; tokenizing the whole text again costs ~0.2-0.4 s, more than vLLM then needs to prefill the new
    end against its prefix cache. The text is cut into pieces where a newline meets a non-blank character, at a
    place where the tokenizer starts a new pre-token whatever follows: after the run of newlines for Qwen's and
    Llama 3's pre-tokenizer regex, before its last newline for GPT-2's (SmolLM2). Which of the two holds is
    checked against the real tokenizer once (`exact` is False when neither does: that tokenizer is always given
    the whole text), so the pieces' tokens joined are the tokens of the whole text.

    Each piece is keyed by a hash of everything up to its end, as vLLM keys its KV blocks, so a piece is reused
    only behind the very same text. The last piece is never stored: it ends at the end of the text, where the
    tokenizer may split differently than when more text follows."""

    def __init__(self, tokenizer: Any, piece_chars: int = 2048, max_tokens: int = 1 << 20) -> None:
        self._tokenizer = tokenizer
        self._piece_chars = piece_chars
        # About as many tokens as an H100's KV cache holds for Qwen2.5-7B at the full window: prompts older
        # than that are out of vLLM's prefix cache too.
        self._max_tokens = max_tokens
        self._pieces: OrderedDict[bytes, list[int]] = OrderedDict()
        self._lock = threading.Lock()
        self._tokens = 0
        self._cut_before_newline = False
        self.exact = self._pieces_match_whole(_PROBE)
        if not self.exact:
            self._cut_before_newline = True
            self.exact = self._pieces_match_whole(_PROBE)

    def encode(self, text: str) -> list[int]:
        if not self.exact:
            return self._encode_whole(text)
        with self._lock:  # called from worker threads: the piece table is shared
            return self._encode_pieces(text)

    def _encode_pieces(self, text: str) -> list[int]:
        pieces = self._split(text, self._piece_chars, self._cut_before_newline)
        keys = self._keys(pieces)
        ids: list[int] = []
        reused = 0
        for key in keys[:-1]:
            cached = self._pieces.get(key)
            if cached is None:
                break
            self._pieces.move_to_end(key)
            ids.extend(cached)
            reused += 1
        encoded = self._encode_many(pieces[reused:])
        for key, piece_ids in zip(keys[reused:-1], encoded[:-1]):
            self._pieces[key] = piece_ids
            self._tokens += len(piece_ids)
        for piece_ids in encoded:
            ids.extend(piece_ids)
        while self._tokens > self._max_tokens and self._pieces:
            self._tokens -= len(self._pieces.popitem(last=False)[1])
        return ids

    def _pieces_match_whole(self, text: str) -> bool:
        try:
            pieces = self._split(text, 1, self._cut_before_newline)
            return len(pieces) > 3 and sum(self._encode_many(pieces), []) == self._encode_whole(text)
        except Exception:
            return False

    def _encode_whole(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [self._encode_whole(texts[0])]
        # A list goes to the Rust tokenizer's batch encode, which spreads the pieces over the cores.
        return [list(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]

    @staticmethod
    def _split(text: str, piece_chars: int, before_newline: bool) -> list[str]:
        starts = [0]
        search_from = piece_chars
        while (newline := text.find("\n", search_from)) >= 0:
            after = newline + 1
            if after < len(text) and not text[after].isspace() and not unicodedata.combining(text[after]):
                starts.append(newline if before_newline else after)
                search_from = after + piece_chars
            else:
                search_from = after
        return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]

    @staticmethod
    def _keys(pieces: list[str]) -> list[bytes]:
        keys: list[bytes] = []
        key = b""
        for piece in pieces:
            key = hashlib.blake2b(key + piece.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            keys.append(key)
        return keys


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
        # The packer counts the same sources again on every turn of a conversation.
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._counts_lock = threading.Lock()
        self._prefix_counts: dict[str, int] = {}
        self._count_cut_exact: bool | None = None
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
        try:
            self._engine = AsyncLLM.from_engine_args(args)
        finally:
            if omp_limit is not None:
                os.environ["OMP_THREAD_LIMIT"] = omp_limit
        self._tokenizer = self._engine.get_tokenizer()
        self._prompt_tokens = PromptTokenCache(self._tokenizer)

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

    def count_tokens_many(self, texts: Sequence[str]) -> list[int]:
        """count_tokens for many texts, the unknown ones tokenized in one batch (the Rust tokenizer spreads a batch
        over the cores and holds the GIL once, not once per text): what the packer asks before weighing candidates."""
        if not texts:
            return []
        self.count_tokens(texts[0])  # loads the tokenizer and checks the cut
        cuts = [self._count_cut(t) if self._count_cut_exact else 0 for t in texts]
        bodies = list(dict.fromkeys(t[c:] for t, c in zip(texts, cuts)))
        with self._counts_lock:
            known = {b: self._counts[b] for b in bodies if b in self._counts}
        missing = [b for b in bodies if b not in known]
        if missing:
            counts = [len(ids) for ids in self._tokenizer(missing, add_special_tokens=False)["input_ids"]]
            known.update(zip(missing, counts))
            with self._counts_lock:
                self._counts.update(zip(missing, counts))
                while len(self._counts) > 16384:
                    self._counts.popitem(last=False)
        return [known[t[c:]] + self._prefix_count(t[:c]) for t, c in zip(texts, cuts)]

    def _prefix_count(self, prefix: str) -> int:
        """Tokens of a source's "[n]" (a handful of distinct strings, remembered)."""
        if not prefix:
            return 0
        count = self._prefix_counts.get(prefix)
        if count is None:
            count = self._prefix_counts[prefix] = self._count_whole(prefix)
        return count

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            # Before start() (e.g. sizing a context while the engine boots): the same files vLLM will load.
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._model)
        if self._count_cut_exact is None:
            self._count_cut_exact = all(
                self._count_whole(t[: self._count_cut(t)]) + self._count_whole(t[self._count_cut(t) :])
                == self._count_whole(t)
                for t in _COUNT_PROBES
            )
        # The packer numbers a source by its place in the prompt ("[3] text"), which changes between the turns of
        # a conversation: remember the text after the number, where a new pre-token starts.
        cut = self._count_cut(text) if self._count_cut_exact else 0
        body = text[cut:]
        with self._counts_lock:  # packers run in worker threads
            count = self._counts.get(body)
            if count is not None:
                self._counts.move_to_end(body)
        if count is None:
            count = self._count_whole(body)  # outside the lock: the Rust tokenizer runs threads in parallel
            with self._counts_lock:
                self._counts[body] = count
                if len(self._counts) > 16384:
                    self._counts.popitem(last=False)
        return count + self._prefix_count(text[:cut])

    def _count_whole(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False)) if text else 0

    @staticmethod
    def _count_cut(text: str) -> int:
        """The first space within the first few characters that precedes a letter and follows a non-blank: byte-level
        BPE pre-tokenizers start a pre-token there (checked against the tokenizer with _COUNT_PROBES)."""
        for i in range(1, min(len(text) - 1, 16)):
            if text[i] == " " and text[i + 1].isalpha() and not text[i - 1].isspace():
                return i
        return 0

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
