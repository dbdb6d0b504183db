"""Browser tests: Debian's Chromium, headless, driven by Playwright against a real uvicorn server.

Playwright's own browser downloads are never used (no `playwright install`): the system's Chromium
runs them, and the tests skip, saying why, where it is not installed (`.ci/run` installs it).
Screenshots go to tests/browser/artifacts/ (git-ignored).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# a quiet browser: nothing fetched from the internet behind the tests' back, no GPU, no sandbox (root in CI)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}


# package scope: Playwright's sync API runs an event loop on the main thread while it lives, and a
# later test's asyncio.run() would find it running
@pytest.fixture(scope="package")
def browser() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium` package to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Console:
    """What the page said on its console, and any error it raised."""

    def __init__(self, page) -> None:
        self.messages: list[tuple[str, str]] = []
        page.on("console", lambda m: self.messages.append((m.type, m.text)))
        page.on("pageerror", lambda e: self.messages.append(("pageerror", str(e))))

    @property
    def errors(self) -> list[str]:
        return [text for kind, text in self.messages if kind in ("error", "pageerror", "warning")]


def open_page(browser, url: str, viewport: dict | None = None):
    """A fresh browser context (its own sessionStorage) with the page loaded; returns (page, console)."""
    context = browser.new_context(viewport=viewport or DESKTOP)
    context.set_default_timeout(20_000)
    page = context.new_page()
    console = Console(page)
    page.goto(url)
    return page, console


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
