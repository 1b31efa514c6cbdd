"""What the browser tests share: Debian's Chromium, launched headless by Playwright, and
`cadre api` with the UI on the test service's database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from app.stack.ports import free_port
from tests.cli import CADRE
from tests.service import Service

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
WAIT_MS = 60_000


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


@pytest.fixture
async def ui_url(service: Service, service_env: dict[str, str],
                 tmp_path: Path) -> AsyncIterator[str]:
    """`cadre api` with the UI on the test service's database (Chainlit is one per process)."""
    port = free_port()
    log_path = tmp_path / "api.log"
    log = await asyncio.to_thread(log_path.open, "wb")
    proc = await asyncio.create_subprocess_exec(
        *CADRE, "api", env={**service_env, "CADRE_API_PORT": str(port), "CADRE_UI": "true",
                            "PYTHONPATH": str(ROOT)},
        cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL, stdout=log,
        stderr=asyncio.subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http, asyncio.timeout(60):
            while True:
                assert proc.returncode is None, await asyncio.to_thread(log_path.read_text)
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        await proc.wait()
        await asyncio.to_thread(log.close)


async def signed_in(browser: Browser, url: str, email: str, key: str
                    ) -> tuple[BrowserContext, Page]:
    """A new browser context signed in to the chat at `url`."""
    context = await browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    await page.goto("/login")
    await page.fill("#email", email)
    await page.fill("#password", key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#chat-input")).to_be_visible()
    return context, page
