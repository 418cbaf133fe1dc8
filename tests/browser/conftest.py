"""Browser fixtures: Debian's Chromium driven by Playwright (never a downloaded browser, never
``playwright install``), demo-mode gateways, and pages that fail the test on any JS error."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from support.webpage import PHONE

CHROMIUM = os.environ.get("AFTERTALK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest_asyncio.fixture(scope="session")
async def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
def web(gateways):
    """``web(n=1, **env)``: gateways in demo mode (so the sign-in page can mint tokens)."""
    def start(n: int = 1, **env: Any):
        return gateways(n, AFTERTALK_DEMO="1", **env)
    return start


class PageProblems:
    """Everything a page did that a person would consider broken: JS errors and dialogs."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def watch(self, page: Any, label: str) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"{label}: {exc}"))
        page.on("console", lambda msg: self.errors.append(f"{label} console: {msg.text}")
                if msg.type == "error" and "WebSocket" not in msg.text else None)

        async def dialog(d: Any) -> None:
            self.dialogs.append(f"{label}: {d.type} {d.message}")
            await d.dismiss()
        page.on("dialog", dialog)


@pytest_asyncio.fixture
async def open_page(browser):
    """``await open_page(url, label, viewport=PHONE)`` → a page in its own browser context (own storage)."""
    contexts = []
    problems = PageProblems()

    async def open_(url: str, label: str, viewport: dict[str, int] = PHONE, *, route_ws=None, locale: str | None = None,
                    permissions: list[str] | None = None, init_script: str | None = None,
                    reduced_motion: str | None = None):
        """``route_ws``: a Playwright WebSocketRoute handler that sits between the page and /ws.
        ``locale``: the browser's language (navigator.languages); ``permissions``: granted to the page's
        origin (e.g. ["notifications"]); ``init_script``: run before the page's own scripts."""
        options: dict[str, Any] = {"viewport": viewport, "device_scale_factor": 1}
        if locale:
            options["locale"] = locale
        if reduced_motion:
            options["reduced_motion"] = reduced_motion
        context = await browser.new_context(**options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        if permissions:
            await context.grant_permissions(permissions, origin=url.rstrip("/"))
        if init_script:
            await context.add_init_script(init_script)
        page = await context.new_page()
        problems.watch(page, label)
        if route_ws is not None:
            await page.route_web_socket(lambda u: u.endswith("/ws"), route_ws)
        await page.goto(url)
        return page

    open_.problems = problems
    yield open_
    for context in contexts:
        await context.close()
    assert not problems.errors, problems.errors
