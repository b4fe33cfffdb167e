"""Ingestion throughput against its raw cost, in one run.

    python -m bench.ingest [--max-bytes N] [--all]

1. raw parse: `ingest.partition.partition_file` (unstructured) on every file, one after another;
2. raw embed: `SentenceTransformer.encode` of the very chunk texts the pipeline will embed, and of their sentences
   (the sentence vectors of hybrid search's best-sentence list, IngestSettings.sentence_vectors);
3. the pipeline: submit everything to a fresh data directory and drain the queue (parser process one document
   ahead, embedding in this process, Qdrant Edge, SQLite).
The overhead is pipeline wall time / (raw parse + raw embed): below 1.0 when parsing and embedding overlap.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from bench.machine import describe

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "docs"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FORMATS = {".pdf", ".docx", ".pptx", ".xlsx", ".html", ".htm", ".md", ".txt", ".csv", ".tsv", ".eml"}


def pick_files(max_bytes: int, everything: bool) -> list[Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file()) + sorted(SAMPLES.iterdir())
    if everything:
        return files
    return [p for p in files if p.suffix.lower() in FORMATS and 0 < p.stat().st_size <= max_bytes]


def peak_rss_mib() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(own, 1), "largest_child": round(children, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-bytes", type=int, default=300_000, help="skip files larger than this")
    parser.add_argument("--all", action="store_true", help="every file of the corpus, whatever its size or format")
    args = parser.parse_args()

    from ingest.partition import ParseError, partition_file
    from ingest.pipeline import sentences_to_embed
    from kb.container import Container
    from kb.settings import Settings
    from service.state import Services

    files = pick_files(args.max_bytes, args.all)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data")
        settings.generator.enabled = False
        container = Container.open(settings)
        try:
            import asyncio

            services = asyncio.run(Services.open(container, with_generator=False))
            chunker = services.pipeline.chunker

            # 1. raw parse (and the chunk texts, for a like-for-like raw embed)
            parsed: list[Path] = []
            texts: list[str] = []
            pages = 0
            started = time.perf_counter()
            for path in files:
                try:
                    blocks = partition_file(path, path.name)
                except ParseError:
                    continue
                parsed.append(path)
                pages += max((b.page or 0 for b in blocks), default=0) or 1
                texts.extend(c.embed_text or c.text for c in chunker.chunk(blocks, document_id="x", filename=path.name, groups=[]))
            raw_parse_s = time.perf_counter() - started

            # 2. raw embed: the chunks, then their sentences as the pipeline picks them (ingest.pipeline.embed_chunks)
            model = container.embedder._model  # type: ignore[attr-defined]  # the very model the pipeline uses
            languages = settings.embedder.languages if settings.ingest.sentence_vectors else None
            sentence_texts = [s for t in texts for s in sentences_to_embed(t, languages)]
            timings = []
            for batch in (texts, sentence_texts):
                started = time.perf_counter()
                model.encode(batch, batch_size=settings.embedder.batch_size, normalize_embeddings=True,
                             show_progress_bar=False)  # fmt: skip
                timings.append(time.perf_counter() - started)
            raw_embed_chunks_s, raw_embed_sentences_s = timings
            raw_embed_s = raw_embed_chunks_s + raw_embed_sentences_s

            # 3. the pipeline, on the files the raw parse could read (parser process started, as in a server)
            services.worker.warm_up(wait=True)
            started = time.perf_counter()
            for path in parsed:
                services.pipeline.submit(path.name, path.read_bytes())
            services.worker.drain()
            pipeline_s = time.perf_counter() - started
            documents = container.registry.list_documents()
            services.worker.stop()
        finally:
            asyncio.run(container.aclose())

    chunks = sum(d.chunks or 0 for d in documents)
    ready = sum(d.status.value == "ready" for d in documents)
    raw_total = raw_parse_s + raw_embed_s
    result = {
        "bench": "ingest",
        "machine": describe(),
        "files": len(files),
        "documents": len(documents),
        "ready": ready,
        "pages": pages,
        "chunks": chunks,
        "raw_chunks": len(texts),
        "raw_sentences": len(sentence_texts),
        "raw_parse_s": round(raw_parse_s, 2),
        "raw_embed_s": round(raw_embed_s, 2),
        "raw_embed_chunks_s": round(raw_embed_chunks_s, 2),
        "raw_embed_sentences_s": round(raw_embed_sentences_s, 2),
        "pipeline_s": round(pipeline_s, 2),
        "overhead_ratio": round(pipeline_s / raw_total, 3) if raw_total else None,
        "pages_per_s": round(pages / pipeline_s, 2),
        "chunks_per_s": round(chunks / pipeline_s, 2),
        "peak_rss_mib": peak_rss_mib(),
    }
    for key, value in result.items():
        if key != "machine":
            print(f"{key:>16}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
