"""The policy audit log: one entry per decided tool call -- who, which task, which tool, a
digest of the arguments (not the arguments: they may hold personal data), the verdict, and
the rule that gave it. A person's answer to an approval is in `approvals`. Where entries are
written is the task store's business (`AuditSink`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol, assert_never

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


class AuditSink(Protocol):
    """Where each policy decision is written (the task store's `PolicyAudit` in Cadre)."""

    async def record(self, *, task_id: str, tool_call_id: str, role: str, tool: str,
                     arguments: Mapping[str, Any], verdict: Verdict) -> None:
        """Write the decision once: the approve step runs again when a run resumes."""
        ...
