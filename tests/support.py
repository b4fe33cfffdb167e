"""Helpers shared by the tests that start processes."""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import uvicorn
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

# The PostgreSQL the tests use (this machine's, trust auth); KB_TEST_POSTGRES_URL points them at another.
POSTGRES = os.environ.get("KB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of an empty registry database on PostgreSQL: a schema of its own (tests never see each other's rows),
    dropped afterwards with everything in it. Every connection opened with the URL (other processes too) uses it."""
    from sqlalchemy import create_engine, text

    schema = f"kb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def backdate_conversation(registry_url: str, conversation_id: str, days: float) -> None:
    """As if the conversation's messages and claim had been written `days` ago (straight into the registry's
    tables: nothing waits for a clock)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import create_engine, text

    engine = create_engine(registry_url)
    moment = datetime.now(UTC) - timedelta(days=days)
    if engine.dialect.name == "sqlite":
        moment = moment.replace(tzinfo=None)  # SQLite keeps the UTC wall time
    with engine.begin() as connection:
        for table in ("messages", "conversations"):
            connection.execute(text(f"UPDATE {table} SET created_at = :at WHERE conversation_id = :id"),
                               {"at": moment, "id": conversation_id})  # fmt: skip
    engine.dispose()


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


def start_kb_serve(
    env: dict[str, str], log_path: Path, timeout: float = 300, args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """`kb serve [args]` in its own process group (teardown: stop_process_group), once /readyz answers 200:
    (process, url)."""
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), *args],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if _ready(f"{url}/readyz"):
            return True
        assert process.poll() is None, f"kb serve exited:\n{log_tail(log_path)}"
        return False

    def too_slow(_: RetryCallState) -> NoReturn:
        raise AssertionError(f"kb serve not ready after {timeout:.0f} s:\n{log_tail(log_path)}")

    try:
        Retrying(
            retry=retry_if_result(operator.not_), stop=stop_after_delay(timeout), wait=wait_fixed(0.3),
            retry_error_callback=too_slow,
        )(ready)
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
    def too_slow(_: RetryCallState) -> NoReturn:
        raise AssertionError(f"not ready after {timeout:.0f} s")

    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def ready() -> bool:
                assert not task.done(), "the server stopped"
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.HTTPError:  # not listening yet
                    return False

            await AsyncRetrying(
                retry=retry_if_result(operator.not_), stop=stop_after_delay(timeout), wait=wait_fixed(0.5),
                retry_error_callback=too_slow,
            )(ready)
        yield url
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=120)


async def access_lines(logs: list[dict[str, Any]], request_id: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The access-log lines of one request among structlog's captured `logs`, once at least one is there (the line
    of a request whose client left is written when the server notices)."""

    async def lines() -> list[dict[str, Any]]:
        return [e for e in logs if e.get("event") == "request" and e.get("request_id") == request_id]

    # On timeout: the last (empty) look, for the caller's assertion to report.
    return await AsyncRetrying(
        retry=retry_if_result(operator.not_), stop=stop_after_delay(timeout), wait=wait_fixed(0.1),
        retry_error_callback=lambda state: state.outcome.result(),
    )(lines)
