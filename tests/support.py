"""Helpers shared by the tests that start processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log_path: Path, lines: int = 60) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the process group (the process and whatever it spawned), then SIGKILL what is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def start_kb_serve(env: dict[str, str], log_path: Path, timeout: float = 300) -> tuple[subprocess.Popen[bytes], str]:
    """`kb serve` in its own process group (teardown: stop_process_group), once /readyz answers 200: (process, url)."""
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while not _ready(f"{url}/readyz"):
            assert process.poll() is None, f"kb serve exited:\n{log_tail(log_path)}"
            assert time.monotonic() < deadline, f"kb serve not ready after {timeout:.0f} s:\n{log_tail(log_path)}"
            time.sleep(0.3)
    except BaseException:
        stop_process_group(process)
        raise
    return process, url


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:  # not listening yet
        return False


@asynccontextmanager
async def serve_in_process(app: Any, timeout: float = 300) -> AsyncIterator[str]:
    """The app under uvicorn in this process and event loop (so a test can look at its engine), once /readyz
    answers 200; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while True:
                assert not task.done(), "the server stopped"
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:  # not listening yet
                    pass
                assert time.monotonic() < deadline, f"not ready after {timeout:.0f} s"
                await asyncio.sleep(0.5)
        yield url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=120)


async def access_lines(logs: list[dict[str, Any]], request_id: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The access-log lines of one request among structlog's captured `logs`, once at least one is there (the line
    of a request whose client left is written when the server notices)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [e for e in logs if e.get("event") == "request" and e.get("request_id") == request_id]
        if lines or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.1)
