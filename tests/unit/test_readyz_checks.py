"""/readyz's dependency checks: callers at once share one check, an answer is reused for CHECK_REUSE_S, and a hung
check holds one thread, never one per call."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.routes import health

pytestmark = pytest.mark.unit


class Check:
    def __init__(self, hold: threading.Event | None = None, fail: bool = False) -> None:
        self.calls = 0
        self._hold, self._fail = hold, fail

    def __call__(self) -> int:
        self.calls += 1
        if self._hold is not None:
            self._hold.wait(10)
        if self._fail:
            raise ConnectionError("database unreachable")
        return 1


async def test_callers_at_once_share_one_check_and_its_answer_is_reused_briefly() -> None:
    release = threading.Event()
    check = Check(hold=release)
    waiting = [asyncio.create_task(health._in_thread("shared", check)) for _ in range(20)]
    await asyncio.sleep(0.2)
    release.set()
    assert await asyncio.gather(*waiting) == ["ok"] * 20
    assert check.calls == 1
    assert await health._in_thread("shared", check) == "ok" and check.calls == 1  # reused within CHECK_REUSE_S
    await asyncio.sleep(health.CHECK_REUSE_S + 0.1)
    assert await health._in_thread("shared", check) == "ok" and check.calls == 2  # then asked again


async def test_a_failure_is_reported_to_every_caller_and_asked_again_later() -> None:
    check = Check(fail=True)
    answers = await asyncio.gather(*(health._in_thread("failing", check) for _ in range(5)))
    assert len(set(answers)) == 1 and answers[0].startswith("error:") and "unreachable" in answers[0]
    assert check.calls == 1
    await asyncio.sleep(health.CHECK_REUSE_S + 0.1)
    await health._in_thread("failing", check)
    assert check.calls == 2


async def test_a_hung_check_times_out_for_its_callers_and_holds_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 0.3)
    release = threading.Event()
    check = Check(hold=release)
    try:
        first = await asyncio.gather(*(health._bounded(health._in_thread("hung", check)) for _ in range(3)))
        assert all(answer.startswith("error: no answer within") for answer in first)
        later = await health._in_thread("hung", check)  # past the timeout: answered at once, no new thread
        assert later.startswith("error: no answer for")  # said without waiting (waiting would say "within")
        assert check.calls == 1
    finally:
        release.set()


async def test_a_dependency_failure_met_by_a_request_is_asked_again_at_once() -> None:
    """A door that meets the registry down (a 503 to its caller) must not leave /readyz repeating its "ok" from
    before: readiness says so on the next call."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from service.problems import dependency_failure

    state = {"down": False}

    def check() -> int:
        if state["down"]:
            raise ConnectionError("registry unreachable")
        return 1

    assert await health._in_thread("registry:forgotten", check) == "ok"
    state["down"] = True
    assert await health._in_thread("registry:forgotten", check) == "ok"  # the answer of a moment ago
    down = OperationalError("SELECT 1", {}, sqlite3.OperationalError("unable to open database file"))
    assert dependency_failure(down).dependency == "registry"  # as a route's error handler classifies it
    assert (await health._in_thread("registry:forgotten", check)).startswith("error:")
