"""What the chat says in words: which model answers (loudly when it is the tiny offline one),
why a task failed, what an approval asks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from app.settings import Settings
from app.ui import render
from app.ui.render import approval_text, error_text, model_notice, schedules_text


async def _settings(**fields: Any) -> Settings:
    return await asyncio.to_thread(Settings.of, **fields)  # reads .env: not on the loop


async def test_the_chat_names_the_model_and_warns_about_the_offline_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CADRE_MODEL", "CADRE_OFFLINE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    offline = model_notice(await _settings(offline_model=True, model="smollm2-135m-instruct",
                                           openai_base_url="http://127.0.0.1:8011/v1"))
    assert "Warning: this is the tiny offline model" in offline
    assert "smollm2-135m-instruct" in offline and "OPENAI_API_KEY" in offline
    real = model_notice(await _settings(openai_api_key="sk-test", model="gpt-4.1-mini"))
    assert real == "Model: `gpt-4.1-mini` at https://api.openai.com/v1."
    assert "No model is configured" in model_notice(await _settings())


async def test_failures_and_approvals_read_plainly() -> None:
    assert error_text({"type": "cancelled", "message": "the task was cancelled"},
                      "CANCELLED") == "The task was cancelled."
    budget = error_text({"type": "budget_exceeded", "message": "used 200000 tokens"}, "FAILED")
    assert budget == "**The task ran out of budget** (budget_exceeded): used 200000 tokens"
    assert "no reason was recorded" in error_text(None, "FAILED")
    asked = approval_text("send_email", {"to": ["a@example.com"]}, "it sends mail")
    assert "`send_email`" in asked and '"a@example.com"' in asked and "it sends mail" in asked
    assert "**Rejected**: not now" in approval_text("send_email", {}, "", status="REJECTED",
                                                     comment="not now")
    assert "**Approved.**" in approval_text("send_email", {}, "", status="APPROVED")


def test_a_task_links_to_its_trace_only_when_a_viewer_is_configured() -> None:
    context = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    assert render.trace_link("http://127.0.0.1:6006/redirects/traces/{trace_id}", context) == (
        "\n\n[Trace of this task](http://127.0.0.1:6006/redirects/traces/"
        "4bf92f3577b34da6a3ce929d0e0e4736)")
    assert render.trace_link(None, context) == ""
    assert render.trace_link("http://viewer/{trace_id}", None) == "", "an untraced task"
    assert render.trace_link("http://viewer/{trace_id}", {"traceparent": "garbage"}) == ""


def test_schedules_read_plainly() -> None:
    assert "no schedules" in schedules_text([])
    text = schedules_text([
        {"cron": "0 9 * * MON", "timezone": "Europe/Paris", "paused": False,
         "next_run_at": datetime(2030, 1, 7, 8, 0, tzinfo=UTC), "input": "Weekly orders.",
         "last_run": {"outcome": "submitted"}},
        {"cron": "@daily", "timezone": "UTC", "paused": True,
         "next_run_at": datetime(2030, 1, 8, tzinfo=UTC), "input": "Daily digest.",
         "last_run": None}])
    assert "- `0 9 * * MON` (Europe/Paris), next 2030-01-07 08:00 UTC; last run submitted: " \
           "Weekly orders." in text
    assert "- `@daily` (UTC), paused: Daily digest." in text
