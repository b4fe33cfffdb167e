"""Retrieval quality on every QA set in ../shared/eval: dense, sparse (BM25) and hybrid (DBSF or RRF in Qdrant),
units embedded once.

python -m bench.retrieval [--limit N] [--sets NAME ...] [--max-documents N] [--whole-units]
python -m bench.retrieval --scale 100000 [--no-sentence-vectors]   (search latency on synthetic chunks with an ACL
                                                                   filter instead)

Prints a table, replaces the "## Retrieval quality" section of bench/RESULTS.md and prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = ROOT.parent / "shared" / "eval"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Retrieval quality"
MODES = ("dense", "sparse", "hybrid")
COLUMNS = ("set", "mode", "units", "questions", "recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10",
           "latency_ms_p50", "latency_ms_p95")  # fmt: skip


def discover(eval_dir: Path) -> list[Path]:
    """Each BEIR directory (<set>/beir) and each json QA file one level below `eval_dir`."""
    sets: list[Path] = []
    for folder in sorted(p for p in eval_dir.iterdir() if p.is_dir()):
        if (folder / "beir").is_dir():
            sets.append(folder / "beir")
        sets.extend(sorted(folder.glob("*.json")))
    return sets


def _row(report: dict[str, Any]) -> list[str]:
    return [str(report["name"] if key == "set" else report[key]) for key in COLUMNS]


def markdown(reports: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(r)) + " |" for r in reports]
    return "\n".join(lines)


def text_table(reports: list[dict[str, Any]]) -> str:
    rows = [list(COLUMNS), *map(_row, reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def section(reports: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    per_set = {r["name"]: r for r in reports}.values()
    notes = "\n".join(
        f"- {r['name']} ({r['format']}): {r['units']} units"
        + (" (documents chunked like ingestion, gold = chunk(s) holding the answer start)" if r["units_chunked"] else "")
        + f", {r['units_truncated']} longer than the embedder's window"
        + (f" (indexed as their chunks: {r['entries']} entries; a unit scores as its best chunk)" if r.get("units_split")
           else " (kept whole: the dense side sees their first 256 tokens)" if r["units_truncated"] else "")
        + f"; {r['questions']} of {r['questions_total']} questions"
        + (f" ({r['questions_skipped']} without gold dropped)" if r["questions_skipped"] else "")
        + f"; units embedded in {r['embed_units_s']} s" + (" (cached)" if r["embeddings_cached"] else "")
        + (f", {r['sentences']} sentence vectors in {r['embed_sentences_s']} s" if r.get("sentences") else "")
        for r in per_set
    )
    limited = summary["max_documents"]
    weights = summary.get("fusion_weights") or {}
    terms = summary.get("bm25_terms") or {}
    return f"""{SECTION}

