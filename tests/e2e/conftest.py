"""What the browser tests share: Debian's Chromium, launched headless by Playwright."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium: missing, the test fails (it is never skipped)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
                    "(`make test` installs it as root; or: sudo apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True,
            args=["--no-sandbox", "--disable-background-networking"])
        yield launched
        await launched.close()


async def type_and_send(page: Page, text: str) -> None:
    """Type `text` into the chat's composer and send it. The composer is rebuilt once the
    chat session is up, dropping what was typed before: type again until the text sticks
    (wait for the session's first message before calling)."""
    for _ in range(10):
        await page.fill("#chat-input", text)
        try:
            await expect(page.locator("#chat-submit")).to_be_enabled(timeout=2_000)
            break
        except AssertionError:
            continue
    await page.click("#chat-submit")
