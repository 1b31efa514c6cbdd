"""Step records: every node and tool step lands in `agent_logs` (and, through other
recorders, in the live event stream)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    task_id: str
    step_number: int
    node: str
    thought: str | None = None
    tool_name: str | None = None
    tool_input: Any = None
    tool_output: Any = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: int | None = None
    # Structured facts for live views (the plan's steps, a call's id); not stored in agent_logs.
    detail: dict[str, Any] | None = None


class StepRecorder(Protocol):
    async def record(self, entry: StepRecord) -> None: ...


class PostgresRecorder:
    """Writes each step to `agent_logs`, the history that never depends on Redis."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def record(self, entry: StepRecord) -> None:
        await self._db.execute(
            """
            INSERT INTO agent_logs (task_id, step_number, node, thought, tool_name, tool_input,
                                    tool_output, tokens_in, tokens_out, latency_ms)
            VALUES ($1::uuid, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10)
            """,
            entry.task_id, entry.step_number, entry.node, entry.thought, entry.tool_name,
            _json(entry.tool_input), _json(entry.tool_output), entry.tokens_in, entry.tokens_out,
            entry.latency_ms,
        )


class Recorders:
    """Fans one step out to several recorders, in order."""

    def __init__(self, *recorders: StepRecorder) -> None:
        self._recorders = recorders

    async def record(self, entry: StepRecord) -> None:
        for recorder in self._recorders:
            await recorder.record(entry)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, ensure_ascii=False)