`python -m bench.retrieval {' '.join(summary['argv'])}` on {summary['date']}: {machine['cpu']}, {machine['cores']} cores,
{machine['memory_gib']} GiB, Python {machine['python']}; 1-minute load average {summary['load_start']} at the start and
{summary['load_end']} at the end (latencies rise with the load of other work on the same cores).
Embedder `{summary['embedder']}` (languages {summary.get('languages')}), Qdrant Edge scratch shard (no HNSW build:
exact scan), top {summary['top_k']}; hybrid = {str(summary.get('fusion', 'rrf')).upper()} fusion inside Qdrant of
three lists: {summary.get('candidates', 50)} dense candidates (chunk vectors), {summary.get('candidates', 50)} BM25
candidates, and the candidates of both re-scored by their best sentence (MaxSim over the chunk's vector and its
sentences' vectors), weighted dense {weights.get('dense', 1)} : sentences {weights.get('sentences', 0)} :
BM25 {weights.get('sparse', 1)} (each list prefetched as often as its weight); BM25 alone for a query in a language
the embedder lacks (Chinese with the English-only default). BM25: Qdrant's word tokenizer, English snowball
stemmer, English + Chinese stopwords, Chinese cut into words by jieba first; in the same sparse vector, adjacent
word pairs (query weight {terms.get('pair_weight', 0)}) and adjacent Han characters (query weight
{terms.get('han_bigram_weight', 0)}). Total run {summary['elapsed_s']} s.

{markdown(reports)}

- recall@k: share of questions with at least one gold unit in the top k; MRR@10: mean 1/rank of the first gold
  unit (0 beyond 10); nDCG@10: binary relevance over all gold units. Latency: query embedding + search, per query,
  percentiles with linear interpolation.
- Questions: up to {summary['limit']} per set, spread evenly over the set (every n-th), not the first N.
{"- COVID-QA: only the first " + str(limited) + " of 98 papers (and their questions) are indexed, to keep the run short; the full set needs ~4 min more of embedding." if limited else "- COVID-QA: all 98 papers."}
{notes}
"""


def write_results(text: str, path: Path = RESULTS, section_title: str = SECTION) -> None:
    current = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    start = current.find(section_title + "\n")
    if start < 0:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        end = current.find("\n## ", start + len(section_title))
        updated = current[:start] + text + ("" if end < 0 else "\n" + current[end + 1 :])
    path.write_text(updated.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=300, help="questions per set (spread evenly; default 300)")
    parser.add_argument("--sets", nargs="*", default=None, help="only sets whose name contains one of these")
    parser.add_argument("--max-documents", type=int, default=None,
                        help="index only the first N documents of sets of whole documents (COVID-QA)")
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--cache-dir", type=Path, default=None, help="unit embedding cache")
    parser.add_argument("--no-write", action="store_true", help=f"leave {RESULTS.name} as it is")
    parser.add_argument("--scale", type=int, default=None,
                        help="instead: search latency on N synthetic chunks (10k and N) with an ACL filter")
    parser.add_argument("--no-sentence-vectors", action="store_true",
                        help="with --scale: chunks without sentence vectors, fused without the best-sentence list")
    parser.add_argument("--whole-units", action="store_true",
                        help="index units longer than the embedder's window whole (dense sees their start only)")
    args = parser.parse_args()
    if args.scale:
        from bench import retrieval_scale

        scale_summary = retrieval_scale.run(args.eval_dir, args.scale, sentence_vectors=not args.no_sentence_vectors)
        scale_summary["argv"] = sys.argv[1:]
        if not args.no_write:
            write_results(retrieval_scale.section(scale_summary, sys.argv[1:], date.today().isoformat()),
                          section_title=retrieval_scale.SECTION)
        print(json.dumps(scale_summary, ensure_ascii=False))
        return

    from evaluation.datasets import dataset_name
    from evaluation.metrics import TOP_K
    from evaluation.run import RetrievalEvaluation
    from kb.settings import Settings

    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    settings = Settings()
    evaluation = RetrievalEvaluation.open(settings, args.cache_dir, split_long_units=not args.whole_units)
    paths = [p for p in discover(args.eval_dir) if not args.sets or any(s in dataset_name(p) for s in args.sets)]
    reports: list[dict[str, Any]] = []
    for path in paths:
        name = dataset_name(path)
        set_started = time.perf_counter()

        def progress(done: int, total: int, what: str = "embedding units", name: str = name) -> None:
            print(f"[{name}] {what} {done}/{total}", file=sys.stderr, flush=True)

        prepared = evaluation.prepare(path, args.max_documents, progress)
        set_reports = evaluation.evaluate(prepared, MODES, args.limit)
        for report in set_reports:
            report["set_s"] = round(time.perf_counter() - set_started, 1)
        reports.extend(set_reports)
        print(text_table(set_reports), flush=True)
        print(f"[{name}] {time.perf_counter() - set_started:.1f} s", file=sys.stderr, flush=True)

    summary: dict[str, Any] = {
        "bench": "retrieval",
        "date": date.today().isoformat(),
        "argv": sys.argv[1:],
        "machine": describe(),
        "embedder": reports[0]["embedder"] if reports else None,
        "fusion": settings.index.fusion,
        "candidates": settings.index.candidates,
        "fusion_weights": {"dense": settings.index.dense_weight, "sentences": settings.index.sentence_weight,
                           "sparse": settings.index.sparse_weight},
        "bm25_terms": {"pair_weight": settings.index.bm25_pair_weight,
                       "han_bigram_weight": settings.index.bm25_han_bigram_weight},
        "languages": settings.embedder.languages,
        "top_k": TOP_K,
        "limit": args.limit,
        "max_documents": args.max_documents,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
    }
    print()
    print(text_table(reports))
    if not args.no_write:
        write_results(section(reports, summary))
    print(json.dumps({**summary, "results": reports}, ensure_ascii=False))


if __name__ == "__main__":
    main()
