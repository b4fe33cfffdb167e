"""Parsing in a child process: a per-document time limit, and a crash in a native parser library never takes the
worker down. While the child parses the next document, the worker embeds the previous one on the other core.

One long-lived child (unstructured is imported once, and each partitioner warmed up on a tiny document, so no
document pays for lazy model loads); requests are answered in order. The parent learns when each parse starts, and
the time limit counts the CPU seconds the child (and the tools it runs: tesseract, pandoc, LibreOffice) spends on that
document, so it measures parsing, not queueing, start-up or how busy the machine is; a wall-clock backstop of twice
the limit (at least a minute more) catches a parse that hangs without using the CPU.

The child has an address-space limit (RLIMIT_AS, inherited by the tools it runs): a document that needs more memory
than that fails with "too large when unpacked" instead of taking the machine's memory. The child also dies with its
parent, even one killed with SIGKILL (kb.process_guard).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ingest.partition import Block, ParseError
from kb.process_guard import die_with_this_process

TOO_LARGE = "too large when unpacked"
# Samples parsed once at start, so that lazy loads (NLTK data, spaCy, the first call of each partitioner) happen
# before any document's limit runs.
_WARM_UP = {
    "warm-up.txt": b"Warm-up. This paragraph is parsed once when the parser starts.\n\nIt has two paragraphs.",
    "warm-up.md": b"# Warm-up\n\nA *markdown* paragraph, parsed once when the parser starts.\n\n- one\n- two\n",
    "warm-up.html": b"<html><body><h1>Warm-up</h1><p>An HTML paragraph, parsed once at start.</p></body></html>",
}


def _preload() -> None:
    """Import the partitioners up front (seconds of imports), so that no document's time limit pays for them."""
    import importlib

    for module in ("auto", "pdf", "docx", "html", "md", "text", "pptx", "xlsx", "csv", "email", "image"):
        try:
            importlib.import_module(f"unstructured.partition.{module}")
        except Exception:  # an optional format whose extra is not installed: its documents will say so
            pass


def _warm_up() -> None:
    from ingest.partition import partition_bytes

    for name, data in _WARM_UP.items():
        try:
            partition_bytes(data, name)
        except Exception:  # a warm-up that fails costs only its time; the document will say what is wrong
            pass


def _limit_memory(memory_limit_mb: int) -> None:
    """Cap the child's address space at what it holds after its imports plus `memory_limit_mb`."""
    if memory_limit_mb <= 0:
        return
    import resource

    limit = psutil.Process().memory_info().vms + memory_limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(requests: Any, replies: Any, memory_limit_mb: int = 0) -> None:  # pragma: no cover - in the child
    import signal

    from ingest.partition import partition_file

    # Ctrl-C reaches the whole process group: the worker that owns this child decides when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload()
    _warm_up()
    _limit_memory(memory_limit_mb)
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
        except MemoryError:
            # The heap may be in any state now: answer, then make way for a fresh child.
            replies.put(("parse_error", request_id, f"{TOO_LARGE}: parsing needed more than the parser's "
                                                    f"memory limit ({memory_limit_mb} MB)"))  # fmt: skip
            replies.close()
            replies.join_thread()  # the reply is written by the queue's feeder thread: let it finish
            os._exit(0)
        except BaseException as exc:  # the parent decides what an unexpected error means
            message = f"{type(exc).__name__}: {exc}"
            if _out_of_memory(message):
                # A tool the child ran (LibreOffice, pandoc, tesseract) hit the same limit.
                message = f"{TOO_LARGE}: a converter ran out of memory ({message[:200]})"
                replies.put(("parse_error", request_id, message))
            else:
                replies.put(("error", request_id, message))


def _out_of_memory(message: str) -> bool:
    lowered = message.lower()
    return any(m in lowered for m in ("out of memory", "cannot allocate memory", "std::bad_alloc", "memoryerror"))


class ParserCrashed(RuntimeError):
    """The parser process died while parsing this document."""


class ParserRestarted(RuntimeError):
    """The parser process was replaced before it reached this document: submit it again."""


class ParseCancelled(RuntimeError):
    """The caller gave up on this document (its job was cancelled): the parse was stopped."""


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None
    cpu_at_start: float = 0.0  # the child's CPU seconds (its own and its finished tools') when this parse started
    outcome: tuple[str, Any] | None = None


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


class ParserProcess:
    def __init__(self, time_limit_s: float, memory_limit_mb: int = 0) -> None:
        """`time_limit_s`: CPU seconds per document; `memory_limit_mb`: address space the child may add to what it
        holds after its imports (0: no limit)."""
        self._time_limit_s = time_limit_s
        self._memory_limit_mb = memory_limit_mb
        self._wall_limit_s = max(2 * time_limit_s, time_limit_s + 60)
        self._ps: psutil.Process | None = None
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
            target=_child, args=(self._requests, self._replies, self._memory_limit_mb), name="kb-parser", daemon=True
        )
        self._process.start()
        die_with_this_process(self._process.pid)
        try:
            self._ps = psutil.Process(self._process.pid)
        except psutil.Error:
            self._ps = None
        replies = self._replies
        self._reader = threading.Thread(target=self._read_replies, args=(replies,), name="kb-parser-replies", daemon=True)
        self._reader.start()

    def _read_replies(self, replies: Any) -> None:
        while True:
            try:
                kind, request_id, payload = replies.get()
            except Exception:  # closed, or a reply cut short by a killed child: this reader's child is gone
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
                pending.cpu_at_start = self._child_cpu()
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

    def _child_cpu(self) -> float:
        try:
            return _cpu_seconds(self._ps) if self._ps is not None else 0.0
        except psutil.Error:
            return 0.0

    def result(self, request_id: int, cancelled: Callable[[], bool] | None = None) -> list[Block]:
        """Blocks of the document; ParseError for an unreadable one (or one over the time limit); ParserCrashed
        if the parser died on it; ParserRestarted if it was still queued when the parser had to be restarted;
        ParseCancelled once `cancelled()` (asked about once a second) says so: the child is then killed, which
        stops the parse at once (the next submit starts a fresh child)."""
        pending = self._pending[request_id]
        next_check = time.monotonic() + 1.0
        try:
            while not pending.done.wait(0.2):
                process = self._process
                if process is None or not process.is_alive():
                    if pending.started_at is None:
                        raise ParserRestarted("the parser restarted before reading this file")
                    raise ParserCrashed("the parser process died while reading this file")
                if pending.started_at:
                    cpu = self._child_cpu() - pending.cpu_at_start
                    wall = time.monotonic() - pending.started_at
                    if cpu > self._time_limit_s or wall > self._wall_limit_s:
                        self._kill()
                        raise ParseError(
                            f"time limit exceeded: parsing took more than {self._time_limit_s:.0f} s"
                            + ("" if cpu > self._time_limit_s else f" (no progress for {wall:.0f} s)")
                        )
                if cancelled is not None and time.monotonic() >= next_check:
                    next_check = time.monotonic() + 1.0
                    if cancelled():
                        self._kill()
                        raise ParseCancelled("the document's job was cancelled")
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
                if self._ready.is_set():  # at work or idle: it finishes what it reads, then sees the end
                    self._requests.put(None)
                    process.join(5)
                else:  # still importing its libraries: it holds no document, nothing to wait for
                    process.kill()
            finally:
                if process.is_alive():
                    process.kill()
                    process.join(5)
            self._replies.put(("stop", 0, None))
