"""`kb worker`'s loop (ingest/tier.py): the heartbeat a liveness probe reads, and the exit when a worker dies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ingest import tier
from ingest.tier import WorkerTier
from kb.settings import Settings


class FakeWorker:
    def __init__(self, name: str, progress_age_s: float = 0.0, running: bool = True) -> None:
        self.worker_id = name
        self.progress_at = time.monotonic() - progress_age_s
        self.running = running
        self.started = False

    def start(self) -> None:
        self.started = True


def run_briefly(workers: list[FakeWorker], heartbeat: Path | None, seconds: float = 0.3) -> int:
    settings = Settings(ingest={"heartbeat_path": str(heartbeat) if heartbeat else ""})
    runner = WorkerTier(settings)
    runner.workers = workers  # type: ignore[assignment]
    stop = threading.Event()
    threading.Timer(seconds, stop.set).start()
    return runner.run(stop)


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tier, "HEARTBEAT_EVERY_S", 0.05)


def test_the_heartbeat_is_touched_while_every_worker_makes_progress(tmp_path: Path) -> None:
    heartbeat = tmp_path / "alive"
    workers = [FakeWorker("a"), FakeWorker("b", progress_age_s=tier.STUCK_AFTER_S / 2)]
    assert run_briefly(workers, heartbeat) == 0  # stopped: a clean exit
    assert all(w.started for w in workers)
    assert heartbeat.exists() and time.time() - heartbeat.stat().st_mtime < 5


def test_a_stuck_worker_stops_the_heartbeat(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    heartbeat = tmp_path / "alive"
    workers = [FakeWorker("a"), FakeWorker("stuck", progress_age_s=tier.STUCK_AFTER_S + 1)]
    assert run_briefly(workers, heartbeat) == 0
    assert not heartbeat.exists()  # the probe sees no fresh file and the orchestrator restarts the process
    assert "no progress" in caplog.text and "stuck" in caplog.text


def test_a_dead_worker_thread_ends_the_process_with_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    assert run_briefly([FakeWorker("a"), FakeWorker("dead", running=False)], tmp_path / "alive", seconds=30) == 1
    assert time.monotonic() - started < 10  # at once, not when stopped
    assert "dead" in caplog.text and "stopped unexpectedly" in caplog.text


def test_no_heartbeat_file_unless_one_is_asked_for(tmp_path: Path) -> None:
    assert run_briefly([FakeWorker("a")], None) == 0
    assert list(tmp_path.iterdir()) == []
