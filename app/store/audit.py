"""The policy audit log in Postgres (`policy_decisions`): one row per decided tool call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from guardrails.audit import arguments_digest, verdict_fields
from guardrails.verdict import Verdict


class PolicyAudit:
    """`guardrails.audit.AuditSink` on Postgres."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self._db = db

    async def record(self, *, task_id: str, tool_call_id: str, role: str, tool: str,
                     arguments: Mapping[str, Any], verdict: Verdict) -> None:
        """Write the decision once: the approve step runs again when a run resumes."""
        name, reason = verdict_fields(verdict)
        await self._db.execute(
            """
            INSERT INTO policy_decisions
                (task_id, user_id, tool_call_id, role, tool, arguments_digest, verdict, rule, reason)
            SELECT $1::uuid, t.user_id, $2, $3, $4, $5, $6, $7, $8 FROM tasks t WHERE t.id = $1::uuid
            ON CONFLICT (task_id, tool_call_id) DO NOTHING
            """,
            task_id, tool_call_id, role, tool, arguments_digest(arguments), name, verdict.rule,
            reason)
