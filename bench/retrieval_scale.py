"""Search latency as the index grows: `python -m bench.retrieval --scale 100000` (this module does the work).

Synthetic chunks in a Qdrant Edge shard: random unit vectors (384-d, MiniLM's size) and texts sampled from the eval
corpora, each chunk in one or two of 50 groups, with a random sentence vector per sentence of its text (Chinese
texts too, as a multilingual embedder would give them: the worst case). The shard is loaded in steps (10k, then up
to N), optimised after each bulk load (Edge has no background optimizer) and searched with real questions as BM25
text and random query vectors, with and without an ACL filter. Latency is the index search alone (the query
embedding is not part of it).
"""

from __future__ import annotations

import gzip
import json
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import describe

DIMENSION = 384
GROUPS = [f"group-{i:02d}" for i in range(50)]
ACL = ["group-03", "group-17", "group-42"]  # a caller in 3 of 50 groups sees ~8% of the chunks
QUERIES = 300
SECTION = "## Retrieval latency at scale"


def _texts(eval_dir: Path) -> list[str]:
    texts: list[str] = []
    for name in ("xquad/xquad.en.json", "xquad/xquad.zh.json", "cmrc2018/cmrc2018_dev.json"):
        path = eval_dir / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))["data"]
            texts += [p["context"] for article in data for p in article["paragraphs"]]
    corpus = eval_dir / "scifact" / "beir" / "corpus.jsonl.gz"
    if corpus.is_file():
        with gzip.open(corpus, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    if not texts:
        raise SystemExit(f"no eval corpora under {eval_dir}")
    return texts


def _questions(eval_dir: Path) -> list[str]:
    questions: list[str] = []
    for name in ("xquad/xquad.en.json", "xquad/xquad.zh.json"):
        data = json.loads((eval_dir / name).read_text(encoding="utf-8"))["data"]
        questions += [qa["question"] for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return questions


def _chunks(texts: list[str], start: int, stop: int, rng: random.Random) -> Iterator[Any]:
    from kb.models import Chunk

    for n in range(start, stop):
        groups = rng.sample(GROUPS, 2 if rng.random() < 0.3 else 1)
        text = rng.choice(texts)
        yield Chunk(chunk_id=str(uuid.UUID(int=n + 1)), document_id=f"doc-{n // 20}", ordinal=n % 20,
                    text=text, filename=f"doc-{n // 20}.txt", groups=groups)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _rss_mib() -> float:
    """This process's resident memory now (Linux), where the Edge shard lives."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2)}


def run(
    eval_dir: Path, scale: int, steps: list[int] | None = None, seed: int = 7, *, sentence_vectors: bool = True
) -> dict[str, Any]:
    """`sentence_vectors` False: chunks without them and hybrid search without the best-sentence list (as before
    they existed), for comparison."""
    import os

    from ingest.chunk import sentences
    from kb.adapters.edge_index import EdgeVectorIndex
    from kb.index.fusion import HybridFusion
    from kb.models import SearchFilter

    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    texts, questions = _texts(eval_dir), _questions(eval_dir)
    queries = [(questions[i * len(questions) // QUERIES]) for i in range(QUERIES)]
    query_vectors = _unit_vectors(np_rng, QUERIES)
    steps = sorted({s for s in (steps or [10_000, scale]) if s <= scale})
    acl = SearchFilter(groups=ACL)
    results: list[dict[str, Any]] = []
    loaded = sentences_total = 0
    with tempfile.TemporaryDirectory(prefix="kb-scale-") as directory:
        fusion = HybridFusion() if sentence_vectors else HybridFusion(sparse_weight=2, sentence_weight=0)
        index = EdgeVectorIndex(Path(directory) / "index", DIMENSION, fusion=fusion)
        try:
            for step in steps:
                started = time.perf_counter()
                batch = 1000
                while loaded < step:
                    chunks = list(_chunks(texts, loaded, min(step, loaded + batch), rng))
                    vectors = _unit_vectors(np_rng, len(chunks))
                    # As ingestion gives them: one vector per sentence of the chunk (none for a single sentence).
                    per_chunk = [len(sentences(c.text)) if sentence_vectors else 0 for c in chunks]
                    flat = _unit_vectors(np_rng, sum(per_chunk))
                    offsets = np.cumsum([0, *per_chunk])
                    per_sentence = [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(chunks))]
                    sentences_total += sum(per_chunk)
                    index.upsert(chunks, vectors.tolist(), per_sentence)
                    loaded += len(chunks)
                load_s = time.perf_counter() - started
                started = time.perf_counter()
                index.optimize()
                optimize_s = time.perf_counter() - started
                row: dict[str, Any] = {
                    "chunks": loaded, "load_s": round(load_s, 1), "optimize_s": round(optimize_s, 1),
                    "acl_share": round(index.count(acl) / loaded, 3), "load_avg": round(os.getloadavg()[0], 2),
                    "sentence_vectors": sentences_total, "rss_mib": _rss_mib(),
                }
                for mode in ("hybrid", "dense", "sparse"):
                    for label, search_filter in (("acl", acl), ("all", None)):
                        for q, v in zip(queries[:10], query_vectors[:10], strict=True):  # warm-up
                            index.search(v.tolist(), q, 10, search_filter, mode)  # type: ignore[arg-type]
                        latencies = []
                        for q, v in zip(queries, query_vectors, strict=True):
                            t = time.perf_counter()
                            index.search(v.tolist(), q, 10, search_filter, mode)  # type: ignore[arg-type]
                            latencies.append((time.perf_counter() - t) * 1000)
                        for key, value in _percentiles(latencies).items():
                            row[f"{mode}_{label}_{key}_ms"] = value
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            index.close()
    return {"bench": "retrieval-scale", "machine": describe(), "queries": QUERIES, "acl_groups": ACL,
            "sentence_vectors": sentence_vectors, "fusion": vars(fusion), "steps": results}  # fmt: skip


def section(summary: dict[str, Any], argv: list[str], day: str) -> str:
    machine = summary["machine"]
    rows = summary["steps"]
    head = ("chunks | sentence vectors | load s | optimize s | RSS MiB | ACL share | hybrid+ACL p50/p95 ms | "
            "hybrid p50/p95 ms | dense+ACL p50/p95 ms | sparse+ACL p50/p95 ms | load avg")
    lines = ["| " + head + " |", "|" + "---|" * len(head.split("|"))]
    for r in rows:
        lines.append(
            f"| {r['chunks']} | {r.get('sentence_vectors', 0)} | {r['load_s']} | {r['optimize_s']} | {r.get('rss_mib', '')} | "
            f"{r['acl_share']} | "
            f"{r['hybrid_acl_p50_ms']} / {r['hybrid_acl_p95_ms']} | {r['hybrid_all_p50_ms']} / {r['hybrid_all_p95_ms']} | "
            f"{r['dense_acl_p50_ms']} / {r['dense_acl_p95_ms']} | {r['sparse_acl_p50_ms']} / {r['sparse_acl_p95_ms']} | "
            f"{r['load_avg']} |"
        )
    growth = ""
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        growth = (f"\nGrowth {first['chunks']} -> {last['chunks']} chunks: hybrid+ACL p95 x"
                  f"{last['hybrid_acl_p95_ms'] / max(first['hybrid_acl_p95_ms'], 1e-9):.2f}, "
                  f"unfiltered hybrid p95 x{last['hybrid_all_p95_ms'] / max(first['hybrid_all_p95_ms'], 1e-9):.2f}.\n")
    return f"""{SECTION}

`python -m bench.retrieval {' '.join(argv)}` on {day}: {machine['cpu']}, {machine['cores']} cores,
{machine['memory_gib']} GiB, Python {machine['python']}. Qdrant Edge shard, synthetic chunks: random 384-d unit
vectors, texts sampled from the eval corpora (xquad en/zh, cmrc2018, SciFact), each chunk in 1-2 of 50 groups and with
a random vector per sentence ({rows[-1].get('sentence_vectors', 0) if rows else 0} sentence vectors at the last step);
EdgeVectorIndex.optimize() after each bulk load; {summary['queries']} searches per cell (real xquad questions as
BM25 text, random query vectors), top 10, search only (no query embedding). ACL = groups {', '.join(summary['acl_groups'])}.

{chr(10).join(lines)}
{growth}"""
