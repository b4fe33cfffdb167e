"""The parser process (unstructured in a child) as a stop meets it: `kb serve` or `kb worker` stopped moments after
starting must not wait for the child to finish importing its libraries; a child that is ready ends cleanly."""

from __future__ import annotations

import time

import psutil
import pytest

from ingest.parser_process import ParserProcess

pytestmark = pytest.mark.integration


def test_closing_a_parser_still_importing_its_libraries_is_immediate_and_leaves_no_child() -> None:
    parser = ParserProcess(time_limit_s=60)
    parser.start()  # spawned; its imports and warm-up take seconds
    child = psutil.Process(parser._process.pid)
    started = time.monotonic()
    parser.close()
    assert time.monotonic() - started < 4.0  # was 5 s and more: a join on a child that cannot read the request yet
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_closing_a_ready_parser_lets_its_child_exit_by_itself() -> None:
    parser = ParserProcess(time_limit_s=60)
    parser.start(wait=True)
    process = parser._process
    parser.close()
    assert process.exitcode == 0  # it read the end of its requests and returned, not killed
