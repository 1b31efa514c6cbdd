"""A team of agents in the chat, in a real browser (Debian's Chromium, Playwright) against
`cadre api` with the UI: with "Team of agents" switched on in the chat settings, a message
becomes a team task, and the worker agent's step shows live ("Working..." while its model is
held), its tool call nested inside it, then the answer; the share page shows the delegation
with the worker's tool step nested under it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from app.settings import Settings
from tests.e2e.conftest import signed_in, type_and_send
from tests.service import Service, running_service

pytestmark = pytest.mark.slow
WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)
PROFILES = '''version = 1

[[agents]]
name = "researcher"
description = "Looks up prices."
instructions = "Find the figure you are asked for with lookup_price."
tools = ["lookup_price"]
'''


@pytest.fixture
async def service(settings: Settings, tmp_path: Path) -> AsyncIterator[Service]:
    """The test service, its worker with a researcher profile (what `ui_url` runs on)."""
    profiles = tmp_path / "agents.toml"
    profiles.write_text(PROFILES)
    async with running_service(settings.model_copy(update={"agents_file": profiles})) as running:
        yield running
        running.model.assert_done()


async def test_explore(service: Service, ui_url: str, browser: Browser, tmp_path: Path) -> None:
    context, page = await signed_in(browser, ui_url, "ana@example.com", service.key)
    await expect(page.get_by_text("to see and delete what the agent remembers")).to_be_visible()
    await page.click("#chat-settings-open-modal")
    await expect(page.locator("#chat-settings")).to_be_visible()
    await asyncio.sleep(1)
    (Path("/tmp/explore/settings.html")).write_text(await page.locator("#chat-settings").evaluate(
        "e => e.outerHTML"))
    await page.screenshot(path="/tmp/explore/settings.png")
    print(tmp_path)
    await context.close()
    _ = type_and_send
