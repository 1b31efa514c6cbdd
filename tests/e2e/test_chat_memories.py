"""`/memories` in the chat, in a real browser (Debian's Chromium, Playwright) against
`cadre api` with the UI: the signed-in user sees their memories, newest first, with the
untrusted one marked; Forget deletes one, Forget all the rest; another user's memory is
neither shown nor touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from app.settings import Settings
from app.stack.ports import free_port
from app.tooling import embedder_for
from tests.cli import CADRE
from tests.e2e.conftest import type_and_send
from tests.service import Service
from tools.builtin.memory import MemoryStore

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)
OLDER = "Ana's weekly sales report goes to finance@example.com every Friday."
NEWER = "Ana wants charts in metric units."
EVES = "Eve's favourite colour is teal."


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


async def _user(service: Service, email: str) -> str:
    return str(await service.deps.db.fetchval("SELECT id FROM users WHERE email = $1", email))


async def _command(page: Page, text: str) -> None:
    await expect(page.get_by_text("to see and delete what the agent remembers")).to_be_visible()
    await type_and_send(page, text)


async def test_memories_listed_and_forgotten_from_the_chat(
        service: Service, settings: Settings, ui_url: str, browser: Browser) -> None:
    embedder = embedder_for(settings)
    assert embedder is not None
    await asyncio.to_thread(embedder.connect)
    store = MemoryStore(service.deps.db, embedder)
    ana, eve = await _user(service, "ana@example.com"), await _user(service, "eve@example.com")
    try:
        await store.add(ana, OLDER)
        await store.add(ana, NEWER, tainted_by=["fetch_url output"])
        await store.add(eve, EVES)
    finally:
        await embedder.aclose()

    context = await browser.new_context(base_url=ui_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    await page.goto("/login")
    await page.fill("#email", "ana@example.com")
    await page.fill("#password", service.key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#chat-input")).to_be_visible()

    await _command(page, "/memories")
    await expect(page.get_by_text("Your memories (2, newest first)")).to_be_visible()
    await expect(page.get_by_text(OLDER)).to_be_visible()
    await expect(page.get_by_text(NEWER)).to_be_visible()
    await expect(page.get_by_text("learned with fetch_url output in context")).to_be_visible()
    await expect(page.get_by_text(EVES)).to_have_count(0)
    forget = page.get_by_role("button", name="Forget", exact=True)
    await expect(forget).to_have_count(2)

    # The first Forget is the newest memory's.
    await forget.first.click()
    await expect(page.get_by_text("Forgotten: the agent no longer recalls this memory.")
                 ).to_be_visible()
    await expect(page.get_by_text(NEWER)).to_have_count(0)
    await expect(forget).to_have_count(1)
    assert [m["content"] for m in await store.list(ana)] == [OLDER]

    await page.get_by_role("button", name="Forget all").click()
    await expect(page.get_by_text("Forgotten: 1 memory deleted")).to_be_visible()
    assert await store.list(ana) == []
    assert [m["content"] for m in await store.list(eve)] == [EVES], "Eve's is untouched"

    await _command(page, "/memories")
    await expect(page.get_by_text("The agent remembers nothing about you yet.")).to_be_visible()
    await context.close()
