"""Open a report page in a real headless browser (Debian's chromium through playwright) and read it.

The browser is started with the flags this project's machines need (no sandbox as root, no GPU, no
background networking) and a fresh profile; every request other than the page's own file is recorded,
and so is every console error and page error. A missing chromium or playwright skips, or fails
under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

CHROMIUM = os.environ.get("BLUEGREEN_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def missing(reason: str) -> NoReturn:
    """Skip for a missing browser, or fail under ``CI=true`` (as ``tests/conftest.py`` does for servers)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing binary fails the suite)", pytrace=False)
    pytest.skip(reason)  # never under CI=true: the line above fails instead


@dataclass
class Opened:
    """What the browser saw of the page."""

    page: Any  # playwright.sync_api.Page
    seconds: float  # from navigation to every chart drawn
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL asked for but the page itself

    def metric(self, name: str) -> str:
        return str(self.page.locator(f"[data-metric={name!r}]").first.inner_text()).strip()

    def number(self, name: str) -> float:
        return float(self.metric(name).replace(",", "").split()[0])

    def on_first_screen(self, selector: str) -> bool:
        """Whether the element is visible without scrolling."""
        box = self.page.locator(selector).first.bounding_box()
        viewport = self.page.viewport_size
        return bool(box and viewport and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"])


@contextmanager
def opened(path: Path, width: int = 1400, height: int = 900) -> Iterator[Opened]:
    """Open ``path`` (a file) and wait until every chart is drawn (``body[data-ready]``)."""
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} not found: apt-get install chromium (make deps does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed: make install")
    profile = tempfile.mkdtemp(prefix="bluegreen-chromium-")
    url = path.resolve().as_uri()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": width, "height": height})
            try:
                page = browser.new_page()
                seen = Opened(page, 0.0)
                page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: seen.console_errors.append(str(e)))
                page.on("request", lambda r: seen.requests.append(r.url) if r.url != url else None)
                started = time.monotonic()
                page.goto(url)
                page.wait_for_selector("body[data-ready=true]", timeout=60_000)
                seen.seconds = time.monotonic() - started
                yield seen
            finally:
                browser.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
