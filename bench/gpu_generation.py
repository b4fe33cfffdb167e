"""GPU generation through the service's packer and generator adapter, beside raw vLLM on the same requests.

Qwen2.5-7B-Instruct's architecture with random weights (fp16, 131072-token window with YaRN), vLLM 0.24.0 on one
GPU (../shared/gpu/README.md says how to get vLLM onto the device machine). Figures: time to first token and decode
rate at 4k / 32k / 120k-token contexts, a follow-up question on a cached 100k+ prefix, 64 concurrent questions.

Here, once:  python -m bench.gpu_generation prepare .gp7/qwen7b  (Qwen's config beside a stand-in tokenizer)
On the GPU:  VLLM_USE_FLASHINFER_SAMPLER=0 python -m bench.gpu_generation --model .gp7/qwen7b --json-out FILE

No Qwen tokenizer exists on the device machine: SmolLM2's byte-level BPE tokenizer (same ChatML template, similar
speed per token) stands in, its vocabulary padded to Qwen's 152,064 ids so that every token the random model
produces decodes to text. "Raw vLLM" is the same engine given the same requests: the prompt's token ids (what a
client that tokenizes itself sends) and the prompt text (vLLM tokenizes).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from service.ask.prompt import messages as prompt_messages

QWEN_7B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
    "rope_scaling": {"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    "bos_token_id": 1,
    "eos_token_id": 2,
    # Without it transformers takes a local tokenizer for Mistral's and "fixes" its pre-tokenizer regex.
    "transformers_version": "4.43.1",
}
WINDOW = 131072
DECODE_TOKENS = 256
SIZES = {"4k": (4096, 5), "32k": (32768, 2), "120k": (122880, 1)}  # prompt tokens, repetitions
FOLLOW_UPS = 7
FOLLOW_UP_CONTEXT = 110000
CONCURRENT = 64
CONCURRENT_CONTEXT = 4096


def prepare(out_dir: Path, tokenizer_dir: Path) -> None:
    """Qwen2.5-7B's config.json and a stand-in tokenizer with Qwen's vocabulary size (written here, carried there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(QWEN_7B_CONFIG, indent=1))
    tokenizer = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    taken = set(vocab) | {t["content"] for t in tokenizer["added_tokens"]}
    next_id = max(vocab.values()) + 1
    n = 0
    # Tokens without merges are never produced by encoding, so the text's tokens stay SmolLM2's; decoded they
    # read " qXXXX" (the byte-level alphabet's "Ġ" is a space).
    while next_id < QWEN_7B_CONFIG["vocab_size"]:
        token = f"Ġq{n:x}"
        n += 1
        if token not in taken:
            vocab[token] = next_id
            next_id += 1
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        (out_dir / name).write_text((tokenizer_dir / name).read_text())
    print(f"wrote {out_dir}: config.json, tokenizer with {next_id} ids")


