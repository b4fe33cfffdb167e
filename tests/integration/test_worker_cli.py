"""`kb worker` and `kb migrate` as an operator (or a container runtime) meets them: output redirected, not a terminal;
stopped with SIGTERM; pointed at a data directory another kb process owns; given a registry URL with a password."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kb.adapters.sql_registry import SqlRegistry
from kb.container import Container
from kb.models import DocumentStatus
from kb.settings import Settings
from service.datadir import DataDirLock
from service.state import Services
from tests.support import free_port, log_tail, postgres_schema

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"
KB = Path(sys.executable).with_name("kb")


def kb_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("KB_")}, "COLUMNS": "60", **extra}


def test_kb_worker_refuses_a_data_directory_another_kb_process_owns_and_says_what_to_share(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path / "data")
    assert lock.try_acquire()  # as `kb serve` holds it
    try:
        result = subprocess.run([str(KB), "worker"], env=kb_env(KB_DATA_DIR=str(tmp_path / "data")),
                                capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    finally:
        lock.release()
    assert result.returncode == 2 and result.stdout == ""
    message = " ".join(result.stderr.split())
    assert "in use by process" in message and "`kb serve` runs the ingestion workers itself" in message
    assert "KB_REGISTRY_URL" in message and "KB_INDEX__URL" in message


def test_kb_worker_ingests_what_is_queued_keeps_its_heartbeat_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """On the embedded default a worker process may run instead of `kb serve` (it then owns the data directory)."""
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    container = Container.open(settings)
    services = asyncio.run(Services.open(container, with_generator=False))
    path = CORPUS / "txt" / "norwich-city.txt"
    document = services.pipeline.submit(path.name, path.read_bytes()).document  # queued: no worker runs here
    asyncio.run(container.aclose())

    heartbeat = tmp_path / "alive"
    metrics_port = free_port()
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [str(KB), "worker"], stdout=out, stderr=err, start_new_session=True,
            env=kb_env(KB_DATA_DIR=str(data), KB_INGEST__HEARTBEAT_PATH=str(heartbeat), KB_LOGGING__FORMAT="json",
                       KB_INGEST__METRICS_PORT=str(metrics_port)),
        )  # fmt: skip
    registry = SqlRegistry(settings.resolved_registry_url)
    try:
        deadline = time.monotonic() + 300
        while registry.get_document(document.document_id).status is not DocumentStatus.READY:
            assert process.poll() is None, log_tail(stderr)
            assert time.monotonic() < deadline, log_tail(stderr)
            time.sleep(0.5)
        assert heartbeat.exists() and time.time() - heartbeat.stat().st_mtime < 30
        # Its own metrics, for Prometheus: on loopback unless KB_INGEST__METRICS_HOST says otherwise.
        def scrape() -> str:
            return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text

        while 'kb_ingest_documents_total{outcome="ready"} 1.0' not in (metrics := scrape()):  # counted after READY
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        assert "kb_ingest_queue_depth 0.0" in metrics and "kb_ingest_document_duration_seconds_count 1.0" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log_tail(stderr)
        ready = registry.get_document(document.document_id)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        registry.close()
    assert stdout.read_bytes() == b""  # nothing for a pipe to parse: the logs are on stderr, as JSON lines
    assert '"event": "ingestion job finished"' in stderr.read_text()
    reopened = Container.open(settings)  # the lock is free again: the worker released it
    try:
        assert ready.chunks and reopened.index.count() == ready.chunks
    finally:
        asyncio.run(reopened.aclose())


def test_kb_migrate_is_idempotent_and_never_prints_the_registry_password(tmp_path: Path) -> None:
    with postgres_schema() as url:
        # The machine's PostgreSQL trusts local connections: any password is accepted, and must not be shown.
        with_password = url.replace("postgresql+psycopg://postgres@", "postgresql+psycopg://postgres:s3cr3t-pw@")
        env = kb_env(KB_DATA_DIR=str(tmp_path / "data"), KB_REGISTRY_URL=with_password)
        runs = [subprocess.run([str(KB), "migrate"], env=env, capture_output=True, text=True, timeout=300,
                               check=False) for _ in range(2)]  # fmt: skip
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "s3cr3t-pw" not in run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert len(lines) == 2, run.stdout
        assert lines[0].startswith("registry: postgresql+psycopg://postgres:***@127.0.0.1:5432/")
        assert lines[0].endswith("schema up to date, 0 document(s)")
        assert lines[1] == "index: Qdrant Edge: ready, 0 point(s)"
