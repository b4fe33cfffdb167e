"""Chunk-size distribution over the shared ingestion corpus, with the chunker as on git HEAD ("before") and as in
the working tree ("after"): how many chunks are fragments too small to stand alone, how many are flagged
boilerplate, how many sections there are.

    python -m bench.chunks [--corpus DIR] [--work DIR] [--label NAME] [--limit N]

Parsing the corpus takes minutes (a 619-page PDF, an 872-page Word file), so each file's blocks are pickled in
--work once, with the parser as it is today (partition_file with pdf_tables=False where the parser has the option),
so that both chunkers see the same blocks and re-runs only chunk. Sizes are counted with the embedder's own
tokenizer, as ingestion does (ingest.pipeline), with the same body budget. Results: a table on stdout and JSON in
bench/results/chunks_<label>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path("/work/shared/corpus/docs")
HEADING_RESERVE_TOKENS = 48  # ingest.pipeline._HEADING_RESERVE_TOKENS


def parsed_blocks(corpus: Path, work: Path, limit: int | None, skip: tuple[str, ...] = ()) -> dict[str, list]:
    """Blocks of every corpus file that parses, by its path relative to the corpus; cached per file. `skip`: files
    left out (by relative path) unless already cached."""
    from ingest.formats import ParseError
    from ingest.partition import partition_file

    kwargs = {"pdf_tables": False} if "pdf_tables" in inspect.signature(partition_file).parameters else {}
    work.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in corpus.rglob("*") if p.is_file())[:limit]
    out: dict[str, list] = {}
    for path in files:
        name = str(path.relative_to(corpus))
        cache = work / (hashlib.sha256(name.encode()).hexdigest()[:16] + ".pickle")
        if cache.exists():
            blocks = pickle.loads(cache.read_bytes())
        elif name in skip:
            print(f"  skip {name}: --skip", file=sys.stderr)
            continue
        else:
            started = time.monotonic()
            try:
                blocks = partition_file(path, path.name, **kwargs)
            except ParseError as exc:
                blocks = None
                print(f"  skip {name}: {exc}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - a parser crash is a skipped file here, as the brief says
                blocks = None
                print(f"  skip {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            cache.write_bytes(pickle.dumps(blocks))
            print(f"  parsed {name} in {time.monotonic() - started:.1f}s", file=sys.stderr)
        if blocks:
            out[name] = blocks
    return out


def head_chunk_module() -> ModuleType:
    """ingest/chunk.py as committed on HEAD, imported under another name."""
    source = subprocess.run(
        ["git", "show", "HEAD:ingest/chunk.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="kb-chunk-head-")) / "chunk_head.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("chunk_head", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["chunk_head"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def measure(chunker, docs: dict[str, list]) -> dict:
    sizes: list[int] = []
    per_file: dict[str, int] = {}
    sections: set[tuple[str, str]] = set()
    boilerplate = 0
    started = time.monotonic()
    for name, blocks in docs.items():
        chunks = chunker.chunk(blocks, document_id=name, filename=name, groups=[])
        per_file[name] = len(chunks)
        for chunk in chunks:
            sizes.append(chunker.count(chunk.text))
            if chunk.section:
                sections.add((name, chunk.section))
            boilerplate += bool(getattr(chunk, "boilerplate", False))
    n = len(sizes)
    return {
        "documents": len(docs),
        "chunks": n,
        "p5": percentile(sizes, 0.05),
        "p10": percentile(sizes, 0.10),
        "p50": percentile(sizes, 0.50),
        "p90": percentile(sizes, 0.90),
        "under_16": sum(s < 16 for s in sizes) / n if n else 0.0,
        "under_32": sum(s < 32 for s in sizes) / n if n else 0.0,
        "boilerplate_chunks": boilerplate,
        "sections": len(sections),
        "chunk_seconds": round(time.monotonic() - started, 2),
        "per_file": per_file,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "kb-bench-chunks")
    parser.add_argument("--label", default="corpus")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files (a quick look)")
    parser.add_argument("--skip", nargs="*", default=[], help="files (relative paths) not to parse if not cached")
    args = parser.parse_args()

    from ingest.chunk import Chunker
    from kb.container import build_embedder
    from kb.settings import Settings

    settings = Settings()
    embedder = build_embedder(settings)  # only its tokenizer is used, as in tests/integration/test_corpus.py
    max_body = min(settings.ingest.chunk_tokens, embedder.max_tokens - HEADING_RESERVE_TOKENS)
    overlap = settings.ingest.chunk_overlap_tokens

    docs = parsed_blocks(args.corpus, args.work, args.limit, tuple(args.skip))
    before = head_chunk_module().Chunker(embedder, max_body, overlap)
    after = Chunker(embedder, max_body, overlap)
    results = {
        "max_tokens": max_body,
        "overlap": overlap,
        "before": measure(before, docs),
        "after": measure(after, docs),
    }

    keys = ["documents", "chunks", "p5", "p10", "p50", "p90", "under_16", "under_32", "boilerplate_chunks", "sections"]
    print(f"chunk tokens (max {max_body}, overlap {overlap}), {len(docs)} parsed files of {args.corpus}")
    print(f"| {'':8} | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for side in ("before", "after"):
        row = results[side]
        cells = [f"{row[k]:.1%}" if k.startswith("under") else f"{row[k]:g}" for k in keys]
        print(f"| {side:8} | " + " | ".join(cells) + " |")
    changed = {
        name: (count, results["after"]["per_file"][name])
        for name, count in results["before"]["per_file"].items()
        if count != results["after"]["per_file"][name]
    }
    print(f"files whose chunk count changed: {len(changed)}")
    for name, (a, b) in sorted(changed.items(), key=lambda item: item[1][1] - item[1][0])[:15]:
        print(f"  {name}: {a} -> {b}")
    out = ROOT / "bench" / "results" / f"chunks_{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
