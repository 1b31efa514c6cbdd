"""The task store: every SQL statement on Cadre's run tables — `tasks`, `approvals` (with the
conversations they lock), `agent_logs`, `policy_decisions` and `webhook_deliveries` — lives
in this package. The
graph and the guardrails reach it only through protocols (`graph.recorder.StepRecorder`,
`guardrails.audit.AuditSink`, `guardrails.limits.QuotaCounts`)."""

from app.store.audit import PolicyAudit
from app.store.steps import StepStore, columns, legacy_steps, task_steps
from app.store.tasks import TASK_COLUMNS, TaskStore, approval_row, task_row

__all__ = ["TASK_COLUMNS", "PolicyAudit", "StepStore", "TaskStore", "approval_row", "columns",
           "legacy_steps", "task_row", "task_steps"]
