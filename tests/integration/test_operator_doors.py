"""The scale-out doors (`kb worker`, `kb migrate`) as an operator meets them on a bad day: a setting wrong or a store
down, two migrations started at once on a fresh database, a worker stopped (Ctrl-C, SIGTERM) while it reads a long
document, and an error's log line in a log collector. What must hold: a short error in words and a non-zero status,
nothing lost (a document that would ingest never ends `failed` because its worker was stopped), and no secret in
the output."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from kb.container import Container
from kb.settings import Settings
from service.state import Services
from tests.support import free_port, log_tail, postgres_schema

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "docs"
KB = Path(sys.executable).with_name("kb")
# Read by the parser for well over a minute on two shared cores: a worker stopped a few seconds in is mid-parse.
LONG_DOCUMENT = CORPUS / "txt" / "book-war-and-peace-1225p.txt"
PASSWORD = "Pa55w0rd-not-for-logs"


def kb_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("KB_", "AWS_"))}, "COLUMNS": "80", **extra}


def assert_short_error(run: subprocess.CompletedProcess[str], *words: str) -> None:
    """A non-zero status and a few lines that say what is wrong, not a wall of rich traceback panels."""
    assert run.returncode != 0
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) <= 10, f"{len(lines)} lines on stderr:\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr and "╭" not in run.stderr, run.stderr[-3000:]
    for word in words:
        assert word in run.stderr, run.stderr[-3000:]
    assert PASSWORD not in run.stderr


# Each operator door that opens the stores at start: `kb serve` for an API-only replica as well.
DOORS = ["migrate", "worker", "serve --no-worker"]


def door(command: str) -> list[str]:
    return [str(KB), *command.split(), *(["--port", str(free_port())] if command.startswith("serve") else [])]


@pytest.mark.parametrize("command", DOORS)
def test_a_misconfigured_blob_store_is_one_line_of_error_not_a_traceback(tmp_path: Path, command: str) -> None:
    env = kb_env(KB_DATA_DIR=str(tmp_path / "data"), KB_BLOBS__BACKEND="s3")  # and no bucket
    run = subprocess.run(door(command), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert_short_error(run, "KB_BLOBS__S3_BUCKET")


@pytest.mark.parametrize("command", DOORS)
def test_an_unreachable_registry_is_one_line_of_error_without_its_password(tmp_path: Path, command: str) -> None:
    closed = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{free_port()}/test"
    env = kb_env(KB_DATA_DIR=str(tmp_path / "data"), KB_REGISTRY_URL=closed)
    run = subprocess.run(door(command), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert_short_error(run, "Connection refused", "KB_REGISTRY_URL")


def test_a_metrics_port_in_use_is_one_line_naming_the_settings(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = kb_env(KB_DATA_DIR=str(tmp_path / "data"), KB_INGEST__METRICS_PORT=str(port))
        run = subprocess.run([str(KB), "worker"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert_short_error(run, f"127.0.0.1:{port}", "KB_INGEST__METRICS_PORT", "in use")


def test_migrations_started_together_on_a_fresh_database_all_succeed() -> None:
    """`kb migrate` run twice at once (a Job retried, two releases), or API and worker pods starting together on an
    empty database: each opens the registry, which creates its tables. Three at once, four times over."""
    opener = "import sys; from kb.adapters.sql_registry import SqlRegistry; SqlRegistry(sys.argv[1]).close()"
    failures = []
    for _ in range(4):
        with postgres_schema() as url:
            processes = [subprocess.Popen([sys.executable, "-c", opener, url], stderr=subprocess.PIPE, text=True)
                         for _ in range(3)]  # fmt: skip
            for process in processes:
                _, err = process.communicate(timeout=50)
                if process.returncode:
                    failures.append(err.strip().splitlines()[-1])
    assert not failures, failures


def test_a_logged_exception_never_carries_the_registry_password_from_frame_locals() -> None:
    """JSON logs render exceptions with their frames; the locals of a frame holding the settings (the container
    does) must not put the registry's password into the log collector."""
    script = f"""
import logging
from kb.settings import Settings, LoggingSettings
from service.observability import configure_logging
configure_logging(LoggingSettings(format="json"))
def fails(settings):
    raise ConnectionError("index unreachable")
try:
    fails(Settings(registry_url="postgresql+psycopg://kb:{PASSWORD}@db:5432/kb"))
except ConnectionError:
    logging.getLogger("kb.container").exception("the retrieval warm-up failed")
"""
    run = subprocess.run([sys.executable, "-c", script], env=kb_env(), capture_output=True, text=True, timeout=60,
                         check=True)  # fmt: skip
    assert "the retrieval warm-up failed" in run.stderr
    assert PASSWORD not in run.stderr, run.stderr[:2000]


