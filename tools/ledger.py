"""The idempotency ledger: one `tool_calls` row per (task, tool call). A call whose row says
it finished returns the recorded outcome instead of running again, so a resumed or retried
step never repeats a side effect that completed.

A ledger given a lease (the run's worker and epoch) writes only while that lease holds the task
(`HELD_SQL`): once another worker took the task over, its writes are refused with `LeaseLost`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from tools.contract import ToolContext, ToolOutcome


class LeaseLost(Exception):
    """Another worker holds the task now: this run must write nothing more to it."""


# The condition a write under a lease carries (the lease lives in `tasks`, see
# app/store/tasks.py). FOR SHARE locks the task's row until the write commits, so a takeover
# (which bumps the epoch) waits for a write already under way and every later write sees the
# new epoch. Format with the placeholders of the driver: {task}, {worker}, {epoch}.
HELD_SQL = ("EXISTS (SELECT 1 FROM tasks WHERE id = {task}::uuid AND lease_owner = {worker} "
            "AND epoch = {epoch} FOR SHARE)")


class Ledger:
    def __init__(self, db: asyncpg.Pool, *, lease: tuple[str, int] | None = None) -> None:
        self._db = db
        self._lease = lease

    async def run_once(
        self,
        ctx: ToolContext[Any],
        *,
        tool_name: str,
        arguments: Mapping[str, Any],
        call: Callable[[], Awaitable[ToolOutcome]],
    ) -> tuple[ToolOutcome, bool]:
        """Run `call` unless this call already finished; returns (outcome, replayed)."""
        worker, epoch = self._lease or (None, None)
        row = await self._db.fetchrow(
            f"""
            INSERT INTO tool_calls (idempotency_key, task_id, tool_call_id, tool_name, arguments)
            SELECT $1, $2::uuid, $3, $4, $5::jsonb
            WHERE $6::text IS NULL OR {HELD_SQL.format(task="$2", worker="$6", epoch="$7")}
            ON CONFLICT (idempotency_key) DO UPDATE SET tool_name = EXCLUDED.tool_name
            RETURNING status, result
            """,
            ctx.idempotency_key, ctx.task_id, ctx.tool_call_id, tool_name,
            json.dumps(dict(arguments), default=str), worker, epoch,
        )
        if row is None:
            raise LeaseLost(f"task {ctx.task_id} is no longer leased to {worker} (epoch {epoch})")
        if row["status"] in ("SUCCEEDED", "FAILED") and row["result"] is not None:
            return ToolOutcome.from_json(json.loads(row["result"])), True
        # A STARTED row left by a crashed attempt runs again: a side-effect tool that must
        # never double-act uses ctx.idempotency_key with its receiver (e.g. a Message-ID).
        outcome = await call()
        # The call ran; its outcome is kept only under the lease (the new owner runs a call
        # whose row still says STARTED again, with the same idempotency key).
        updated = await self._db.fetchval(
            f"""
            UPDATE tool_calls SET status = $2, result = $3::jsonb, completed_at = now(),
                   error = CASE WHEN $2 = 'FAILED' THEN $4 END
            WHERE idempotency_key = $1
              AND ($6::text IS NULL OR {HELD_SQL.format(task="$5", worker="$6", epoch="$7")})
            RETURNING true
            """,
            ctx.idempotency_key, "SUCCEEDED" if outcome.ok else "FAILED",
            json.dumps(outcome.to_json()), outcome.content[:2000], ctx.task_id, worker, epoch,
        )
        if not updated:
            raise LeaseLost(f"task {ctx.task_id} is no longer leased to {worker} (epoch {epoch})")
        return outcome, False
