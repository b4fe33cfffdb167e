"""Parsing in a child process: a per-document time limit, and a crash in a native parser library never takes the
worker down. While the child parses the next document, the worker embeds the previous one on the other core.

One long-lived child (unstructured is imported once); requests are answered in order. The parent learns when each
parse starts, so the time limit counts parsing time only, not time spent waiting in the queue.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.partition import Block, ParseError


def _preload() -> None:
    """Import the partitioners up front (seconds of imports), so that no document's time limit pays for them."""
    import importlib

    for module in ("auto", "pdf", "docx", "html", "md", "text", "pptx", "xlsx", "csv", "email", "image"):
        try:
            importlib.import_module(f"unstructured.partition.{module}")
        except Exception:  # an optional format whose extra is not installed: its documents will say so
            pass


def _child(requests: Any, replies: Any) -> None:  # pragma: no cover - runs in the child process
    from ingest.partition import partition_file

    _preload()
    replies.put(("ready", 0, None))
    while True:
        request = requests.get()
        if request is None:
            return
        request_id, path, filename = request
        replies.put(("started", request_id, time.monotonic()))
        try:
            replies.put(("done", request_id, partition_file(Path(path), filename)))
        except ParseError as exc:
            replies.put(("parse_error", request_id, str(exc)))
        except BaseException as exc:  # the parent decides what an unexpected error means
            replies.put(("error", request_id, f"{type(exc).__name__}: {exc}"))


class ParserCrashed(RuntimeError):
    """The parser process died while parsing this document."""


class ParserRestarted(RuntimeError):
    """The parser process was replaced before it reached this document: submit it again."""


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None
    outcome: tuple[str, Any] | None = None


class ParserProcess:
    def __init__(self, time_limit_s: float) -> None:
        self._time_limit_s = time_limit_s
        self._context = mp.get_context("spawn")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._process: Any = None
        self._requests: Any = None
        self._replies: Any = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._closed = False

    def start(self, wait: bool = False, timeout: float = 120.0) -> None:
        """Spawn the child now (its imports take seconds) rather than at the first document."""
        with self._lock:
            self._ensure_started()
        if wait and not self._ready.wait(timeout):
            raise RuntimeError("the parser process did not start")

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._ready.clear()
        self._requests = self._context.Queue()
        self._replies = self._context.Queue()
        self._process = self._context.Process(
            target=_child, args=(self._requests, self._replies), name="kb-parser", daemon=True
        )
        self._process.start()
        replies = self._replies
        self._reader = threading.Thread(target=self._read_replies, args=(replies,), name="kb-parser-replies", daemon=True)
        self._reader.start()

    def _read_replies(self, replies: Any) -> None:
        while True:
            try:
                kind, request_id, payload = replies.get()
            except (EOFError, OSError, ValueError):
                return
            if kind == "stop":
                return
            if kind == "ready":
                self._ready.set()
                continue
            with self._lock:
                pending = self._pending.get(request_id)
            if pending is None:
                continue
            if kind == "started":
                pending.started_at = time.monotonic()
            else:
                pending.outcome = (kind, payload)
                pending.done.set()

    def submit(self, path: Path, filename: str) -> int:
        with self._lock:
            if self._closed:
                raise RuntimeError("parser process is closed")
            self._ensure_started()
            request_id = next(self._ids)
            self._pending[request_id] = _Pending()
            self._requests.put((request_id, str(path), filename))
        return request_id

    def result(self, request_id: int) -> list[Block]:
        """Blocks of the document; ParseError for an unreadable one (or one over the time limit); ParserCrashed
        if the parser died on it; ParserRestarted if it was still queued when the parser had to be restarted."""
        pending = self._pending[request_id]
        try:
            while not pending.done.wait(0.2):
                process = self._process
                if process is None or not process.is_alive():
                    if pending.started_at is None:
                        raise ParserRestarted("the parser restarted before reading this file")
                    raise ParserCrashed("the parser process died while reading this file")
                if pending.started_at and time.monotonic() - pending.started_at > self._time_limit_s:
                    self._kill()
                    raise ParseError(f"time limit exceeded: parsing took more than {self._time_limit_s:.0f} s")
            kind, payload = pending.outcome  # type: ignore[misc]
            if kind == "done":
                return payload
            if kind == "parse_error":
                raise ParseError(payload)
            raise RuntimeError(payload)
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def _kill(self) -> None:
        """Kill the child (a parse overran its time limit). The next submit starts a fresh one."""
        with self._lock:
            process, self._process = self._process, None
            replies = self._replies
        if process is not None:
            process.kill()
            process.join(5)
        if replies is not None:
            replies.put(("stop", 0, None))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            process, self._process = self._process, None
        if process is not None:
            try:
                self._requests.put(None)
                process.join(5)
            finally:
                if process.is_alive():
                    process.kill()
                    process.join(5)
            self._replies.put(("stop", 0, None))
