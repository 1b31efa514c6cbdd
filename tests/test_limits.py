"""Rate limits and quotas: over the request rate, the concurrent-task limit or the daily token
quota, each answer is a 429 with `Retry-After` (or a run that fails naming the quota), and the
counts reset as guardrails/limits.py documents."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import websockets

from app.settings import Settings
from app.store import TaskStore
from graph.testing import call, plan, reply, verdict
from guardrails.limits import UserQuotas, seconds_to_midnight
from tests.service import Service, running_service

PROBLEM = "https://cadre.dev/problems/"


@asynccontextmanager
async def _service(settings: Settings, **limits: Any) -> AsyncIterator[Service]:
    async with running_service(settings.model_copy(update=limits)) as service:
        yield service
        service.model.assert_done()


def _too_many(response: httpx.Response, limit: str) -> tuple[int, str]:
    """Assert a 429 problem for `limit`; return its Retry-After and detail."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEM + "rate-limited" and body["status"] == 429
    assert body["limit"] == limit
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    return retry_after, body["detail"]


async def _post(service: Service, text: str, key: str | None = None,
                **body: Any) -> httpx.Response:
    return await service.http.post("/v1/tasks", json={"input": text, **body},
                                   headers=service.auth(key))


async def _task_count(service: Service) -> int:
    return int(await service.deps.db.fetchval("SELECT count(*) FROM tasks"))


async def test_over_the_request_rate_is_429_per_api_key(settings: Settings) -> None:
    async with _service(settings, rate_limit="3/minute") as service:
        for _ in range(3):
            assert (await service.http.get("/v1/tasks", headers=service.auth())).status_code == 200
        refused = await service.http.get("/v1/tasks", headers=service.auth())
        retry_after, detail = _too_many(refused, "requests")
        assert retry_after <= 60
        assert "3 requests per minute per API key" in detail and "CADRE_RATE_LIMIT" in detail

        before = await _task_count(service)
        _too_many(await _post(service, "Anything."), "requests")
        assert await _task_count(service) == before, "a refused request writes nothing"

        url = service.base_url.replace("http://", "ws://") + f"/v1/tasks/{uuid.uuid4()}/ws"
        async with websockets.connect(url, additional_headers=service.auth()) as ws:
            try:
                await asyncio.wait_for(ws.recv(), timeout=5)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 4429
            else:
                raise AssertionError("a socket over the rate got data")

        other = await service.http.get("/v1/tasks", headers=service.auth(service.other_key))
        assert other.status_code == 200, "another API key has its own count"


async def test_request_counts_reset_as_the_window_moves(settings: Settings) -> None:
    async with _service(settings, rate_limit="2/second") as service:
        for _ in range(2):
            assert (await service.http.get("/v1/tasks", headers=service.auth())).status_code == 200
        retry_after, detail = _too_many(
            await service.http.get("/v1/tasks", headers=service.auth()), "requests")
        assert retry_after == 1 and "2 requests per second per API key" in detail
        await asyncio.sleep(retry_after + 0.1)
        for _ in range(2):
            again = await service.http.get("/v1/tasks", headers=service.auth())
            assert again.status_code == 200, "after Retry-After the window has room again"
        _too_many(await service.http.get("/v1/tasks", headers=service.auth()), "requests")


