"""The chat UI in a real browser: Debian's Chromium driven by Playwright against `cadre up`
with a scripted model -- what a person does with `make run`, clicks included.

Sign in, upload a CSV and ask for the summary by email; the steps appear live, the chart
shows, the email waits for approval; a reload (and a second tab) still show the buttons; one
click approves, the buttons leave every tab, the answer arrives and the mail is in the
mailbox. Retry after the analysis goes on in a new conversation whose approved email is not
sent again; `/schedules` lists the user's schedules. Share makes a link a stranger can read,
redacted; another user can open neither the conversation nor, once revoked, the link. Stop
cancels a running task. Screenshots of each
step land in the test's output folder."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from graph.testing import FakeOpenAIServer, FakeResponse, completion
from tests.cli import run_cadre
from tests.e2e.conftest import signed_in, type_and_send
from tests.stack import UpProcess, stack_file
from tests.test_csv_email_flow import CSV, csv_flow_model

pytestmark = pytest.mark.slow
TASK = "Analyse this CSV and email the summary with a chart to boss@example.com"
SLOW_TASK = "Count slowly to three."
WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)


def scripted_model(body: dict[str, Any]) -> FakeResponse:
    """The CSV-to-email flow; a task that asks to go slowly keeps the model busy a few
    seconds (time to press Stop)."""
    forced = isinstance(body.get("tool_choice"), dict)
    asked = " ".join(str(m.get("content")) for m in body["messages"] if m["role"] == "user")
    if SLOW_TASK in asked and not forced:
        return FakeResponse(body=completion("One, two, three."), delay=4)
    return csv_flow_model(body)


class Shots:
    """Screenshots, numbered in the order taken, in the test's output folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken = 0
        folder.mkdir(parents=True, exist_ok=True)

    async def __call__(self, page: Page, name: str) -> None:
        self.taken += 1
        await page.screenshot(path=str(self.folder / f"{self.taken:02d}-{name}.png"))


async def _send(page: Page, text: str, attachment: Path | None = None) -> None:
    if attachment is not None:
        await page.set_input_files("#upload-button-input", str(attachment))
        await expect(page.get_by_text(attachment.name).first).to_be_visible()
    await expect(page.get_by_text("Model: scripted")).to_be_visible()  # the session is up
    await type_and_send(page, text)


