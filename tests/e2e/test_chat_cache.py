"""A cached answer in the chat, in a real browser (Debian's Chromium, Playwright) against
`cadre api` with the UI, on a deployment with the semantic task cache on: a reworded
question is answered from the earlier task with a note saying so, and Run again runs it for
real in a new conversation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from app.settings import Settings
from graph.testing import call, plan, reply, verdict
from tests.e2e.conftest import signed_in, type_and_send
from tests.service import Service, running_service

pytestmark = pytest.mark.slow


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    """The test service, with the semantic cache on for every task (what `ui_url` runs on)."""
    async with running_service(settings.model_copy(update={"semantic_cache": True})) as running:
        yield running
        running.model.assert_done()


def _priced(service: Service, answer: str) -> None:
    service.model.add(plan("Look up the apple's price"),
                      call("lookup_price", {"item": "apple"}), reply(answer), verdict(True))


async def _tasks(service: Service) -> list[dict[str, Any]]:
    response = await service.http.get("/v1/tasks", headers=service.auth())
    return response.json()["items"]  # type: ignore[no-any-return]


async def test_a_cached_answer_says_so_and_runs_again(service: Service, ui_url: str,
                                                      browser: Browser) -> None:
    _priced(service, "An apple costs 1.25.")
    first = await service.submit("What is the price of an apple?")
    await service.wait_status(first["id"], "SUCCEEDED")

    context, page = await signed_in(browser, ui_url, "ana@example.com", service.key)
    # The session is up once its first message shows (the composer is rebuilt then).
    await expect(page.get_by_text("to see and delete what the agent remembers")).to_be_visible()
    await type_and_send(page, "How much does an apple cost?")  # nothing scripted: a hit
    await expect(page.get_by_text("An apple costs 1.25.")).to_be_visible()
    await expect(page.get_by_text(f"Answered from the cache: task {first['id']}")).to_be_visible()
    run_again = page.get_by_role("button", name="Run again")
    await expect(run_again).to_be_visible()

    _priced(service, "An apple costs 1.30 now.")
    await run_again.click()
    await expect(page.get_by_text("Running it again, without the cache, in a new "
                                  "conversation")).to_be_visible()
    newest = (await _tasks(service))[0]
    done = await service.wait_status(newest["id"], "SUCCEEDED")
    assert done["input"] == "How much does an apple cost?"
    assert done["final_output"] == "An apple costs 1.30 now." and done["cached_from"] is None
    assert done["options"]["cache"] is False
    assert done["conversation_id"] not in {first["conversation_id"]}
    await context.close()
