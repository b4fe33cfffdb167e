"""Load and soak: a fresh `kb serve` (the embedded default: in-process vLLM with SmolLM2, Qdrant Edge, SQLite) on
loopback with the samples ingested, under Locust users (bench/locustfile.py) run headless.

    python -m bench.load [--users 50] [--duration 60] [--soak 600]

Prints requests/s, p50/p95/p99 per request type, failures and 5xx, and the server's memory (its RSS with its
children's: the vLLM EngineCore and the parser) sampled every 10 s: first, last, max and the slope after warm-up.
Each load user has its own API key (the default per-key rate limit of 600 requests a minute stays on and is never
reached by one user's pace), so the figures measure the service, not the limiter.
"""

from __future__ import annotations

import argparse
import csv
import json
import operator
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psutil
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

from bench.machine import describe

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SAMPLE_EVERY_S = 10.0
WARM_UP_S = 60.0


def start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.support import start_kb_serve

    env = {**os.environ, "KB_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "KB_LOGGING__LEVEL": "INFO"}  # fmt: skip
    env.pop("OMP_THREAD_LIMIT", None)
    return start_kb_serve(env, log_path, timeout=600)


def prepare(url: str, data_dir: Path, users: int) -> list[str]:
    """Ingest the samples and create one key per user; returns the keys."""
    admin = {"Authorization": f"Bearer {(data_dir / 'admin.key').read_text().strip()}"}
    with httpx.Client(base_url=url, headers=admin, timeout=120) as client:
        files = [("files", (p.name, p.read_bytes())) for p in sorted(SAMPLES.iterdir())]
        response = client.post("/v1/documents", files=files)
        response.raise_for_status()
        ids = [d["document_id"] for d in response.json()["documents"]]

        def ingested() -> bool:
            return all(client.get(f"/v1/documents/{i}").json()["status"] == "ready" for i in ids)

        def too_slow(_: RetryCallState) -> NoReturn:
            raise AssertionError("samples not ingested in 10 minutes")

        Retrying(
            retry=retry_if_result(operator.not_), stop=stop_after_delay(600), wait=wait_fixed(1),
            retry_error_callback=too_slow,
        )(ingested)
        keys = []
        for n in range(users):
            created = client.post("/v1/keys", json={"name": f"load-{n}", "scopes": ["search", "ask", "ingest"]})
            created.raise_for_status()
            keys.append(created.json()["key"])
    return keys


def tree_rss_mib(pid: int) -> dict[str, float]:
    """RSS in MiB of the server ("server") and of each child by its name (the vLLM EngineCore, the parser)."""
    sizes: dict[str, float] = {}
    try:
        process = psutil.Process(pid)
        sizes["server"] = process.memory_info().rss / 1024 / 1024
        for child in process.children(recursive=True):
            try:
                name = child.name()  # e.g. VLLM::EngineCore, python (the parser, the resource tracker)
                sizes[name] = sizes.get(name, 0.0) + child.memory_info().rss / 1024 / 1024
            except psutil.Error:  # the process ended meanwhile: nothing to measure or kill
                pass
    except psutil.Error:  # the process ended meanwhile: nothing to measure or kill
        pass
    return sizes


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MiB of the whole tree)
        self.by_process: list[tuple[float, dict[str, float]]] = []
        self._done = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while True:
            sizes = tree_rss_mib(self.pid)
            self.samples.append((time.monotonic() - started, sum(sizes.values())))
            self.by_process.append((time.monotonic() - started, sizes))
            if self._done.wait(SAMPLE_EVERY_S):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of the samples after the warm-up, in MiB a minute."""
    points = [(t, m) for t, m in samples if t >= WARM_UP_S]
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (m - mean_m) for t, m in points) / var * 60 if var else None


def memory_summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    after = [m for t, m in samples if t >= WARM_UP_S] or [m for _, m in samples]
    slope = slope_mib_per_min(samples)
    return {
        "samples": len(samples),
        "first_mib": round(samples[0][1]),
        "after_warm_up_first_mib": round(after[0]),
        "last_mib": round(samples[-1][1]),
        "max_mib": round(max(m for _, m in samples)),
        "slope_after_warm_up_mib_per_min": round(slope, 2) if slope is not None else None,
        "spread_after_warm_up_mib": round(max(after) - min(after)),
    }


def run_locust(url: str, keys: list[str], users: int, duration_s: int, out: Path) -> dict[str, Any]:
    status_file = out / "statuses.json"
    env = {**os.environ, "KB_LOAD_KEYS": ",".join(keys), "KB_LOAD_STATUS_FILE": str(status_file)}
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
        "-u", str(users), "-r", "10", "-t", f"{duration_s}s", "--host", url, "--csv", str(out / "locust"),
        "--only-summary", "--stop-timeout", "0", "--loglevel", "WARNING",
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=duration_s + 300)
    (out / "locust.log").write_text(completed.stdout + completed.stderr)
    rows = list(csv.DictReader((out / "locust_stats.csv").open()))
    statuses: dict[str, int] = json.loads(status_file.read_text()) if status_file.exists() else {}
    failures_csv = out / "locust_failures.csv"
    failures = list(csv.DictReader(failures_csv.open())) if failures_csv.exists() else []
    table = []
    for row in rows:
        table.append({
            "name": row["Name"], "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "rps": round(float(row["Requests/s"]), 2), "p50_ms": _num(row["50%"]), "p95_ms": _num(row["95%"]),
            "p99_ms": _num(row["99%"]), "max_ms": _num(row["Max Response Time"]),
        })  # fmt: skip
    five_xx = sum(count for key, count in statuses.items() if key.rsplit(" ", 1)[1].startswith("5"))
    return {"requests": table, "statuses": statuses, "http_5xx": five_xx,
            "failures": [{k: f[k] for k in ("Name", "Error", "Occurrences")} for f in failures],
            "locust_exit_code": completed.returncode}  # fmt: skip


def server_log(path: Path) -> tuple[list[str], dict[str, int]]:
    """The server's error lines (and tracebacks), and its access lines counted by path and status."""
    errors: list[str] = []
    access: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "request":
                path_ = re.sub(r"^/v1/documents/[^/]+", "/v1/documents/{id}", str(record.get("path")))
                access[f"{record.get('method')} {path_} {record.get('status')}"] += 1
            if record.get("level") in ("error", "critical"):
                errors.append(line[:500])
        elif "Traceback" in line:
            errors.append(line)
    return errors, dict(sorted(access.items()))