def make_passages(seed: int, tokens: int, words: list[str]) -> list[Any]:
    """Passages of ~200 tokens from several documents, in a relevance order unlike their document order."""
    from kb.models import Passage

    rng = random.Random(seed)
    passages = []
    for i in range(tokens // 150 + 8):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(110, 170)))
        passages.append(Passage(chunk_id=f"s{seed}-c{i}", document_id=f"s{seed}-d{i % 9}", filename=f"doc{i % 9}.pdf",
                                text=f"{text}.", score=1.0 - i / 10000, page=1 + i // 4, ordinal=i))  # fmt: skip
    rng.shuffle(passages)
    return passages


class Bench:
    def __init__(self, generator: Any, words: list[str]) -> None:
        from kb.settings import GeneratorSettings, RetrievalSettings  # noqa: F401 (imported for the services below)

        self.generator = generator
        self.engine = generator.engine
        self.tokenizer = self.engine.get_tokenizer()
        self.words = words
        self.settings = generator._settings
        self.marks: dict[str, float] = {}
        self._time_steps()
        self.gc_pauses: list[tuple[int, float]] = []  # (generation, ms) of this process's collections
        gc_started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                self.gc_pauses.append((info["generation"], 1000 * (time.perf_counter() - gc_started[0])))

        gc.callbacks.append(on_gc)

    def _time_steps(self) -> None:
        """Where a service request's time goes: prompt tokenization, and the engine's first output (a token id)
        before the adapter turns it into the first text delta."""
        tokenize, generate, marks = self.generator.prompt_token_ids, self.engine.generate, self.marks

        def timed_tokenize(messages: Any) -> list[int]:
            started = time.perf_counter()
            ids = tokenize(messages)
            marks["tokenize_s"], marks["tokenized_at"] = time.perf_counter() - started, time.perf_counter()
            return ids

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            async def outputs() -> Any:
                first = True
                async for output in generate(*args, **kwargs):
                    if first:
                        marks["first_output_at"], first = time.perf_counter(), False
                    yield output

            return outputs()

        self.generator.prompt_token_ids = timed_tokenize  # type: ignore[method-assign]
        self.engine.generate = timed_generate  # type: ignore[method-assign]

    def service(self, context_tokens: int) -> Any:
        from kb.settings import RetrievalSettings
        from service.ask.packing import Packer

        # Retrieval is not measured here (no index on the GPU machine): the packer is given the passages.
        return Packer(self.generator, RetrievalSettings(context_tokens=context_tokens), self.settings)

    def plain_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    async def via_service(
        self, service: Any, passages: list[Any], question: str, max_tokens: int,
        history: list[dict[str, str]] = (), keep_first: list[Any] = (),  # type: ignore[assignment]
    ) -> dict[str, Any]:  # fmt: skip
        gc_before = len(self.gc_pauses)
        started = time.perf_counter()
        sources = service.pack(passages, service.budget(question, history), keep_first)
        packed = time.perf_counter()
        messages = prompt_messages(question, sources, history)
        first = None
        deltas: list[str] = []
        async for delta in self.generator.stream(messages, max_tokens):
            if first is None:
                first = time.perf_counter()
            deltas.append(delta)
        ended = time.perf_counter()
        assert first is not None
        gc_ms = sum(ms for _, ms in self.gc_pauses[gc_before:])
        steps = {"gc_ms": gc_ms, "pack_ms": 1000 * (packed - started), "tokenize_ms": 1000 * self.marks.get("tokenize_s", 0),
                 "tokenized_to_first_output_ms": 1000 * (self.marks["first_output_at"] - self.marks["tokenized_at"]),
                 "first_output_to_first_text_ms": 1000 * (first - self.marks["first_output_at"])}  # fmt: skip
        return {"ttft_s": first - started, "steps_ms": {k: round(v, 1) for k, v in steps.items()},
                "decode_tok_s": (max_tokens - 1) / (ended - first), "sources": sources,
                "messages": messages, "answer": "".join(deltas), "total_s": ended - started}  # fmt: skip

    def check(self, out: dict[str, Any]) -> list[int]:
        """The adapter's prompt tokens (reused pieces included) are those of tokenizing the whole prompt."""
        ids = self.plain_ids(out["messages"])
        assert self.generator.prompt_token_ids(out["messages"]) == ids, "the adapter's prompt tokens differ"
        out["prompt_tokens"] = len(ids)
        return ids

    async def raw(self, prompt: list[int] | str, max_tokens: int) -> dict[str, Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=max_tokens, temperature=self.settings.temperature, ignore_eos=True,
                                output_kind=RequestOutputKind.DELTA)  # fmt: skip
        started = time.perf_counter()
        request = TokensPrompt(prompt_token_ids=prompt) if isinstance(prompt, list) else {"prompt": prompt}
        (engine_input,) = await self.engine.renderer.render_cmpl_async([request])
        rendered = time.perf_counter()
        first = None
        produced = 0
        async for output in self.engine.generate(engine_input, params, f"raw-{uuid.uuid4().hex}"):
            n = len(output.outputs[0].token_ids) if output.outputs else 0
            if n and first is None:
                first = time.perf_counter()
            produced += n
        ended = time.perf_counter()
        assert first is not None and produced == max_tokens, produced
        return {"ttft_s": first - started, "render_ms": round(1000 * (rendered - started), 1),
                "decode_tok_s": (max_tokens - 1) / (ended - first), "total_s": ended - started}

    async def cold(self) -> None:
        await self.engine.reset_prefix_cache()


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def overhead(service: float, raw: float, higher_is_better: bool = False) -> float:
    """How much the service path adds (per cent): to a time, or to the time per token of a rate."""
    return 100 * ((raw / service - 1) if higher_is_better else (service / raw - 1))


async def run(model_dir: Path, words: list[str], smoke: bool = False, only_follow_up: bool = False) -> dict[str, Any]:
    from kb.adapters.vllm_engine import VllmEngineGenerator
    from kb.settings import GeneratorSettings

    global SIZES, FOLLOW_UP_CONTEXT, FOLLOW_UPS, CONCURRENT, CONCURRENT_CONTEXT, DECODE_TOKENS
    if smoke:
        # The code paths on this CPU with the default SmolLM2 model (its real weights), at toy sizes.
        SIZES, FOLLOW_UP_CONTEXT, CONCURRENT, CONCURRENT_CONTEXT, DECODE_TOKENS = {"2k": (2048, 2)}, 3000, 4, 1024, 16
        FOLLOW_UPS = 2
        settings = GeneratorSettings(model=str(model_dir), max_model_len=8192, max_answer_tokens=16, stop=[])
        engine_args: dict[str, Any] = {}
    else:
        settings = GeneratorSettings(model=str(model_dir), dtype="float16", max_model_len=WINDOW, enforce_eager=False,
                                     max_answer_tokens=DECODE_TOKENS, stop=[], hf_overrides={})  # fmt: skip
        engine_args = {"load_format": "dummy", "gpu_memory_utilization": 0.9, "enable_prefix_caching": True}
    # ignore_eos: random weights end an answer at random; every request produces exactly max_tokens.
    generator = VllmEngineGenerator(settings, model_dir, engine_args=engine_args, sampling_args={"ignore_eos": True})
    started = time.perf_counter()
    await generator.start()
    engine_start = time.perf_counter() - started
    print(f"engine start {engine_start:.1f}s", flush=True)
    bench = Bench(generator, words)
    result: dict[str, Any] = {"engine_start_s": round(engine_start, 1)}
    try:
        # Warm-up (first requests pay for lazy initialisation on both paths).
        warm = make_passages(1, 2000, words)
        for _ in range(2):
            out = await bench.via_service(bench.service(1500), warm, "Warm up?", 16)
            await bench.raw(bench.check(out), 16)

        contexts = {}
        for label, (tokens, repetitions) in ({} if only_follow_up else SIZES).items():
            passages = make_passages(100 + tokens, tokens, words)
            service = bench.service(tokens - 160)
            runs: dict[str, list[dict[str, Any]]] = {"service": [], "raw_ids": [], "raw_text": []}
            for rep in range(repetitions):
                question = f"What does section {rep} say about the upload limit?"
                await bench.cold()
                out = await bench.via_service(service, passages, question, DECODE_TOKENS)
                runs["service"].append(out)
                ids = bench.check(out)
                text = bench.tokenizer.apply_chat_template(out["messages"], tokenize=False, add_generation_prompt=True)
                await bench.cold()
                runs["raw_ids"].append(await bench.raw(ids, DECODE_TOKENS))
                await bench.cold()
                runs["raw_text"].append(await bench.raw(text, DECODE_TOKENS))
            row = {"prompt_tokens": runs["service"][0]["prompt_tokens"], "repetitions": repetitions}
            row["service_steps_ms_median"] = {
                step: round(statistics.median(r["steps_ms"][step] for r in runs["service"]), 1)
                for step in runs["service"][0]["steps_ms"]
            }
            row["service_ttft_ms_each"] = [round(1000 * r["ttft_s"], 1) for r in runs["service"]]
            row["raw_ids_ttft_ms_each"] = [round(1000 * r["ttft_s"], 1) for r in runs["raw_ids"]]
            for path, path_runs in runs.items():
                row[f"{path}_ttft_ms"] = round(1000 * median(path_runs, "ttft_s"), 1)
                row[f"{path}_decode_tok_s"] = round(median(path_runs, "decode_tok_s"), 1)
            for base in ("raw_ids", "raw_text"):
                row[f"ttft_overhead_vs_{base}_pct"] = round(overhead(row["service_ttft_ms"], row[f"{base}_ttft_ms"]), 1)
                row[f"decode_overhead_vs_{base}_pct"] = round(
                    overhead(row["service_decode_tok_s"], row[f"{base}_decode_tok_s"], higher_is_better=True), 1
                )
            contexts[label] = row
            print(f"{label}: {json.dumps(row)}", flush=True)
        result["contexts"] = contexts

        # A conversation over a 110k-token context: the first question is cold, follow-ups reuse its prefix.
        passages = make_passages(7, FOLLOW_UP_CONTEXT, words)
        service = bench.service(FOLLOW_UP_CONTEXT)
        await bench.cold()
        first = await bench.via_service(service, passages, "What is the upload limit for scanned PDFs?", 32)
        bench.check(first)
        history = [{"role": "user", "content": "What is the upload limit for scanned PDFs?"},
                   {"role": "assistant", "content": first["answer"]}]  # fmt: skip
        follow_service, follow_raw = [], []
        gc_mark = len(bench.gc_pauses)
        for i in range(FOLLOW_UPS):
            out = await bench.via_service(service, passages, f"And for Word files, case {i}?", 32, history,
                                          first["sources"])  # fmt: skip
            follow_service.append(out)
            bench.check(out)
            raw_messages = prompt_messages(f"And for spreadsheets, case {i}?", out["sources"], history)
            follow_raw.append(await bench.raw(bench.plain_ids(raw_messages), 32))
        result["follow_up"] = {
            "prompt_tokens": follow_service[0]["prompt_tokens"],
            "first_question_ttft_ms": round(1000 * first["ttft_s"], 1),
            "service_ttft_ms": [round(1000 * r["ttft_s"], 1) for r in follow_service],
            "raw_ids_ttft_ms": [round(1000 * r["ttft_s"], 1) for r in follow_raw],
            "raw_ids_render_ms": [r["render_ms"] for r in follow_raw],
            "service_steps_ms": [r["steps_ms"] for r in follow_service],
            "gc_pauses_ms": [[g, round(ms, 1)] for g, ms in bench.gc_pauses[gc_mark:]],
            "service_ttft_ms_median": round(1000 * median(follow_service, "ttft_s"), 1),
            "raw_ids_ttft_ms_median": round(1000 * median(follow_raw, "ttft_s"), 1),
        }
        print(f"follow-up: {json.dumps(result['follow_up'])}", flush=True)
        if only_follow_up:
            return result

        # 64 questions at once, each over its own 4k-token context.
        questions = [(make_passages(1000 + i, CONCURRENT_CONTEXT, words), f"Question {i} about retention?")
                     for i in range(CONCURRENT)]  # fmt: skip
        service = bench.service(CONCURRENT_CONTEXT - 160)
        await bench.cold()
        started = time.perf_counter()
        outs = await asyncio.gather(*(bench.via_service(service, p, q, DECODE_TOKENS) for p, q in questions))
        service_wall = time.perf_counter() - started
        prompts = [bench.check(o) for o in outs]
        await bench.cold()
        started = time.perf_counter()
        await asyncio.gather(*(bench.raw(ids, DECODE_TOKENS) for ids in prompts))
        raw_wall = time.perf_counter() - started
        output_tokens = CONCURRENT * DECODE_TOKENS
        result["concurrent"] = {
            "questions": CONCURRENT, "prompt_tokens_each": outs[0]["prompt_tokens"], "output_tokens_each": DECODE_TOKENS,
            "service_wall_s": round(service_wall, 2), "raw_ids_wall_s": round(raw_wall, 2),
            "service_output_tok_s": round(output_tokens / service_wall), "raw_ids_output_tok_s": round(output_tokens / raw_wall),
            "service_ttft_ms_median": round(1000 * median(outs, "ttft_s")),
            "overhead_pct": round(overhead(service_wall, raw_wall), 1),
        }  # fmt: skip
        print(f"concurrent: {json.dumps(result['concurrent'])}", flush=True)
    finally:
        pauses = [ms for _, ms in bench.gc_pauses]
        oldest = [ms for g, ms in bench.gc_pauses if g == 2]
        result["gc_after_start"] = {"collections": len(pauses), "total_ms": round(sum(pauses), 1),
                                    "max_ms": round(max(pauses, default=0), 1), "oldest_generation": len(oldest),
                                    "oldest_generation_max_ms": round(max(oldest, default=0), 1)}  # fmt: skip
        await generator.close()
    return result


def device() -> dict[str, Any]:
    import torch
    import vllm

    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1), "vllm": vllm.__version__,
            "torch": torch.__version__, "python": sys.version.split()[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="run", choices=["run", "prepare"])
    parser.add_argument("out", nargs="?", type=Path, default=Path(".gp7/qwen7b"))
    parser.add_argument("--model", type=Path, default=Path(".gp7/qwen7b"))
    parser.add_argument("--tokenizer", type=Path, default=Path.home() / ".cache/kb/models/SmolLM2-135M-Instruct-bf16")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on this CPU with --model SmolLM2's directory")
    parser.add_argument("--only-follow-up", action="store_true", help="just the follow-up measurement")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.tokenizer)
        return
    words = [w for w in (Path(__file__).resolve().parents[1] / "README.md").read_text().split() if w.isalpha()]
    result = {"device": {} if args.smoke else device(), "model": "Qwen2.5-7B-Instruct architecture, dummy weights, fp16, window 131072 (YaRN x4)",
              "stand_in_tokenizer": "SmolLM2-135M-Instruct, padded to 152064 ids", **asyncio.run(run(args.model, words, args.smoke, args.only_follow_up))}  # fmt: skip
    line = json.dumps(result)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=1) + "\n")
    print(line)


if __name__ == "__main__":
    main()
