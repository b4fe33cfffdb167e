"""Ingestion throughput of the worker tier: N `kb worker` processes on one PostgreSQL registry, in one run.

    python -m bench.scale_out [--workers 1 2 3] [--max-bytes N]

For each N: a fresh registry (a PostgreSQL schema of its own), `kb migrate`, N worker processes (warm: each has
touched its heartbeat file), then the same files queued at once through the registry (as the API queues uploads) and
timed until the last job is finished. Pages, chunks and documents per second, the load average, and each process's
peak memory. The workers write their own qdrant-client local-mode indexes (no Qdrant server installs here; see
tests/integration/test_scale_out.py): the index writes of a server are not measured.

The files: the corpus formats bench.ingest uses (up to --max-bytes), so the numbers compare with its single
in-process worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.ingest import pick_files
from bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]


def environment(tmp: Path, registry_url: str, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(
        KB_DATA_DIR=str(tmp / name), KB_REGISTRY_URL=registry_url, KB_BLOBS__DIR=str(tmp / "originals"),
        KB_INDEX__BACKEND="qdrant", KB_INDEX__URL=f"path:{tmp / name / 'qdrant'}", KB_GENERATOR__ENABLED="false",
        KB_INGEST__HEARTBEAT_PATH=str(tmp / f"{name}.alive"), KB_LOGGING__FORMAT="json",
    )  # fmt: skip
    return env


def queue(registry_url: str, tmp: Path, files: list[Path]) -> list[str]:
    """Every file stored and queued, as `POST /v1/documents` does (the pipeline's submit), in this process."""
    from ingest.pipeline import IngestionPipeline
    from kb.container import Container
    from kb.settings import Settings

    settings = Settings(**_settings_of(environment(tmp, registry_url, "submit")))
    container = Container.open(settings)
    try:
        pipeline = IngestionPipeline(container.registry, container.blobs, container.embedder, container.index,
                                     settings.ingest)  # fmt: skip
        ids = []
        for path in files:
            submitted = pipeline.submit(path.name, path.read_bytes())
            if not submitted.duplicate:
                ids.append(submitted.document.document_id)
        return ids
    finally:
        asyncio.run(container.aclose())


def _settings_of(env: dict[str, str]) -> dict[str, Any]:
    return {"data_dir": env["KB_DATA_DIR"], "registry_url": env["KB_REGISTRY_URL"],
            "blobs": {"dir": env["KB_BLOBS__DIR"]}, "index": {"backend": "qdrant", "url": env["KB_INDEX__URL"]}}


def run(workers: int, files: list[Path]) -> dict[str, Any]:
    from kb.adapters.sql_registry import SqlRegistry
    from tests.support import postgres_schema  # a registry of its own on the tests' PostgreSQL (KB_TEST_POSTGRES_URL)

    with tempfile.TemporaryDirectory() as tmp_name, postgres_schema() as registry_url:
        tmp = Path(tmp_name)
        env = environment(tmp, registry_url, "migrate")
        subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=env, check=True, capture_output=True,
                       cwd=ROOT)  # fmt: skip
        processes = []
        for i in range(workers):
            log = (tmp / f"worker-{i}.log").open("wb")
            processes.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], cwd=ROOT,
                                              env=environment(tmp, registry_url, f"worker-{i}"), stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        peaks = [0.0] * workers
        try:
            deadline = time.monotonic() + 600
            while not all((tmp / f"worker-{i}.alive").exists() for i in range(workers)):
                assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "workers not up"
                time.sleep(0.5)
            registry = SqlRegistry(registry_url)
            ids = queue(registry_url, tmp, files)
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            while registry.pending_jobs():
                for i, process in enumerate(processes):
                    try:
                        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
                        peaks[i] = max(peaks[i], sum(p.memory_info().rss for p in tree) / 2**20)
                    except psutil.NoSuchProcess:  # a parser restarting between the listing and the reading
                        pass
                time.sleep(0.2)
            seconds = time.perf_counter() - started
            load = os.getloadavg()[0]
            documents = [registry.get_document(i) for i in ids]
            registry.close()
        finally:
            for process in processes:
                os.killpg(process.pid, signal.SIGTERM)
            for process in processes:
                process.wait(timeout=120)
    ready = [d for d in documents if d.status.value == "ready"]
    pages = sum(d.pages or 1 for d in ready)
    chunks = sum(d.chunks or 0 for d in ready)
    return {
        "workers": workers, "documents": len(documents), "ready": len(ready), "pages": pages, "chunks": chunks,
        "seconds": round(seconds, 1), "documents_per_s": round(len(documents) / seconds, 2),
        "pages_per_s": round(pages / seconds, 2), "chunks_per_s": round(chunks / seconds, 1),
        "pages_per_hour": round(3600 * pages / seconds), "load_avg_1m_before_after": [load_before, load],
        "peak_rss_mib_per_worker": [round(p) for p in peaks],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-bytes", type=int, default=300_000)
    args = parser.parse_args()
    files = pick_files(args.max_bytes, False)
    print(json.dumps({"machine": describe(), "files": len(files)}))
    results = []
    for workers in args.workers:
        results.append(run(workers, files))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["seconds"]
    for result in results:
        result["speedup"] = round(base / result["seconds"], 2)
    out = ROOT / "bench" / "results" / "scale_out.json"
    out.write_text(json.dumps({"machine": describe(), "files": len(files), "runs": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
