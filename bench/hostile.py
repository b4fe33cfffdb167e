"""Hostile uploads (and, with --corpus, every corpus file) through the HTTP API, one at a time: outcome, seconds from
upload to `ready`/`failed`, and the peak RSS of the server process and of the parser child (with the converters it
starts) while that file was being handled. Prints a Markdown table for bench/RESULTS.md ("Reliability").

    python -m bench.hostile [--corpus] [--json PATH]

The same files as tests/integration/test_hostile_input.py (bench/hostile_files.py); the server runs in this process
(uvicorn on loopback, no generator), so "server" is this process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx

from bench.hostile_files import (
    CORPUS,
    MIB,
    HealthProbe,
    MemorySampler,
    corpus_files,
    hostile_files,
    served,
    upload,
    wait_settled,
)
from bench.machine import describe

MAX_UPLOAD_BYTES = 60 * MIB


def _row(label: str, size: int, outcome: str, seconds: float, memory: MemorySampler) -> dict:
    server, child = memory.reset()
    return {"file": label, "bytes": size, "outcome": outcome, "seconds": round(seconds, 2),
            "server_peak_mib": round(server / MIB), "parser_peak_mib": round(child / MIB)}  # fmt: skip


def run(with_corpus: bool) -> tuple[list[dict], dict]:
    from kb.settings import Settings
    from service.app import create_app

    items = [(f.title, f.name, f.data) for f in hostile_files(MAX_UPLOAD_BYTES)]
    if with_corpus:
        items += [(p.relative_to(CORPUS).as_posix(), p.name, p.read_bytes()) for p in corpus_files()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kb-bench-hostile-") as tmp:
        settings = Settings(
            data_dir=Path(tmp), ingest={"max_upload_bytes": MAX_UPLOAD_BYTES}, generator={"enabled": False}
        )
        with served(create_app(settings, with_generator=False)) as url:
            key = settings.admin_key_path.read_text().strip()
            headers = {"Authorization": f"Bearer {key}"}
            client = httpx.Client(base_url=url, headers=headers, timeout=300)
            with client, MemorySampler(interval=0.05) as memory, HealthProbe(url, headers) as probe:
                memory.reset()
                for label, name, data in items:
                    start = time.perf_counter()
                    response = upload(client, name, data)
                    if response.status_code != 202:
                        outcome = f"{response.status_code}: {response.json().get('detail', '')}"
                    else:
                        document_id = response.json()["documents"][0]["document_id"]
                        document = wait_settled(client, [document_id], timeout=3600)[document_id]
                        outcome = document["status"] + (f": {document['error']}" if document["error"] else
                                                        f" ({document['chunks']} chunks)")  # fmt: skip
                    memory.sample()
                    rows.append(_row(label, len(data), outcome, time.perf_counter() - start, memory))
                    print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
            health = {"requests": len(probe.statuses), "non_200": len(probe.failures),
                      "slowest_s": round(probe.slowest_s, 2)}  # fmt: skip
    return rows, health


def table(rows: list[dict]) -> str:
    lines = ["| file | size | outcome | seconds | peak RSS server / parser (MiB) |", "|---|---|---|---|---|"]
    for r in rows:
        outcome = r["outcome"].replace("|", "\\|")
        outcome = outcome if len(outcome) <= 110 else outcome[:107] + "..."
        size = f"{r['bytes'] / MIB:.1f} MB" if r["bytes"] >= MIB else f"{r['bytes'] / 1024:.0f} kB"
        name = r["file"].replace("|", "\\|")
        memory = f"{r['server_peak_mib']} / {r['parser_peak_mib']}"
        lines.append(f"| {name} | {size} | {outcome} | {r['seconds']} | {memory} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="store_true", help="also upload every file of ../shared/corpus/docs")
    parser.add_argument("--json", type=Path, help="write the rows and the machine description here")
    args = parser.parse_args()
    rows, health = run(args.corpus)
    print(f"\n{describe()}\n")
    print(table(rows))
    print(f"\nhealth probes during the run: {health}")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe(), "rows": rows, "health": health}, indent=1))


if __name__ == "__main__":
    main()
