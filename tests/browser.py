"""A real browser for the page tests: Debian's `chromium`, driven by Playwright.

Playwright's own browser download is not used (and cannot work offline): it drives the
system's chromium through `executable_path`. `.ci/run` installs chromium as root; on a
developer's machine `apt-get install chromium` (or set IMGPIPE_CHROMIUM to a
Chromium/Chrome binary).

    with open_page() as page:
        page.goto(url)
        page.screenshot(path=artifact_path("report.png"))
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"

# As the machine's probe ran it: headless, no sandbox (root in CI), and none of the
# background connections a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    candidate = os.environ.get("IMGPIPE_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not candidate:
        raise RuntimeError(
            "no chromium on PATH: the page tests drive a real browser. Install it "
            "(`apt-get install chromium` as root; .ci/run does) or set IMGPIPE_CHROMIUM"
        )
    return candidate


def artifact_path(name: str) -> Path:
    """Where a test keeps a screenshot or page for people to look at (build/test-artifacts)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


@contextmanager
def open_page(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium page (new profile each time); closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            yield page
        finally:
            browser.close()