def _num(value: str) -> float | None:
    try:
        return round(float(value))
    except ValueError:
        return None


def print_report(result: dict[str, Any]) -> None:
    print(f"\n{result['bench']}: {result['users']} users for {result['duration_s']} s on {result['machine']}")
    print(f"{'request':<40} {'count':>6} {'fail':>5} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for row in result["load"]["requests"]:
        print(f"{row['name']:<40} {row['requests']:>6} {row['failures']:>5} {row['rps']:>7} {row['p50_ms']!s:>8} "
              f"{row['p95_ms']!s:>8} {row['p99_ms']!s:>8}")  # fmt: skip
    print(f"HTTP 5xx: {result['load']['http_5xx']}; statuses: {result['load']['statuses']}")
    print(f"server access lines: {result['server_access_statuses']}; error lines: {len(result['server_error_lines'])}")
    for failure in result["load"]["failures"]:
        print(f"failure: {failure}")
    print(f"memory (server + children, MiB): {result['memory']}")
    for name, summary in result["memory_by_process"].items():
        print(f"  {name}: {summary}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load (ignored with --soak)")
    parser.add_argument("--soak", type=int, default=0, help="seconds of soak (e.g. 600), sampling memory every 10 s")
    parser.add_argument("--out", type=Path, default=None, help="folder for Locust's CSVs and the result JSON")
    args = parser.parse_args()
    duration = args.soak or args.duration

    with tempfile.TemporaryDirectory(prefix="kb-load-") as tmp:
        data_dir = Path(tmp) / "data"
        out = args.out or Path(tmp) / "out"
        out.mkdir(parents=True, exist_ok=True)
        process, url = start_server(data_dir, out / "server.log")
        try:
            started = time.monotonic()
            keys = prepare(url, data_dir, args.users)
            prepared_s = time.monotonic() - started
            sampler = MemorySampler(process.pid)
            sampler.start()
            load = run_locust(url, keys, args.users, duration, out)
            sampler.stop()
            alive = process.poll() is None and httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        finally:
            from tests.support import stop_process_group

            stop_process_group(process)
        server_errors, access = server_log(out / "server.log")
        result = {
            "bench": "soak" if args.soak else "load", "users": args.users, "duration_s": duration,
            "machine": describe(), "prepare_s": round(prepared_s, 1), "load": load,
            "memory": memory_summary(sampler.samples),
            "memory_samples": [(round(t), round(m)) for t, m in sampler.samples],
            "memory_by_process": {name: memory_summary([(t, sizes.get(name, 0.0)) for t, sizes in sampler.by_process])
                                  for name in sampler.by_process[-1][1]},  # fmt: skip
            "ready_after": alive, "server_access_statuses": access, "server_error_lines": server_errors[:20],
        }  # fmt: skip
        (out / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        print_report(result)
        print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
