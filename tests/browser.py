"""The real browser the page tests drive: Debian's chromium through Playwright, offline (`make test` installs it with
`deploy/setup.sh --with-browser`), and the script that records the page's Content-Security-Policy violations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox"]
# Before any of the page's own scripts: every violation of the page's CSP, as "directive blocked-uri".
WATCH_CSP = """document.addEventListener("securitypolicyviolation",
  (e) => (window.__cspViolations = window.__cspViolations || []).push(e.violatedDirective + " " + e.blockedURI));"""


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium (deploy/setup.sh --with-browser)")


@contextmanager
def chromium() -> Iterator[Browser]:
    """One browser for a module's tests (each test opens its own context or page)."""
    require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()
