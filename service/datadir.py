"""Who owns the data directory.

Qdrant Edge and SQLite are opened by one process at a time. The owner holds an exclusive lock on
`DATA_DIR/.kb.lock`; a running `kb serve` also records its URL in `DATA_DIR/server.json`. A CLI command that finds
the directory owned by a server hands its work to that server over HTTP; one that finds it owned by another CLI
command stops with a clear message rather than waiting or corrupting anything.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


class DataDirBusy(RuntimeError):
    pass


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock_path = data_dir / ".kb.lock"
        self._server_path = data_dir / "server.json"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        # A server.json left by a process that died is stale now that we hold the lock.
        self._server_path.unlink(missing_ok=True)
        return True

    def acquire(self) -> None:
        if not self.try_acquire():
            raise DataDirBusy(self.busy_message())

    def owner_pid(self) -> str:
        try:
            return self._lock_path.read_text().strip() or "?"
        except OSError:
            return "?"

    def busy_message(self) -> str:
        return (
            f"the data directory {self.data_dir} is in use by process {self.owner_pid()} "
            "(another kb command); wait for it to finish or point KB_DATA_DIR elsewhere"
        )

    def publish_server(self, url: str) -> None:
        tmp = self._server_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}))
        os.replace(tmp, self._server_path)

    def server_url(self) -> str | None:
        """URL of the server that owns the directory, if the owner is a server."""
        try:
            info = json.loads(self._server_path.read_text())
        except (OSError, ValueError):
            return None
        return info.get("url")

    def release(self) -> None:
        if self._fd is not None:
            self._server_path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
