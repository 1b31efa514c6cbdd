"""The idempotency ledger: one `tool_calls` row per (task, tool call). A call whose row says
it finished returns the recorded outcome instead of running again, so a resumed or retried
step never repeats a side effect that completed."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from tools.contract import ToolContext, ToolOutcome


class Ledger:
    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def run_once(
        self,
        ctx: ToolContext[Any],
        *,
        tool_name: str,
        arguments: Mapping[str, Any],
        call: Callable[[], Awaitable[ToolOutcome]],
    ) -> tuple[ToolOutcome, bool]:
        """Run `call` unless this call already finished; returns (outcome, replayed)."""
        row = await self._db.fetchrow(
            """
            INSERT INTO tool_calls (idempotency_key, task_id, tool_call_id, tool_name, arguments)
            VALUES ($1, $2::uuid, $3, $4, $5::jsonb)
            ON CONFLICT (idempotency_key) DO UPDATE SET tool_name = EXCLUDED.tool_name
            RETURNING status, result
            """,
            ctx.idempotency_key, ctx.task_id, ctx.tool_call_id, tool_name,
            json.dumps(dict(arguments), default=str),
        )
        if row["status"] in ("SUCCEEDED", "FAILED") and row["result"] is not None:
            return ToolOutcome.from_json(json.loads(row["result"])), True
        # A STARTED row left by a crashed attempt runs again: a side-effect tool that must
        # never double-act uses ctx.idempotency_key with its receiver (e.g. a Message-ID).
        outcome = await call()
        await self._db.execute(
            """
            UPDATE tool_calls SET status = $2, result = $3::jsonb, completed_at = now(),
                   error = CASE WHEN $2 = 'FAILED' THEN $4 END
            WHERE idempotency_key = $1
            """,
            ctx.idempotency_key, "SUCCEEDED" if outcome.ok else "FAILED",
            json.dumps(outcome.to_json()), outcome.content[:2000],
        )
        return outcome, False
