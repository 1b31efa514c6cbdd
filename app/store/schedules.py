"""Schedules' SQL: a user's schedules and their runs (`schedules`, `schedule_runs`), for the
API and `cadre schedules`. The firing side is `app/scheduler.py`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.auth import Principal
from app.problems import Problem
from app.scheduler import next_time
from app.store.tasks import TaskStore
from guardrails.screening import plain_line, screen_task

MAX_SCHEDULES = 50
_Rows = list[dict[str, Any]]  # `list` is also a method name in ScheduleStore

_WITH_LAST_RUN = """s.*, r.occurrence_at AS run_occurrence_at, r.outcome AS run_outcome,
    r.task_id AS run_task_id, r.detail AS run_detail, r.created_at AS run_created_at
    FROM schedules s LEFT JOIN LATERAL (SELECT * FROM schedule_runs WHERE schedule_id = s.id
    ORDER BY occurrence_at DESC LIMIT 1) r ON true"""


class ScheduleStore:
    """One user's view of schedules: another user's is a 404, as everywhere."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db

    async def create(self, who: Principal, *, cron: str, timezone: str, text: str,
                     conversation_id: str | None = None, files: list[str] | None = None,
                     missed: str = "skip", strategy: str = "enqueue") -> dict[str, Any]:
        """A new schedule, first due at the next occurrence after now (422 for a bad cron
        expression, time zone or input; 404 for a conversation or file not theirs)."""
        first = await next_time(cron, timezone, datetime.now(UTC))
        screened = screen_task(text)
        if screened.problem:
            raise Problem("invalid-request", 422, screened.problem)
        files = files or []
        tasks = TaskStore(self.db)
        async with self.db.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT count(*) FROM schedules WHERE user_id = $1::uuid",
                                   who.user_id) >= MAX_SCHEDULES:
                raise Problem("conflict", 409, f"you have {MAX_SCHEDULES} schedules, the most "
                              "one user may have: delete one first")
            if files and not await tasks.owns_files(conn, who.user_id, files):
                raise Problem("not-found", 404, "one of the files was not found")
            if conversation_id is not None:
                conversation = await tasks.lock_conversation(
                    conn, _uuid(conversation_id, "conversation"), who.user_id)
                if conversation is None:
                    raise Problem("not-found", 404, f"conversation {conversation_id} not found")
            else:
                conversation = await tasks.new_conversation(
                    conn, who.user_id, plain_line(f"Scheduled: {text}", 80))
            row = await conn.fetchrow(
                """
                INSERT INTO schedules (user_id, conversation_id, cron, timezone, input, files,
                                       missed, multitask_strategy, next_run_at)
                VALUES ($1::uuid, $2, $3, $4, $5, $6::uuid[], $7, $8, $9) RETURNING id
                """, who.user_id, conversation, cron, timezone, text, files, missed, strategy,
                first)
        return await self.owned(who, str(row["id"]))

    async def list(self, who: Principal) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            f"SELECT {_WITH_LAST_RUN} WHERE s.user_id = $1::uuid ORDER BY s.created_at DESC",
            who.user_id)
        return [_schedule(r) for r in rows]

    async def owned(self, who: Principal, schedule_id: str) -> dict[str, Any]:
        row = await self.db.fetchrow(
            f"SELECT {_WITH_LAST_RUN} WHERE s.id = $1 AND s.user_id = $2::uuid",
            _uuid(schedule_id, "schedule"), who.user_id)
        if row is None:
            raise Problem("not-found", 404, f"schedule {schedule_id} not found")
        return _schedule(row)

    async def runs(self, who: Principal, schedule_id: str, limit: int = 50) -> _Rows:
        await self.owned(who, schedule_id)
        rows = await self.db.fetch(
            "SELECT * FROM schedule_runs WHERE schedule_id = $1 ORDER BY occurrence_at DESC "
            "LIMIT $2", uuid.UUID(schedule_id), limit)
        return [_run(r) for r in rows]

    async def set_paused(self, who: Principal, schedule_id: str, paused: bool) -> dict[str, Any]:
        """Pause, or resume from the next occurrence after now (what fell due while paused
        does not run)."""
        schedule = await self.owned(who, schedule_id)
        following = schedule["next_run_at"] if paused else \
            await next_time(schedule["cron"], schedule["timezone"], datetime.now(UTC))
        await self.db.execute(
            "UPDATE schedules SET paused = $2, next_run_at = $3, updated_at = now() WHERE id = $1",
            uuid.UUID(schedule_id), paused, following)
        return await self.owned(who, schedule_id)

    async def delete(self, who: Principal, schedule_id: str) -> None:
        await self.owned(who, schedule_id)
        await self.db.execute("DELETE FROM schedules WHERE id = $1", uuid.UUID(schedule_id))


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Problem("not-found", 404, f"{what} {value} not found") from None


def _schedule(row: asyncpg.Record) -> dict[str, Any]:
    last = None
    if row["run_occurrence_at"] is not None:
        last = {"occurrence_at": row["run_occurrence_at"], "outcome": row["run_outcome"],
                "task_id": str(row["run_task_id"]) if row["run_task_id"] else None,
                "detail": row["run_detail"], "created_at": row["run_created_at"]}
    return {"id": str(row["id"]), "cron": row["cron"], "timezone": row["timezone"],
            "input": row["input"], "conversation_id": str(row["conversation_id"]),
            "files": [str(f) for f in row["files"]], "missed": row["missed"],
            "multitask_strategy": row["multitask_strategy"], "paused": row["paused"],
            "next_run_at": row["next_run_at"], "last_run": last, "created_at": row["created_at"]}


def _run(row: asyncpg.Record) -> dict[str, Any]:
    return {"occurrence_at": row["occurrence_at"], "outcome": row["outcome"],
            "task_id": str(row["task_id"]) if row["task_id"] else None,
            "detail": row["detail"], "created_at": row["created_at"]}