async def test_concurrent_tasks_per_user_and_slots_freed_by_ending_tasks(
        settings: Settings) -> None:
    async with _service(settings, max_concurrent_tasks=2) as service:
        # A waits for approval and B waits behind it in the same conversation: both hold slots.
        service.model.add(plan("Send"), call("send_report", {"to": "a@example.com", "body": "hi"}))
        held = await service.submit("Send hi to a.")
        await service.wait_status(held["id"], "PENDING_APPROVAL")
        queued = await service.submit("Then this.", conversation_id=held["conversation_id"])
        assert (await service.task(queued["id"]))["status"] == "QUEUED"

        before = await _task_count(service)
        retry_after, detail = _too_many(await _post(service, "One more."), "concurrent_tasks")
        assert retry_after == 5
        assert "CADRE_MAX_CONCURRENT_TASKS=2" in detail and "2 tasks" in detail
        assert await _task_count(service) == before, "a refused submission writes nothing"

        service.model.add(plan("Answer"), reply("Theirs."), verdict(True))
        theirs = await _post(service, "Another user's task.", key=service.other_key)
        assert theirs.status_code == 202, "the limit is per user"
        await _wait_ended(service, theirs.json()["id"], "SUCCEEDED", key=service.other_key)

        # Cancelling frees a slot at once.
        await service.http.post(f"/v1/tasks/{queued['id']}/cancel", headers=service.auth())
        service.model.add(plan("Answer"), reply("Done."), verdict(True))
        freed = await service.submit("One more.")
        await service.wait_status(freed["id"], "SUCCEEDED")

        # Finishing frees one too: fill the second slot again, then let the held task end.
        waiting = await service.submit("After the send.", conversation_id=held["conversation_id"])
        _too_many(await _post(service, "Yet another."), "concurrent_tasks")
        service.model.add(reply("Sent."), verdict(True),
                          plan("Answer"), reply("After."), verdict(True))
        approval = (await service.task(held["id"]))["approvals"][0]
        await service.http.post(f"/v1/tasks/{held['id']}/approvals/{approval['id']}",
                                json={"decision": "approve"}, headers=service.auth())
        await service.wait_status(held["id"], "SUCCEEDED")
        await service.wait_status(waiting["id"], "SUCCEEDED")
        service.model.add(plan("Answer"), reply("Yes."), verdict(True))
        last = await _post(service, "Yet another.")
        assert last.status_code == 202, last.text
        await service.wait_status(last.json()["id"], "SUCCEEDED")


async def test_a_submission_racing_for_the_last_slot_waits_then_is_refused(
        settings: Settings) -> None:
    async with _service(settings, max_concurrent_tasks=1) as service:
        user_id = str(await service.deps.db.fetchval(
            "SELECT id FROM users WHERE email = 'ana@example.com'"))
        async with service.deps.db.acquire() as conn, conn.transaction():
            # Another submission is between its check and its commit.
            await UserQuotas(max_concurrent_tasks=1, daily_tokens=10**9,
                             counts=TaskStore(service.deps.db)).admit(conn, user_id)
            await conn.execute(
                "WITH c AS (INSERT INTO conversations (user_id, title) VALUES ($1::uuid, 'x') "
                "RETURNING id) INSERT INTO tasks (user_id, conversation_id, input) "
                "SELECT $1::uuid, id, 'first' FROM c", user_id)
            racing = asyncio.create_task(_post(service, "Second."))
            await asyncio.sleep(0.5)
            assert not racing.done(), "the second submission waits for the first to commit"
        _too_many(await racing, "concurrent_tasks")
        assert await _task_count(service) == 1


async def test_daily_token_quota_refuses_new_tasks_until_midnight_utc(settings: Settings) -> None:
    async with _service(settings, daily_token_quota=1000) as service:
        service.model.add(plan("Answer"), reply("Spent."), verdict(True))
        spent = await service.submit("Spend tokens.")
        await service.wait_status(spent["id"], "SUCCEEDED")
        # The day's recorded usage reaches the quota.
        await service.deps.db.execute(
            "UPDATE tasks SET usage = $2::jsonb WHERE id = $1::uuid", spent["id"],
            json.dumps({"tokens_in": 900, "tokens_out": 100, "model_calls": 3}))

        retry_after, detail = _too_many(await _post(service, "Over."), "daily_tokens")
        assert abs(retry_after - seconds_to_midnight()) <= 5, "Retry-After points at 00:00 UTC"
        assert "CADRE_DAILY_TOKEN_QUOTA" in detail and "00:00 UTC" in detail

        service.model.add(plan("Answer"), reply("Theirs."), verdict(True))
        theirs = await _post(service, "Another user's task.", key=service.other_key)
        assert theirs.status_code == 202, "the quota is per user"
        await _wait_ended(service, theirs.json()["id"], "SUCCEEDED", key=service.other_key)

        # Usage counts on the UTC day it was recorded: yesterday's no longer counts.
        yesterday = datetime.now(UTC).replace(hour=0, minute=0, second=0) - timedelta(minutes=1)
        await service.deps.db.execute(
            "UPDATE tasks SET finished_at = $1, updated_at = $1 WHERE user_id = "
            "(SELECT user_id FROM tasks WHERE id = $2::uuid)", yesterday, spent["id"])
        service.model.add(plan("Answer"), reply("New day."), verdict(True))
        fresh = await _post(service, "A new day.")
        assert fresh.status_code == 202, fresh.text
        await service.wait_status(fresh.json()["id"], "SUCCEEDED")


