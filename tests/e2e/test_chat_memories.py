"""`/memories` in the chat, in a real browser (Debian's Chromium, Playwright) against
`cadre api` with the UI: the signed-in user sees their memories, newest first, with the
untrusted one marked; Forget deletes one, Forget all the rest; another user's memory is
neither shown nor touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import signed_in, type_and_send
from tests.service import Service
from tools.builtin.memory import MemoryStore
from tools.embeddings import Embedder

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)
OLDER = "Ana's weekly sales report goes to finance@example.com every Friday."
NEWER = "Ana wants charts in metric units."
EVES = "Eve's favourite colour is teal."


async def _user(service: Service, email: str) -> str:
    return str(await service.deps.db.fetchval("SELECT id FROM users WHERE email = $1", email))


async def _command(page: Page, text: str) -> None:
    await expect(page.get_by_text("to see and delete what the agent remembers")).to_be_visible()
    await type_and_send(page, text)


async def test_memories_listed_and_forgotten_from_the_chat(
        service: Service, embedder: Embedder, ui_url: str, browser: Browser) -> None:
    store = MemoryStore(service.deps.db, embedder)
    ana, eve = await _user(service, "ana@example.com"), await _user(service, "eve@example.com")
    await store.add(ana, OLDER)
    await store.add(ana, NEWER, tainted_by=["fetch_url output"])
    await store.add(eve, EVES)

    context, page = await signed_in(browser, ui_url, "ana@example.com", service.key)

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
