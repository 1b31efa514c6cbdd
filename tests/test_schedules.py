"""Schedules: the `/v1/schedules` API, and the workers' scheduler firing each occurrence once
across three schedulers on their own connections, under a fast clock (no sleeping): a
claim that dies mid-way loses nothing, missed occurrences follow the schedule's policy, and
a task whose message was never sent is sent by a later tick."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from app.deps import Deps, open_deps
from app.events import EventLog
from app.keys import create_key
from app.scheduler import Scheduler
from app.service import TaskService
from app.settings import Settings
from tests.cli import run_cadre
from tests.service import Service

BASE = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)  # a Monday
ZONE = ZoneInfo("Europe/Paris")


async def test_schedules_api_and_another_users_schedule_is_a_404(service: Service) -> None:
    http, auth = service.http, service.auth()
    bad = await http.post("/v1/schedules", json={"cron": "every monday", "input": "x"},
                          headers=auth)
    assert bad.status_code == 422 and "cron expression" in bad.json()["detail"]
    bad = await http.post("/v1/schedules", json={"cron": "0 9 * * MON", "input": "x",
                                                 "timezone": "Mars/Olympus"}, headers=auth)
    assert bad.status_code == 422 and "time zone" in bad.json()["detail"]

    made = await http.post("/v1/schedules", headers=auth, json={
        "cron": "0 9 * * MON", "timezone": "Europe/Paris", "input": "Summarise last week."})
    assert made.status_code == 201, made.text
    schedule = made.json()
    next_run = datetime.fromisoformat(schedule["next_run_at"])
    assert next_run.astimezone(ZONE).weekday() == 0 and next_run.astimezone(ZONE).hour == 9
    assert schedule["paused"] is False and schedule["last_run"] is None
    listed = (await http.get("/v1/schedules", headers=auth)).json()["items"]
    assert [s["id"] for s in listed] == [schedule["id"]]

    paused = await http.post(f"/v1/schedules/{schedule['id']}/pause", headers=auth)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    resumed = await http.post(f"/v1/schedules/{schedule['id']}/resume", headers=auth)
    assert resumed.json()["paused"] is False

    other = service.auth(service.other_key)
    for method, path in (("GET", ""), ("GET", "/runs"), ("POST", "/pause"), ("DELETE", "")):
        answer = await http.request(method, f"/v1/schedules/{schedule['id']}{path}",
                                    headers=other)
        assert answer.status_code == 404, (method, path)
    assert (await http.get("/v1/schedules", headers=other)).json()["items"] == []

    assert (await http.delete(f"/v1/schedules/{schedule['id']}", headers=auth)).status_code == 204
    assert (await http.get(f"/v1/schedules/{schedule['id']}", headers=auth)).status_code == 404


@dataclass
class Clock:
    now: datetime = BASE

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Fleet:
    deps: Deps
    schedulers: list[Scheduler]
    clock: Clock
    user_id: str

    async def schedule(self, cron: str = "*/5 * * * *", **columns: Any) -> str:
        conv = await self.deps.db.fetchval(
            "INSERT INTO conversations (user_id) VALUES ($1::uuid) RETURNING id", self.user_id)
        values = {"missed": "skip", "multitask_strategy": "enqueue", **columns}
        return str(await self.deps.db.fetchval(
            "INSERT INTO schedules (user_id, conversation_id, cron, timezone, input, missed, "
            "multitask_strategy, next_run_at) VALUES ($1::uuid, $2, $3, 'UTC', 'Report.', $4, "
            "$5, $6) RETURNING id", self.user_id, conv, cron, values["missed"],
            values["multitask_strategy"], self.clock.now))

    async def tick_all(self) -> None:
        await asyncio.gather(*(s.tick() for s in self.schedulers))

    async def runs(self, schedule_id: str) -> list[asyncpg.Record]:
        return list(await self.deps.db.fetch(
            "SELECT * FROM schedule_runs WHERE schedule_id = $1::uuid ORDER BY occurrence_at",
            schedule_id))

    async def tasks(self) -> list[asyncpg.Record]:
        return list(await self.deps.db.fetch("SELECT * FROM tasks ORDER BY created_at"))


@asynccontextmanager
async def fleet(settings: Settings, size: int = 3) -> AsyncIterator[Fleet]:
    """`size` schedulers, each on its own connection pool (as separate workers would be),
    sharing one fast clock."""
    clock = Clock()
    async with open_deps(settings) as deps, AsyncExitStack() as stack:
        await create_key(deps.db, email="sam@example.com", role="analyst")
        user_id = str(await deps.db.fetchval("SELECT id FROM users"))
        schedulers = []
        for _ in range(size):
            pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
            stack.push_async_callback(pool.close)
            schedulers.append(Scheduler(db=pool, service=TaskService(
                db=pool, queue=deps.queue, events=EventLog(deps.redis)), clock=clock))
        yield Fleet(deps=deps, schedulers=schedulers, clock=clock, user_id=user_id)


async def test_each_occurrence_fires_once_across_three_schedulers(settings: Settings) -> None:
    async with fleet(settings) as f:
        schedule = await f.schedule()
        for step in range(6):
            f.clock.now = BASE + timedelta(minutes=5 * step, seconds=step % 3)
            await f.tick_all()
            await f.tick_all()  # a second round at the same time fires nothing more
        runs = await f.runs(schedule)
        assert [r["occurrence_at"] for r in runs] == [BASE + timedelta(minutes=5 * n)
                                                      for n in range(6)]
        assert {r["outcome"] for r in runs} == {"submitted"}
        assert all(r["sent_at"] is not None for r in runs)
        tasks = await f.tasks()
        assert len(tasks) == 6 and {str(t["id"]) for t in tasks} == {str(r["task_id"])
                                                                    for r in runs}
        assert len({t["conversation_id"] for t in tasks}) == 1, "one conversation, in order"
        # The first is sent to the queue; the others wait their turn behind it.
        assert [t["dispatched_at"] is not None for t in tasks] == [True] + [False] * 5


async def test_a_claim_that_dies_mid_way_loses_nothing(settings: Settings) -> None:
    async with fleet(settings) as f:
        schedule = await f.schedule()
        dying = await asyncpg.connect(settings.database_url)
        transaction = dying.transaction()
        await transaction.start()
        assert await f.schedulers[0].claim(dying, BASE) is not None  # claimed, then killed
        await f.tick_all()
        assert await f.runs(schedule) == [], "the claimed row is skipped, not fired twice"
        dying.terminate()  # the worker dies before its commit
        await f.tick_all()
        (run,) = await f.runs(schedule)
        assert run["outcome"] == "submitted" and run["occurrence_at"] == BASE
        assert len(await f.tasks()) == 1


@pytest.mark.parametrize(("missed", "outcome", "tasks"), [("skip", "skipped", 0),
                                                          ("catch_up", "submitted", 1)])
async def test_missed_occurrences_follow_the_policy(settings: Settings, missed: str,
                                                    outcome: str, tasks: int) -> None:
    async with fleet(settings) as f:
        schedule = await f.schedule(missed=missed)
        f.clock.now = BASE + timedelta(hours=1, minutes=2)  # twelve occurrences missed
        await f.tick_all()
        await f.tick_all()
        (run,) = await f.runs(schedule)
        assert run["occurrence_at"] == BASE and run["outcome"] == outcome
        assert len(await f.tasks()) == tasks
        following = await f.deps.db.fetchval("SELECT next_run_at FROM schedules")
        assert following == BASE + timedelta(hours=1, minutes=5), "on from the next one"


async def test_a_run_still_going_under_reject_is_refused(settings: Settings) -> None:
    async with fleet(settings) as f:
        schedule = await f.schedule(multitask_strategy="reject")
        await f.tick_all()
        f.clock.now = BASE + timedelta(minutes=5)
        await f.tick_all()
        first, second = await f.runs(schedule)
        assert first["outcome"] == "submitted"
        assert second["outcome"] == "refused" and "busy" in second["detail"]
        assert len(await f.tasks()) == 1


async def test_a_fired_task_whose_message_was_lost_is_sent_later(settings: Settings) -> None:
    async with fleet(settings, size=1) as f:
        await f.schedule()
        (scheduler,) = f.schedulers
        # Fire, commit, and die before sending: the task exists, its message does not.
        async with scheduler.db.acquire() as conn, conn.transaction():
            row = await scheduler.claim(conn, BASE)
            assert row is not None
            await scheduler._fire(conn, row, BASE)
        assert await _queued(f.deps) == 0
        scheduler.resend_after = timedelta(0)
        assert await scheduler.send_unsent() == 1
        assert await _queued(f.deps) == 1
        assert await scheduler.send_unsent() == 0, "sent once"


async def _queued(deps: Deps) -> int:
    attributes = await deps.queue.attributes()
    return int(attributes.get("ApproximateNumberOfMessages", 0))


async def test_cadre_schedules_commands(service_env: dict[str, str], settings: Settings) -> None:
    async with open_deps(settings) as deps:
        await create_key(deps.db, email="cli@example.com", role="analyst")
    who = ["--email", "cli@example.com"]
    made = await run_cadre("schedules", "create", *who, "--cron", "30 8 * * *",
                           "--timezone", "Asia/Tokyo", "--input", "Morning digest.",
                           env=service_env)
    assert made.code == 0, made.stderr
    schedule_id = made.stdout.split()[0]
    assert "30 8 * * * (Asia/Tokyo)" in made.stdout and "Morning digest." in made.stdout
    listed = await run_cadre("schedules", "list", *who, env=service_env)
    assert listed.stdout.startswith(schedule_id)
    paused = await run_cadre("schedules", "pause", schedule_id, *who, env=service_env)
    assert paused.code == 0 and "paused" in paused.stdout
    bad = await run_cadre("schedules", "create", *who, "--cron", "61 * * * *", "--input", "x",
                          env=service_env)
    assert bad.code == 2 and bad.stderr.startswith("cadre: error: the cron expression")
    gone = await run_cadre("schedules", "delete", schedule_id, *who, env=service_env)
    assert gone.code == 0
    again = await run_cadre("schedules", "delete", schedule_id, *who, env=service_env)
    assert again.code == 2 and "not found" in again.stderr