async def test_a_run_that_reaches_the_daily_quota_fails_naming_it(settings: Settings) -> None:
    async with _service(settings, daily_token_quota=6000) as service:
        # The plan alone uses nearly all of the quota: the next model call would go past it.
        service.model.add(plan("Answer", tokens=(5900, 50)))
        created = await service.submit("Think hard.")
        task = await service.wait_status(created["id"], "FAILED", "SUCCEEDED")
        assert task["status"] == "FAILED"
        assert task["error"]["type"] == "budget_exceeded"
        assert "daily token quota" in task["error"]["message"]
        assert "CADRE_DAILY_TOKEN_QUOTA" in task["error"]["message"]
        assert task["usage"]["tokens_in"] + task["usage"]["tokens_out"] == 5950
        events = await service.sse(created["id"])
        assert [e["data"]["type"] for e in events if e["type"] == "error"] == ["budget_exceeded"]

        # A task's own, smaller budget is reported as that, not as the quota.
        own = await _post(service, "Think less.", key=service.other_key, token_budget=50)
        assert own.status_code == 202
        stopped = await _wait_ended(service, own.json()["id"], "FAILED", key=service.other_key)
        assert stopped["error"]["type"] == "budget_exceeded"
        assert "token budget of 50" in stopped["error"]["message"]
        assert "daily token quota" not in stopped["error"]["message"]


async def test_a_resumed_task_gets_only_what_the_quota_left(settings: Settings) -> None:
    async with _service(settings, daily_token_quota=10_000) as service:
        service.model.add(plan("Send"), call("send_report", {"to": "b@example.com", "body": "x"}))
        held = await service.submit("Send x to b.")
        task = await service.wait_status(held["id"], "PENDING_APPROVAL")
        used = task["usage"]["tokens_in"] + task["usage"]["tokens_out"]
        # While it waits, the user's other work spends all but a sliver of the quota.
        await service.deps.db.execute(
            """
            WITH conv AS (INSERT INTO conversations (user_id, title)
                          SELECT user_id, 'other' FROM tasks WHERE id = $1::uuid RETURNING *)
            INSERT INTO tasks (user_id, conversation_id, input, status, usage, finished_at)
            SELECT user_id, id, 'other', 'SUCCEEDED', $2::jsonb, now() FROM conv
            """, held["id"], json.dumps({"tokens_in": 10_000 - used - 20, "tokens_out": 0}))

        await service.http.post(
            f"/v1/tasks/{held['id']}/approvals/{task['approvals'][0]['id']}",
            json={"decision": "approve"}, headers=service.auth())
        done = await service.wait_status(held["id"], "FAILED", "SUCCEEDED")
        assert len(service.outbox.sent) == 1, "the approved call ran"
        assert done["error"]["type"] == "budget_exceeded", done["error"]
        assert "daily token quota" in done["error"]["message"]
        assert len(service.model.calls) == 2, "no model call past the quota"


async def _wait_ended(service: Service, task_id: str, status: str, *, key: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            task = (await service.http.get(f"/v1/tasks/{task_id}",
                                           headers=service.auth(key))).json()
            if task["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                assert task["status"] == status, task
                return task  # type: ignore[no-any-return]
            await asyncio.sleep(0.1)
