"""Schedules fire here: the workers' scheduler turns each due occurrence of a schedule into a
normal task of its owner — their role, limits and quotas, the schedule's conversation and
its `multitask_strategy` — exactly once however many workers tick.

Once: a worker claims a due schedule row (`FOR UPDATE SKIP LOCKED`), and in that one
transaction writes the task, the occurrence's `schedule_runs` row and the schedule's next
time. A worker that dies before the commit leaves nothing (the next tick claims the row
again); after it, the task exists, and the queue message is sent after the commit, its
`sent_at` recorded — a run whose message was never sent is sent by a later tick.

Missed occurrences (no worker ran while they fell due): with `missed = skip` an occurrence
more than `grace` late is recorded as skipped, with `catch_up` one task runs for all of
them; either way the schedule then moves to its first occurrence after now."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from cronsim import CronSim, CronSimError

from app.auth import Principal
from app.problems import Problem
from app.service import Accepted, TaskService

log = logging.getLogger("cadre.scheduler")

Outcome = Literal["submitted", "skipped", "refused"]


def zone(timezone: str) -> ZoneInfo:
    """The IANA time zone, or a 422 naming the problem."""
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise Problem("invalid-request", 422, f"unknown time zone {timezone!r}: use an IANA "
                      "name such as UTC, Europe/Paris or America/New_York") from None


def next_occurrence(cron: str, timezone: str, after: datetime) -> datetime:
    """The first time after `after` that `cron` matches in `timezone`, in UTC; a 422 for a
    bad expression. Daylight saving follows cron's usual rules (cronsim's)."""
    try:
        return next(CronSim(cron, after.astimezone(zone(timezone)))).astimezone(UTC)
    except (CronSimError, StopIteration) as exc:
        raise Problem("invalid-request", 422, f"the cron expression {cron!r} is not valid: "
                      f"{exc or 'it never matches'}") from None


async def next_time(cron: str, timezone: str, after: datetime) -> datetime:
    """`next_occurrence`, off the event loop: a time zone's first use reads its file."""
    return await asyncio.to_thread(next_occurrence, cron, timezone, after)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class Fired:
    schedule_id: str
    occurrence_at: datetime
    outcome: Outcome
    task_id: str | None = None
    detail: str | None = None


@dataclass(kw_only=True)
class Scheduler:
    """Fires due schedules through `service`. `clock` is the time the scheduler believes
    it is (tests pass a fast one)."""

    db: asyncpg.Pool
    service: TaskService
    clock: Callable[[], datetime] = field(default=_now)
    grace: timedelta = timedelta(seconds=60)
    resend_after: timedelta = timedelta(seconds=10)

    async def tick(self) -> list[Fired]:
        """Fire every schedule due now, then send any fired task whose message was lost."""
        fired = []
        while (one := await self.fire_next()) is not None:
            fired.append(one)
        await self.send_unsent()
        return fired

    async def fire_next(self) -> Fired | None:
        """Claim and fire one due schedule; None when none is due (or all are claimed)."""
        now = self.clock()
        accepted: Accepted | None = None
        async with self.db.acquire() as conn, conn.transaction():
            row = await self.claim(conn, now)
            if row is None:
                return None
            fired, accepted = await self._fire(conn, row, now)
        if accepted is not None:
            await self.service.announce(accepted)
            await self.db.execute(
                "UPDATE schedule_runs SET sent_at = now() WHERE schedule_id = $1 AND "
                "occurrence_at = $2", row["id"], fired.occurrence_at)
        log.info("schedule %s, occurrence %s: %s%s", fired.schedule_id,
                 fired.occurrence_at.isoformat(), fired.outcome,
                 f" (task {fired.task_id})" if fired.task_id else f": {fired.detail}")
        return fired

    async def claim(self, conn: asyncpg.Connection, now: datetime) -> asyncpg.Record | None:
        """Lock the schedule most overdue at `now` for this transaction, skipping those
        another worker holds."""
        row: asyncpg.Record | None = await conn.fetchrow(
            """
            SELECT s.*, u.email, u.role FROM schedules s JOIN users u ON u.id = s.user_id
            WHERE NOT s.paused AND s.next_run_at <= $1
            ORDER BY s.next_run_at LIMIT 1 FOR UPDATE OF s SKIP LOCKED
            """, now)
        return row

    async def _fire(self, conn: asyncpg.Connection, row: asyncpg.Record, now: datetime,
                    ) -> tuple[Fired, Accepted | None]:
        occurrence: datetime = row["next_run_at"]
        following = await next_time(row["cron"], row["timezone"], now)
        accepted: Accepted | None = None
        outcome: Outcome
        detail: str | None = None
        if now - occurrence > self.grace and row["missed"] == "skip":
            outcome, detail = "skipped", (f"due at {occurrence.isoformat()}, no worker fired it "
                                          f"until {now.isoformat()} (missed = skip)")
        else:
            who = Principal(user_id=str(row["user_id"]), email=row["email"], role=row["role"],
                            key_id=f"schedule:{row['id']}")
            options: dict[str, Any] = {
                "max_iterations": self.service.default_max_iterations,
                "token_budget": self.service.default_token_budget,
                "schedule_id": str(row["id"])}
            try:
                # A savepoint: a refused run still records itself and moves the schedule on.
                async with conn.transaction():
                    accepted = await self.service.submit_in(
                        conn, who, row["input"], conversation_id=str(row["conversation_id"]),
                        options=options, strategy=row["multitask_strategy"],
                        files=[str(f) for f in row["files"]])
                outcome = "submitted"
            except Problem as problem:
                # Over a quota, the conversation busy under `reject`, a file gone...
                outcome, detail = "refused", problem.detail
        task_id = str(accepted.task["id"]) if accepted is not None else None
        await conn.execute(
            "INSERT INTO schedule_runs (schedule_id, occurrence_at, task_id, outcome, detail) "
            "VALUES ($1, $2, $3::uuid, $4, $5)", row["id"], occurrence, task_id, outcome, detail)
        await conn.execute("UPDATE schedules SET next_run_at = $2, updated_at = now() "
                           "WHERE id = $1", row["id"], following)
        return Fired(schedule_id=str(row["id"]), occurrence_at=occurrence, outcome=outcome,
                     task_id=task_id, detail=detail), accepted

    async def send_unsent(self) -> int:
        """Send the message of each fired task whose firing worker died before sending it
        (older than `resend_after`); a task still waiting behind its conversation is sent
        by the task before it, as usual."""
        sent = 0
        async with self.db.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT r.schedule_id, r.occurrence_at, r.task_id, t.status,
                       t.dispatched_at IS NOT NULL AS dispatched
                FROM schedule_runs r JOIN tasks t ON t.id = r.task_id
                WHERE r.outcome = 'submitted' AND r.sent_at IS NULL
                  AND r.created_at < now() - $1::interval
                ORDER BY r.created_at LIMIT 100 FOR UPDATE OF r SKIP LOCKED
                """, self.resend_after)
            for row in rows:
                if row["status"] == "QUEUED" and row["dispatched"]:
                    await self.service.dispatch(str(row["task_id"]))
                    sent += 1
                await conn.execute(
                    "UPDATE schedule_runs SET sent_at = now() WHERE schedule_id = $1 AND "
                    "occurrence_at = $2", row["schedule_id"], row["occurrence_at"])
        return sent
