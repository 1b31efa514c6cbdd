"""A team of agents in the chat, in a real browser (Debian's Chromium, Playwright) against
`cadre api` with the UI: with "Team of agents" switched on in the chat settings, a message
becomes a team task; the worker agent's step shows live, "Working..." while its model is held,
then its tool call nested inside it, then its result and the answer. The share page shows the
delegation, the worker's tool step nested under it and what the worker returned; the reopened
chat (the history) shows the worker's step as it was live."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from app.settings import Settings
from graph.testing import call, reply, team_plan, verdict
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
ASK = "How much is an apple? Ask a researcher."
SUBTASK = "Find the apple price"  # the researcher's calls are told apart by it
FOUND = "An apple costs 1.25 EUR."
ANSWER = "Apples are 1.25 EUR each, says the researcher."
WORKER = "manager/researcher#1"


@pytest.fixture
async def service(settings: Settings, tmp_path: Path) -> AsyncIterator[Service]:
    """The test service, its worker with a researcher profile (what `ui_url` runs on)."""
    profiles = tmp_path / "agents.toml"
    profiles.write_text(PROFILES)
    async with running_service(settings.model_copy(update={"agents_file": profiles})) as running:
        yield running
        running.model.assert_done()


class Held:
    """Holds the model calls numbered `held` (1 = the first) until released: the test sees
    what the chat shows while the call waits."""

    def __init__(self, *held: int) -> None:
        self.calls = 0
        self.arrived = {n: asyncio.Event() for n in held}
        self.released = {n: asyncio.Event() for n in held}

    async def __call__(self) -> None:
        self.calls += 1
        number = self.calls
        if number in self.arrived:
            self.arrived[number].set()
            await self.released[number].wait()

    async def reached(self, number: int) -> None:
        async with asyncio.timeout(WAIT_MS / 1000):
            await self.arrived[number].wait()

    def release(self, number: int) -> None:
        self.released[number].set()

    def release_all(self) -> None:
        for event in self.released.values():
            event.set()


def _header(within: Page | Locator, name: str) -> Locator:
    """A Chainlit step's header ("Using <name>" while it runs, then "Used <name>")."""
    return within.locator(f'[id="step-{name}"]')


def _step(page: Page, name: str) -> Locator:
    """A Chainlit step: the collapsible item under its header, with what is nested in it."""
    return _header(page, name).locator("xpath=ancestor::div[@data-state][1]")


async def _switch_team_on(page: Page) -> None:
    """The chat settings (the composer's gear): "Team of agents" on, confirmed."""
    await page.click("#chat-settings-open-modal")
    dialog = page.locator("#chat-settings")
    switch = dialog.get_by_role("switch", name="Team of agents")
    await expect(switch).to_have_attribute("aria-checked", "false")
    await switch.click()
    await expect(switch).to_have_attribute("aria-checked", "true")
    await dialog.locator("#confirm").click()
    await expect(dialog).to_be_hidden()


async def test_a_team_s_nested_steps_show_live_and_on_the_share_page(
        service: Service, ui_url: str, browser: Browser) -> None:
    # Calls: 1 the manager's plan, 2 and 3 the researcher's (look up, answer), 4 the
    # manager's answer, 5 the check. The researcher's two calls wait for the test.
    held = Held(2, 3)
    service.model.on_call = held
    service.model.add(team_plan((SUBTASK, "researcher", [])))
    service.model.add_for(SUBTASK, call("lookup_price", {"item": "apple"}, id="c1"),
                          reply(FOUND))
    service.model.add(reply(ANSWER), verdict(True, "the price is there"))

    context, page = await signed_in(browser, ui_url, "ana@example.com", service.key)
    worker, tool = _step(page, WORKER), _step(page, "lookup_price")
    try:
        # The session is up once its first message shows (the composer is rebuilt then).
        await expect(page.get_by_text("to see and delete what the agent remembers")
                     ).to_be_visible()
        await _switch_team_on(page)
        await type_and_send(page, ASK)

        # The worker's step, open, its sub-task as input, working: its model is held.
        await held.reached(2)
        await expect(_header(page, WORKER)).to_have_text(f"Using {WORKER}")
        await expect(worker).to_have_attribute("data-state", "open")
        await expect(worker.get_by_text(SUBTASK)).to_be_visible()
        await expect(worker.get_by_text("Working...")).to_be_visible()
        await expect(tool).to_have_count(0)

        # Its lookup runs: the tool step shows inside the worker's, which still works.
        held.release(2)
        await held.reached(3)
        await expect(_header(worker, "lookup_price")).to_be_visible()
        await expect(tool).to_have_count(1)
        await _header(tool, "lookup_price").click()  # tool steps start collapsed
        await expect(tool).to_have_attribute("data-state", "open")
        await expect(tool.get_by_text('"price_eur": 1.25')).to_be_visible()
        await expect(worker.get_by_text("Working...")).to_be_visible()

        # The researcher answers: its step shows the result, then the manager's answer.
        held.release(3)
        await expect(worker.get_by_text(FOUND)).to_be_visible()
        await expect(worker.get_by_text("Working...")).to_have_count(0)
        await expect(page.get_by_text(ANSWER)).to_be_visible()
        await expect(_header(page, WORKER)).to_have_text(f"Used {WORKER}")
    finally:
        held.release_all()  # a failure above must not leave the worker waiting

    [task] = (await service.http.get("/v1/tasks", headers=service.auth())).json()["items"]
    done = await service.wait_status(task["id"], "SUCCEEDED")
    assert done["options"]["mode"] == "team" and done["final_output"] == ANSWER

    # Share from the chat: a stranger's page nests the worker's tool step under its delegation.
    await page.get_by_role("button", name="Share").click()
    shared = page.get_by_text(re.compile(r"/share/shr_"))
    await expect(shared).to_be_visible()
    link = re.search(r"https?://\S+/share/shr_[\w-]+", await shared.inner_text())
    assert link is not None
    stranger = await browser.new_context()
    reader = await stranger.new_page()
    opened = await reader.goto(link.group(0))
    assert opened is not None and opened.status == 200
    await expect(reader.get_by_text(f"Delegated to {WORKER}")).to_be_visible()
    nested = reader.locator(".nested")
    await expect(nested.get_by_text(f"Tool lookup_price · {WORKER}")).to_be_visible()
    await expect(nested.get_by_text('"price_eur": 1.25')).to_be_visible()
    await expect(reader.get_by_text(f"{WORKER} returned")).to_be_visible()
    await expect(reader.get_by_text(ANSWER)).to_be_visible()
    html = await reader.content()
    assert html.index(f"Delegated to {WORKER}") < html.index(f"Tool lookup_price · {WORKER}") \
        < html.index(f"{WORKER} returned")
    await stranger.close()

    # Reopened, the history shows it the same way: the worker's step open, its tool inside.
    await page.reload()
    await expect(page.get_by_text(ANSWER)).to_be_visible()
    await expect(_header(page, WORKER)).to_have_text(f"Used {WORKER}")
    await expect(worker).to_have_attribute("data-state", "open")
    await expect(worker.get_by_text(FOUND)).to_be_visible()
    await expect(_header(worker, "lookup_price")).to_be_visible()
    await context.close()