def _queue_long_document(data: Path) -> tuple[str, str]:
    """The long document queued on the embedded default (no worker runs here): (its id, the registry URL)."""
    settings = Settings(data_dir=data)
    container = Container.open(settings)
    services = asyncio.run(Services.open(container, with_generator=False))
    document = services.pipeline.submit(LONG_DOCUMENT.name, LONG_DOCUMENT.read_bytes()).document
    asyncio.run(container.aclose())
    return document.document_id, settings.resolved_registry_url


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_worker_stopped_while_it_reads_a_document_gives_the_job_back_uncounted(tmp_path: Path, how: str) -> None:
    """Ctrl-C reaches the whole process group (the parser child too); SIGTERM (a rolling update, KEDA scaling in)
    reaches the worker, whose stop waits 30 s for the job in hand. Either way the document was good: with one attempt
    allowed, a stop that counts as a failed attempt would fail it for good."""
    data = tmp_path / "data"
    document_id, registry_url = _queue_long_document(data)
    stderr = tmp_path / "stderr"
    env = kb_env(KB_DATA_DIR=str(data), KB_INGEST__MAX_ATTEMPTS="1", KB_LOGGING__FORMAT="json")
    with stderr.open("wb") as err:
        process = subprocess.Popen([str(KB), "worker"], stdout=subprocess.DEVNULL, stderr=err, env=env,
                                   start_new_session=True)  # fmt: skip
    engine = create_engine(registry_url)

    def status() -> str:
        with engine.connect() as connection:
            return connection.execute(text("SELECT status FROM documents WHERE document_id = :id"),
                                      {"id": document_id}).scalar_one()  # fmt: skip

    try:
        deadline = time.monotonic() + 60
        while status() != "processing":
            assert process.poll() is None and time.monotonic() < deadline, log_tail(stderr)
            time.sleep(0.3)
        time.sleep(3)  # parsing now
        if how == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=50) == 0, log_tail(stderr)
        after = status()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        engine.dispose()
    assert after == "queued", f"{after}\n{log_tail(stderr, 8)}"


@pytest.mark.slow
def test_a_document_ingested_while_qdrant_is_briefly_down_is_not_failed_for_good(tmp_path: Path) -> None:
    """A Qdrant node restarting (a rolling update takes tens of seconds) is the index's outage, not the document's
    fault: the worker must not spend every attempt within seconds and fail the document for good."""
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    container = Container.open(settings)
    services = asyncio.run(Services.open(container, with_generator=False))
    path = CORPUS / "txt" / "norwich-city.txt"
    document_id = services.pipeline.submit(path.name, path.read_bytes()).document.document_id
    asyncio.run(container.aclose())
    stderr = tmp_path / "stderr"
    env = kb_env(KB_DATA_DIR=str(data), KB_INDEX__BACKEND="qdrant", KB_INDEX__URL=f"http://127.0.0.1:{free_port()}")
    with stderr.open("wb") as err:
        process = subprocess.Popen([str(KB), "worker"], stdout=subprocess.DEVNULL, stderr=err, env=env,
                                   start_new_session=True)  # fmt: skip
    engine = create_engine(settings.resolved_registry_url)
    try:
        deadline = time.monotonic() + 60
        while b"taking ingestion jobs" not in stderr.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log_tail(stderr)
            time.sleep(0.3)
        time.sleep(20)  # the index stays down for 20 s
        with engine.connect() as connection:
            status = connection.execute(text("SELECT status FROM documents WHERE document_id = :id"),
                                        {"id": document_id}).scalar_one()  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=50)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        engine.dispose()
    # Waiting for the index (queued for a later attempt, or still held), never given up on.
    assert status in ("queued", "processing"), f"{status}\n{log_tail(stderr, 6)}"
    assert "failed for good" not in stderr.read_text(), log_tail(stderr, 6)
