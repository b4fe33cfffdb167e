"""Child processes die with kb, even when kb itself is killed with SIGKILL.

kb starts heavy children: the parser process (~1 GB) and vLLM's EngineCore (~2 GB, spawned by vLLM itself, so kb
cannot make it call `prctl(PR_SET_PDEATHSIG)`). A process killed with SIGKILL runs no cleanup, and its children are
reparented to PID 1 and live on. So kb starts one small watchdog process per kb process, the first time a child is
registered: the watchdog holds the read end of a pipe whose write end only kb holds. When kb exits for any reason the
kernel closes that end; the watchdog reads EOF and kills every registered child (and their descendants) that is still
the same process (pid and start time), then exits. A normal shutdown stops the children first, so the watchdog then
finds nothing left to do.

(`PR_SET_PDEATHSIG` would fire when the *thread* that spawned the child exits, not the process, and kb spawns from
worker threads; a watchdog on the parent's pipe has no such trap and covers children kb did not spawn itself.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import psutil

log = logging.getLogger(__name__)

# Runs in the watchdog: stdlib + psutil only (it starts in ~50 ms and holds ~15 MB).
_WATCHDOG = r"""
import os, signal, sys
import psutil

signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: outlive kb's shutdown, then clean up
signal.signal(signal.SIGTERM, signal.SIG_IGN)
watched = {}
for line in sys.stdin:  # EOF when kb exits, however it exits
    try:
        pid, started = line.split()
        watched[int(pid)] = float(started)
    except ValueError:
        continue

def same(process, started):
    try:
        return abs(process.create_time() - started) < 0.01
    except psutil.Error:
        return False

victims = []
for pid, started in watched.items():
    try:
        process = psutil.Process(pid)
    except psutil.Error:
        continue
    if same(process, started):
        try:
            victims += process.children(recursive=True)
        except psutil.Error:  # the process ended meanwhile: nothing to measure or kill
            pass
        victims.append(process)
for process in victims:
    try:
        process.kill()
    except psutil.Error:  # the process ended meanwhile: nothing to measure or kill
        pass
psutil.wait_procs(victims, timeout=5)
"""


class ChildGuard:
    """The watchdog of this process (one per process, started on first use)."""

    _instance: ChildGuard | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[tuple[int, float]] = set()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            text=True,
        )
        self.pid = self._process.pid

    @classmethod
    def get(cls) -> ChildGuard:
        with cls._instance_lock:
            instance = cls._instance
            if instance is None or instance._process.poll() is not None or instance._owner_pid != os.getpid():
                instance = cls._instance = cls()
                instance._owner_pid = os.getpid()
            return instance

    _owner_pid: int = 0

    def watch(self, pid: int) -> None:
        """Kill `pid` (and its descendants) when this process dies."""
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        with self._lock:
            if (pid, started) in self._watched:
                return
            self._watched.add((pid, started))
            try:
                assert self._process.stdin is not None
                self._process.stdin.write(f"{pid} {started!r}\n")
                self._process.stdin.flush()
            except (OSError, ValueError):
                log.warning("the child watchdog is gone; pid %d will not be cleaned up after a crash", pid)

    def watch_children(self) -> list[int]:
        """Watch every current descendant of this process (but the watchdog itself); their pids."""
        pids = []
        for child in psutil.Process().children(recursive=True):
            if child.pid != self.pid:
                self.watch(child.pid)
                pids.append(child.pid)
        return pids


def die_with_this_process(pid: int) -> None:
    """Have `pid` killed when this process dies, even by SIGKILL (best effort: logged if it cannot be arranged)."""
    try:
        ChildGuard.get().watch(pid)
    except Exception:  # never fail the caller's start-up for it
        log.warning("could not start the child watchdog for pid %d", pid, exc_info=True)


def children_die_with_this_process() -> list[int]:
    """Have every current descendant killed when this process dies (after an engine has spawned its processes)."""
    try:
        return ChildGuard.get().watch_children()
    except Exception:
        log.warning("could not start the child watchdog", exc_info=True)
        return []
