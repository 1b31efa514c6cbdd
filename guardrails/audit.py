"""The policy audit log: one row per decided tool call -- who, which task, which tool, a
digest of the arguments (not the arguments: they may hold personal data), the verdict, and
the rule that gave it. A person's answer to an approval is in `approvals`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, assert_never

import asyncpg

from guardrails.verdict import Allow, Deny, RequireApproval, Verdict


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    canonical = json.dumps(dict(arguments), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def verdict_fields(verdict: Verdict) -> tuple[str, str]:
    """(verdict name, reason or message) of a verdict."""
    if isinstance(verdict, Allow):
        return "allow", ""
    if isinstance(verdict, RequireApproval):
        return "approve", verdict.reason
    if isinstance(verdict, Deny):
        return "deny", verdict.message
    assert_never(verdict)


class AuditLog:
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