async def test_the_csv_to_email_task_from_the_chat(start_up: Any, browser: Browser,
                                                   tmp_path: Path, clean_env: dict[str, str]
                                                   ) -> None:
    shots = Shots(tmp_path / "screenshots")
    print(f"\nscreenshots: {shots.folder}")
    csv = tmp_path / "sales.csv"
    csv.write_text(CSV)
    async with FakeOpenAIServer() as model:
        model.responder = scripted_model
        up: UpProcess = await start_up(OPENAI_BASE_URL=model.base_url, CADRE_MODEL="scripted")
        base = str(stack_file(tmp_path)["api_url"])
        assert f"chat UI    {base}/" in up.text
        admin_key = next(line.strip() for line in up.lines if line.strip().startswith("cadre_"))
        made = await run_cadre("keys", "create", "--email", "bob@example.com",
                               env=clean_env, cwd=tmp_path)
        bob_key = re.search(r"cadre_[\w-]+", made.stdout).group(0)  # type: ignore[union-attr]

        # Sign in; the chat says which model answers.
        context, page = await signed_in(browser, base, "admin@localhost", admin_key)
        await expect(page.get_by_text("Model: scripted")).to_be_visible()
        await shots(page, "signed-in")

        # A message with a CSV becomes a task: plan and steps show live, then the chart.
        await _send(page, TASK, csv)
        await expect(page.get_by_text("Analyse the CSV")).to_be_visible()
        await expect(page.get_by_text(re.compile(r"Us(ed|ing) python"))).to_be_visible()
        await shots(page, "steps-live")
        chart = page.locator('img[src*="/ui/artifacts/"]').first
        await expect(chart).to_be_visible()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('img[src*=\"/ui/artifacts/\"]')]"
            ".some(i => i.complete && i.naturalWidth > 100)")
        await chart.scroll_into_view_if_needed()
        await shots(page, "chart")

        # The email waits: tool, arguments and reason, with Approve and Reject.
        approve = page.get_by_role("button", name="Approve")
        await expect(approve).to_be_visible()
        await expect(page.get_by_role("button", name="Reject")).to_be_visible()
        await expect(page.get_by_text("Approval needed:")).to_be_visible()
        await expect(page.get_by_text('"subject": "Sales summary"').first).to_be_visible()
        await shots(page, "approval")
        assert re.search(r"/thread/[0-9a-f-]{36}$", page.url), page.url
        thread = page.url.rsplit("/", 1)[1]

        # A reload, and a second tab, still offer the decision.
        await page.reload()
        await expect(approve).to_be_visible()
        await expect(page.get_by_text("Analyse the CSV")).to_be_visible()
        await shots(page, "reloaded-mid-approval")
        other_tab = await context.new_page()
        await other_tab.goto(f"/thread/{thread}")
        await expect(other_tab.get_by_role("button", name="Approve")).to_be_visible()

        # One click: the buttons leave both tabs, the email goes, the answer arrives.
        await approve.click()
        await expect(page.get_by_text("I emailed the summary with the chart")).to_be_visible()
        await expect(page.get_by_text("Approved.")).to_be_visible()
        await expect(page.get_by_role("button", name="Approve")).to_have_count(0)
        await expect(other_tab.get_by_role("button", name="Approve")).to_have_count(0)
        await expect(other_tab.get_by_text("I emailed the summary with the chart")).to_be_visible()
        await shots(page, "approved-and-answered")
        await other_tab.close()
        async with httpx.AsyncClient(base_url=base) as http:
            [mail] = (await http.get("/dev/mailbox.json")).json()["items"]
        assert mail["subject"] == "Sales summary" and mail["to"] == "boss@example.com"

        # Share: a stranger reads the transcript, redacted, without signing in.
        await page.get_by_role("button", name="Share").click()
        shared = page.get_by_text(re.compile(r"/share/shr_"))
        await expect(shared).to_be_visible()
        link = re.search(r"https?://\S+/share/shr_[\w-]+", await shared.inner_text()).group(0)  # type: ignore[union-attr]
        await shots(page, "share-link")
        stranger = await browser.new_context()
        reader = await stranger.new_page()
        opened = await reader.goto(link)
        assert opened is not None and opened.status == 200
        await expect(reader.get_by_text("I emailed the summary with the chart to [REDACTED:email]")
                     ).to_be_visible()
        assert "boss@example.com" not in await reader.content()
        assert "total=1500 north=810 south=690" in await reader.content()
        await reader.screenshot(path=str(shots.folder / "transcript.png"), full_page=True)

        # Another user sees none of it.
        bob_context, bob = await signed_in(browser, base, "bob@example.com", bob_key)
        await expect(bob.get_by_text("Analyse this CSV")).to_have_count(0)
        refused = await bob.request.get(f"/project/thread/{thread}")
        assert refused.status == 401
        await bob.goto(f"/thread/{thread}")
        await bob.wait_for_timeout(1500)
        await expect(bob.get_by_text("Analyse this CSV")).to_have_count(0)
        await shots(bob, "other-user")

        # Revoked: the link is a 404 for everyone.
        await page.get_by_role("button", name="Revoke link").click()
        await expect(page.get_by_text("The share link is revoked")).to_be_visible()
        gone = await reader.goto(link)
        assert gone is not None and gone.status == 404
        await expect(reader.get_by_text("has been revoked")).to_be_visible()
        assert (await bob.goto(link)).status == 404  # type: ignore[union-attr]
        await shots(reader, "revoked-link")
        await stranger.close()
        await bob_context.close()

        await expect(page.get_by_role("button", name="Retry after send_email")).to_be_visible()
        # Retry after the analysis step: a new conversation goes on from there; the email it
        # proposes again waits for approval and, approved, is not sent a second time.
        retry = page.get_by_role("button", name="Retry after python")
        await expect(retry).to_be_visible()
        await retry.click()
        retried = page.get_by_text("Retrying from step")
        await expect(retried).to_be_visible()
        await shots(page, "retry-from-here")
        fork_link = await page.get_by_role("link", name="open it").get_attribute("href")
        assert fork_link and re.fullmatch(r"/thread/[0-9a-f-]{36}", fork_link), fork_link
        fork_tab = await context.new_page()
        await fork_tab.goto(fork_link)
        await expect(fork_tab.get_by_role("button", name="Approve")).to_be_visible()
        await fork_tab.get_by_role("button", name="Approve").click()
        await expect(fork_tab.get_by_text("I emailed the summary with the chart")).to_be_visible()
        await shots(fork_tab, "retried-and-answered")
        await fork_tab.close()
        async with httpx.AsyncClient(base_url=base) as http:
            assert len((await http.get("/dev/mailbox.json")).json()["items"]) == 1

        # The chat lists the user's schedules.
        async with httpx.AsyncClient(base_url=base, headers={
                "Authorization": f"Bearer {admin_key}"}) as http:
            made_schedule = await http.post("/v1/schedules", json={
                "cron": "0 9 * * MON", "timezone": "Europe/Paris", "input": "Weekly sales."})
            assert made_schedule.status_code == 201, made_schedule.text
        schedules_tab = await context.new_page()
        await schedules_tab.goto("/")
        await _send(schedules_tab, "/schedules")
        await expect(schedules_tab.get_by_text("Your schedules")).to_be_visible()
        await expect(schedules_tab.get_by_text(re.compile(r"\(Europe/Paris\), next .*Weekly sales"))
                     ).to_be_visible()
        await shots(schedules_tab, "schedules")
        await schedules_tab.close()

        # Stop cancels the running task.
        await page.goto("/")
        await expect(page.locator("#chat-input")).to_be_visible()
        await shots(page, "new-chat")
        await _send(page, SLOW_TASK)
        stop = page.locator("#stop-button")
        await expect(stop).to_be_visible()
        await shots(page, "running")
        await stop.click()
        await expect(page.get_by_text("The task was cancelled")).to_be_visible()
        await shots(page, "stopped")
        async with httpx.AsyncClient(base_url=base, headers={
                "Authorization": f"Bearer {admin_key}"}) as http:
            [latest, *_] = (await http.get("/v1/tasks")).json()["items"]
        assert latest["input"] == SLOW_TASK and latest["status"] == "CANCELLED"
        await context.close()

        up.proc.send_signal(signal.SIGTERM)
        assert await up.finish() == 0, up.text
    assert shots.taken >= 10

