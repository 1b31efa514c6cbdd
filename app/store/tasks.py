"""Tasks, their approvals, and the conversation locks that order them: every statement on
`tasks` and `approvals`. Methods that must run inside a caller's transaction take its
connection; the rest use the pool."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg

from app.store.webhooks import Db, WebhookStore
from graph.approvals import ApprovalDecision, asking_agent
from graph.fence import BOUNDED_SQL
from graph.status import ACTIVE, TaskStatus

TASK_COLUMNS = """id, user_id, conversation_id, status, input, final_output, error, usage, options,
                  created_at, updated_at, started_at, finished_at, cancel_requested_at,
                  trace_context"""


def task_row(row: asyncpg.Record) -> dict[str, Any]:
    """A `tasks` row as plain data (ids as text, JSON columns decoded)."""
    task = dict(row)
    for key in ("id", "user_id", "conversation_id"):
        if key in task:
            task[key] = str(task[key])
    for key in ("error", "usage", "options", "trace_context"):
        if isinstance(task.get(key), str):
            task[key] = json.loads(task[key])
    if "options" in task:
        task["cached_from"] = (task["options"] or {}).get("cached_from")
    return task


def task_options(task: Any) -> dict[str, Any]:
    """A `tasks` row's options, whether its JSON column came decoded or not."""
    options = task["options"]
    return options if isinstance(options, dict) else json.loads(options or "{}")


def approval_row(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "task_id": str(row["task_id"]), "tool_call_id": row["tool_call_id"],
        "agent": asking_agent(row["tool_call_id"]),
        "tool": row["tool_name"], "arguments": json.loads(row["tool_input"]),
        "risk": row["risk"], "reason": row["reason"], "status": row["status"],
        "comment": row["comment"], "created_at": row["created_at"],
        "decided_at": row["decided_at"],
    }


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


class TaskStore:
    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db

    # -- conversations -------------------------------------------------------------------

    async def new_conversation(self, conn: Db, user_id: Any, title: str) -> Any:
        return await conn.fetchval(
            "INSERT INTO conversations (user_id, title) VALUES ($1::uuid, $2) RETURNING id",
            user_id, title)

    async def lock_conversation(self, conn: Db, conversation: Any,
                                user_id: Any | None = None) -> Any:
        """Lock the conversation's row (its tasks run one at a time); None when it does not
        exist, or is not `user_id`'s."""
        return await conn.fetchval(
            "SELECT id FROM conversations WHERE id = $1::uuid "
            "AND ($2::uuid IS NULL OR user_id = $2::uuid) FOR UPDATE", conversation, user_id)

    async def touch_conversation(self, conn: Db, conversation: Any) -> None:
        await conn.execute("UPDATE conversations SET updated_at = now() WHERE id = $1", conversation)

    async def open_conversation(self, conversation: uuid.UUID, user_id: str, title: str) -> Any:
        """Create the conversation if it does not exist yet; returns its owner. Two
        statements: a row another transaction inserted meanwhile (Chainlit names new threads
        concurrently) is invisible to the snapshot of the INSERT that skipped it."""
        await self.db.execute(
            "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2::uuid, $3) "
            "ON CONFLICT (id) DO NOTHING", conversation, user_id, title)
        return await self.db.fetchval("SELECT user_id FROM conversations WHERE id = $1",
                                      conversation)

    async def owned_conversation(self, conversation: Any, user_id: Any) -> Any:
        return await self.db.fetchval(
            "SELECT id FROM conversations WHERE id = $1 AND user_id = $2", conversation, user_id)

    async def conversations(self, user_id: str | None, *, search: str | None,
                            after: str | None, limit: int) -> list[asyncpg.Record]:
        """The user's conversations, most recently active first, after the one `after`;
        `search` (an ILIKE pattern) matches a title or the text of one of its tasks."""
        return list(await self.db.fetch(
            """
            SELECT c.id, c.title, c.created_at, c.updated_at, c.user_id, u.email
            FROM conversations c JOIN users u ON u.id = c.user_id
            WHERE c.user_id = $1::uuid
              AND ($2::text IS NULL OR c.title ILIKE $2 OR EXISTS (
                   SELECT 1 FROM tasks t WHERE t.conversation_id = c.id AND t.input ILIKE $2))
              AND ($3::uuid IS NULL OR (c.updated_at, c.id) < (
                   SELECT updated_at, id FROM conversations WHERE id = $3::uuid))
            ORDER BY c.updated_at DESC, c.id DESC LIMIT $4
            """, user_id, search, after, limit))

    async def conversation_busy(self, conn: Db, conversation: Any) -> bool:
        """Whether a task of the conversation is unfinished."""
        return bool(await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE conversation_id = $1 "
            "AND status = ANY($2::text[]))", conversation, sorted(ACTIVE)))

    # -- tasks ---------------------------------------------------------------------------

    async def active_in_conversation(self, conn: Db, conversation: Any) -> list[asyncpg.Record]:
        return list(await conn.fetch(
            "SELECT id, status, dispatched_at FROM tasks WHERE conversation_id = $1 "
            "AND status = ANY($2::text[]) ORDER BY created_at", conversation, sorted(ACTIVE)))

    async def insert(self, conn: Db, *, user_id: Any, conversation: Any, text: str,
                     options: dict[str, Any], trace: dict[str, str] | None,
                     status: TaskStatus = TaskStatus.QUEUED) -> dict[str, Any]:
        return task_row(await conn.fetchrow(
            f"INSERT INTO tasks (user_id, conversation_id, input, options, trace_context, status, "
            f"started_at) VALUES ($1::uuid, $2, $3, $4::jsonb, $5::jsonb, $6, "
            f"CASE WHEN $6 = 'RUNNING' THEN now() END) RETURNING {TASK_COLUMNS}",
            user_id, conversation, text, json.dumps(options), _json(trace or None), status))

    async def owns_files(self, conn: Db, user_id: Any, files: list[str]) -> bool:
        """Whether every one of `files` is an upload of `user_id`'s."""
        owned = await conn.fetchval(
            "SELECT count(*) FROM files WHERE id = ANY($1::uuid[]) AND user_id = $2::uuid",
            files, user_id)
        return bool(owned == len(set(files)))

    async def attach_files(self, conn: Db, task_id: Any, user_id: Any,
                           files: list[str]) -> bool:
        """Attach the user's files to the task; False when one of them is not theirs."""
        if not await self.owns_files(conn, user_id, files):
            return False
        await conn.executemany(
            "INSERT INTO task_files (task_id, file_id) VALUES ($1::uuid, $2::uuid) "
            "ON CONFLICT DO NOTHING", [(task_id, f) for f in files])
        return True

    async def next_to_dispatch(self, conn: Db, conversation: Any) -> str | None:
        """Mark and return the conversation's next task to send, if none is in flight.
        The caller holds the conversation's row lock."""
        busy = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE conversation_id = $1 AND "
            "((status = 'QUEUED' AND dispatched_at IS NOT NULL) OR status = 'RUNNING' "
            "OR status = 'PENDING_APPROVAL'))", conversation)
        if busy:
            return None
        task_id = await conn.fetchval(
            "UPDATE tasks SET dispatched_at = now() WHERE id = (SELECT id FROM tasks "
            "WHERE conversation_id = $1 AND status = 'QUEUED' AND dispatched_at IS NULL "
            "ORDER BY created_at LIMIT 1) RETURNING id", conversation)
        return str(task_id) if task_id else None

    async def delivery_of(self, task_id: str) -> tuple[int, dict[str, str]]:
        """What a new message for the task carries: its delivery count and trace context."""
        row = await self.db.fetchrow(
            "SELECT delivery, trace_context FROM tasks WHERE id = $1::uuid", task_id)
        if row is None:
            return 0, {}
        trace = row["trace_context"]
        return int(row["delivery"]), (json.loads(trace) if trace else None) or {}

    async def conversation_of(self, conn: Db, task_id: str) -> Any:
        return await conn.fetchval("SELECT conversation_id FROM tasks WHERE id = $1::uuid",
                                   task_id)

    async def orphans(self) -> list[str]:
        """Dispatched tasks no live worker holds."""
        rows = await self.db.fetch(
            "SELECT id FROM tasks WHERE ((status = 'QUEUED' AND dispatched_at IS NOT NULL) "
            "OR status = 'RUNNING') AND (lease_owner IS NULL OR lease_expires_at < now())")
        return [str(r["id"]) for r in rows]

    async def get(self, task_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1::uuid",
                                     task_id)
        return task_row(row) if row else None

    async def owned(self, task_id: uuid.UUID, user_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2::uuid",
            task_id, user_id)
        return task_row(row) if row else None

    async def page(self, user_id: str, *, status: str | None, after: tuple[datetime, uuid.UUID]
                   | None, limit: int) -> list[dict[str, Any]]:
        after_time, after_id = after or (None, None)
        rows = await self.db.fetch(
            f"""SELECT {TASK_COLUMNS} FROM tasks WHERE user_id = $1::uuid
                AND ($2::text IS NULL OR status = $2)
                AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $5""",
            user_id, status, after_time, after_id, limit)
        return [task_row(r) for r in rows]

    async def active_of(self, conversation: uuid.UUID, user_id: str) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE conversation_id = $1 AND user_id = $2::uuid "
            f"AND status = ANY($3::text[]) ORDER BY created_at, id",
            conversation, user_id, sorted(ACTIVE))
        return [task_row(r) for r in rows]

    async def copy_history(self, source: str, target: str, upto_step: int) -> None:
        """A fork's start: the original's steps up to `upto_step`, and its finished tool
        calls (so the fork replays, never repeats, a call the original made)."""
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO agent_logs (task_id, step_number, node, thought, tool_name,
                    tool_input, tool_output, tokens_in, tokens_out, latency_ms, kind, agent,
                    record, created_at)
                SELECT $2::uuid, step_number, node, thought, tool_name, tool_input,
                       tool_output, tokens_in, tokens_out, latency_ms, kind, agent, record,
                       created_at
                FROM agent_logs WHERE task_id = $1::uuid AND step_number <= $3
                ON CONFLICT (task_id, step_number) DO NOTHING
                """, source, target, upto_step)
            await conn.execute(
                """
                INSERT INTO tool_calls (idempotency_key, task_id, tool_call_id, tool_name,
                    arguments, status, result, error, created_at, completed_at)
                SELECT $2 || ':' || tool_call_id, $2::uuid, tool_call_id, tool_name, arguments,
                       status, result, error, created_at, completed_at
                FROM tool_calls WHERE task_id = $1::uuid AND status IN ('SUCCEEDED', 'FAILED')
                ON CONFLICT (idempotency_key) DO NOTHING
                """, source, target)

    async def last_step(self, task_id: Any) -> int:
        return int(await self.db.fetchval(
            "SELECT coalesce(max(step_number), 0) FROM agent_logs WHERE task_id = $1::uuid",
            task_id))

    async def conversation_tasks(self, conversation: uuid.UUID) -> list[asyncpg.Record]:
        return list(await self.db.fetch(
            "SELECT id, status, input, final_output, error, created_at, finished_at, "
            "trace_context, options FROM tasks WHERE conversation_id = $1 "
            "ORDER BY created_at, id",
            conversation))

    async def request_cancel(self, conn: Db, task_id: Any, reason: str) -> bool:
        """Ask the task to stop; returns True when it was cancelled right away (it was not
        running: queued behind its conversation, or waiting for a person)."""
        row = await conn.fetchrow(
            "UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, now()), "
            "updated_at = now() WHERE id = $1::uuid AND status = ANY($2::text[]) "
            "RETURNING status, dispatched_at", task_id, sorted(ACTIVE))
        if row is None:
            return False
        if row["status"] == TaskStatus.PENDING_APPROVAL or (row["status"] == TaskStatus.QUEUED
                                                   and row["dispatched_at"] is None):
            await conn.execute(
                "UPDATE tasks SET status = 'CANCELLED', finished_at = now(), updated_at = now(), "
                "error = $2::jsonb, lease_owner = NULL WHERE id = $1::uuid", task_id,
                json.dumps({"type": "cancelled", "message": reason}))
            await conn.execute(
                "UPDATE approvals SET status = 'REJECTED', comment = $2, decided_at = now() "
                "WHERE task_id = $1::uuid AND status = 'PENDING'", task_id, reason)
            await WebhookStore(conn).task_ended(task_id, TaskStatus.CANCELLED, output=None,
                                                error={"type": "cancelled", "message": reason})
            return True
        return False

    async def cancel_requested(self, task_id: str) -> bool:
        return bool(await self.db.fetchval(
            "SELECT cancel_requested_at IS NOT NULL FROM tasks WHERE id = $1::uuid", task_id))

    async def set_status(self, task_id: str, status: TaskStatus) -> None:
        await self.db.execute("UPDATE tasks SET status = $2, updated_at = now() "
                              "WHERE id = $1::uuid", task_id, status)

    async def record_end(self, task_id: str, status: TaskStatus, *, output: str | None,
                         error: dict[str, Any] | None, usage: dict[str, Any] | None) -> None:
        """The end of a task run outside the workers (`cadre run`)."""
        await self.db.execute(
            "UPDATE tasks SET status = $2, final_output = $3, error = $4::jsonb, usage = $5::jsonb, "
            "finished_at = now(), updated_at = now() WHERE id = $1::uuid",
            task_id, status, output, _json(error), _json(usage))

    async def reopen_undelivered(self, task_ids: list[str]) -> int:
        """Tasks that failed for lack of deliveries become QUEUED again (`cadre dlq redrive`)."""
        result = await self.db.execute(
            "UPDATE tasks SET status = 'QUEUED', error = NULL, finished_at = NULL, "
            "dispatched_at = now(), updated_at = now() WHERE id = ANY($1::uuid[]) "
            "AND status = 'FAILED' AND error->>'type' = 'delivery_failed'", task_ids)
        return int(result.split()[-1])

    async def counts_by_status(self) -> dict[str, int]:
        return dict(await self.db.fetch("SELECT status, count(*) FROM tasks GROUP BY status"))

    # -- a worker's lease ------------------------------------------------------------------

    async def take_lease(self, task_id: str, worker: str, seconds: float,
                         delivery: int | None) -> asyncpg.Record | None:
        """Start or continue the task on `worker` for `seconds` under a new epoch, unless
        another worker's lease still runs, the task is not runnable, or the message
        (`delivery`) is older than the task's newest."""
        return await self.db.fetchrow(
            """
            UPDATE tasks SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
                   epoch = epoch + 1, attempts = attempts + 1,
                   started_at = coalesce(started_at, now()), status = 'RUNNING', updated_at = now()
            WHERE id = $1::uuid AND status IN ('QUEUED', 'RUNNING')
              AND (lease_owner IS NULL OR lease_expires_at < now() OR lease_owner = $2)
              AND ($4::bigint IS NULL OR delivery <= $4)
            RETURNING id, conversation_id, input, options, cancel_requested_at, user_id, usage,
                      epoch
            """, task_id, worker, seconds, delivery)

    async def renew_leases(self, worker: str, held: list[tuple[str, int]],
                           seconds: float) -> set[str]:
        """Renew the worker's leases on these (task, epoch) pairs in one statement; returns
        the tasks whose lease it still held."""
        rows = await self.db.fetch(
            """
            UPDATE tasks t SET lease_expires_at = now() + make_interval(secs => $3)
            FROM unnest($2::uuid[], $4::bigint[]) AS h(id, epoch)
            WHERE t.id = h.id AND t.epoch = h.epoch AND t.lease_owner = $1
              AND t.status = 'RUNNING'
            RETURNING t.id
            """, worker, [t for t, _ in held], seconds, [e for _, e in held])
        return {str(r["id"]) for r in rows}

    async def lease_left(self, task_id: str, worker: str, epoch: int) -> float | None:
        """Seconds left on this worker's lease of the task at this epoch; None when it is not
        the worker's (any more)."""
        left = await self.db.fetchval(
            "SELECT extract(epoch FROM lease_expires_at - now()) FROM tasks WHERE id = $1::uuid "
            "AND lease_owner = $2 AND epoch = $3 AND status = 'RUNNING'", task_id, worker, epoch)
        return float(left) if left is not None else None

    async def release_lease(self, task_id: str, worker: str, epoch: int | None = None) -> None:
        await self.db.execute(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = NULL "
            "WHERE id = $1::uuid AND lease_owner = $2 AND ($3::bigint IS NULL OR epoch = $3)",
            task_id, worker, epoch)

    async def lease_state(self, task_id: str) -> asyncpg.Record | None:
        return await self.db.fetchrow(
            "SELECT status, delivery, extract(epoch FROM lease_expires_at - now()) AS left_s "
            "FROM tasks WHERE id = $1::uuid", task_id)

    async def running_owners(self) -> list[tuple[str | None, bool]]:
        """Each worker holding running tasks (None: tasks a sweep freed and no worker took
        yet), and whether one of those leases lapsed."""
        rows = await self.db.fetch(
            "SELECT lease_owner, bool_or(lease_expires_at < now()) AS lapsed FROM tasks "
            "WHERE status = 'RUNNING' GROUP BY lease_owner")
        return [(r["lease_owner"], bool(r["lapsed"])) for r in rows]

    async def claim_lapsed(self, resend_after: float, *, gone: list[str] | None = None,
                           limit: int = 100) -> list[asyncpg.Record]:
        """Running tasks whose lease lapsed or whose worker is `gone` (it died or stalled):
        each is freed for a new message, with its delivery counted up so that the old
        message, should it come back, is known as stale. A claimed task is claimed again
        after `resend_after` seconds if no worker has taken it by then (the new message was
        lost). `SKIP LOCKED`: sweepers running at once never claim the same task twice."""
        return list(await self.db.fetch(
            """
            UPDATE tasks t SET lease_owner = NULL,
                   lease_expires_at = now() + make_interval(secs => $2),
                   delivery = delivery + 1, updated_at = now()
            FROM (SELECT id, lease_owner, lease_expires_at < now() AS lapsed FROM tasks
                  WHERE status = 'RUNNING'
                    AND (lease_expires_at < now() OR lease_owner = ANY($3::text[]))
                  ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) AS claimed
            WHERE t.id = claimed.id
            RETURNING t.id, t.delivery, t.trace_context, claimed.lease_owner AS owner,
                      claimed.lapsed
            """, limit, resend_after, gone or []))

    async def finish(self, conn: Db, task_id: str, status: TaskStatus, *, output: str | None,
                     error: dict[str, Any] | None, usage: dict[str, Any] | None,
                     lease: tuple[str, int] | None = None) -> bool:
        """Record the task's end (once: False when it had already ended, or when `lease`,
        the (worker, epoch) of the run, is no longer the task's)."""
        worker, epoch = lease or (None, None)
        return bool(await conn.fetchval(
            """
            UPDATE tasks SET status = $2, final_output = $3, error = $4::jsonb,
                   usage = coalesce($5::jsonb, usage), finished_at = now(), updated_at = now(),
                   lease_owner = NULL, lease_expires_at = NULL
            WHERE id = $1::uuid AND status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED')
              AND ($6::text IS NULL OR (lease_owner = $6 AND epoch = $7))
            RETURNING id
            """, task_id, status, output, _json(error), _json(usage), worker, epoch))

    async def ended(self, task_id: str) -> asyncpg.Record | None:
        return await self.db.fetchrow(
            "SELECT status, final_output, error, usage, conversation_id FROM tasks "
            "WHERE id = $1::uuid", task_id)

    async def stranded(self, conversation: Any) -> list[str]:
        """The conversation's tasks dispatched but held by no worker."""
        rows = await self.db.fetch(
            "SELECT id FROM tasks WHERE conversation_id = $1 AND status = 'QUEUED' "
            "AND dispatched_at IS NOT NULL AND lease_owner IS NULL", conversation)
        return [str(r["id"]) for r in rows]

    # -- approvals -------------------------------------------------------------------------

    async def hold(self, task_id: str, *, tool_call_id: str, tool: str,
                   arguments: dict[str, Any], reason: str, risk: str,
                   usage: dict[str, Any], lease: tuple[str, int] | None = None) -> str | None:
        """The task waits for a person to decide a tool call: its approval, its status, its
        lease released. Returns the approval's id; None when `lease` (the run's worker and
        epoch) no longer holds the task."""
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(BOUNDED_SQL)
            if lease is not None and not await conn.fetchval(
                    "SELECT true FROM tasks WHERE id = $1::uuid AND lease_owner = $2 "
                    "AND epoch = $3 FOR UPDATE", task_id, *lease):
                return None
            approval_id = await conn.fetchval(
                """
                INSERT INTO approvals (task_id, tool_call_id, tool_name, tool_input, reason, risk)
                VALUES ($1::uuid, $2, $3, $4::jsonb, $5, $6)
                ON CONFLICT (task_id, tool_call_id) DO UPDATE SET reason = EXCLUDED.reason
                RETURNING id
                """, task_id, tool_call_id, tool, json.dumps(arguments, default=str), reason,
                risk)
            await conn.execute(
                "UPDATE tasks SET status = 'PENDING_APPROVAL', lease_owner = NULL, "
                "lease_expires_at = NULL, usage = $2::jsonb, updated_at = now() "
                "WHERE id = $1::uuid", task_id, json.dumps(usage))
            await WebhookStore(conn).enqueue(task_id, "approval.required", {
                "status": TaskStatus.PENDING_APPROVAL, "approval_id": str(approval_id),
                "tool": tool, "arguments": arguments, "risk": risk, "reason": reason},
                key=str(approval_id))
        return str(approval_id)

    async def approvals_of(self, task_id: str, *, pending_only: bool = False
                           ) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT * FROM approvals WHERE task_id = $1::uuid AND (NOT $2 OR status = 'PENDING') "
            "ORDER BY created_at", task_id, pending_only)
        return [approval_row(r) for r in rows]

    async def approvals_in(self, task_ids: list[Any]) -> list[asyncpg.Record]:
        return list(await self.db.fetch(
            "SELECT id, task_id, tool_call_id, tool_name, tool_input, reason, status, comment, "
            "created_at, decided_at FROM approvals WHERE task_id = ANY($1::uuid[]) "
            "ORDER BY created_at",
            task_ids))

    async def approval_for_update(self, conn: Db, approval_id: uuid.UUID,
                                  task_id: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT a.*, t.status AS task_status FROM approvals a JOIN tasks t "
            "ON t.id = a.task_id WHERE a.id = $1 AND a.task_id = $2::uuid FOR UPDATE OF a",
            approval_id, task_id)

    async def decide(self, conn: Db, approval_id: Any, task_id: str, *,
                     status: Literal["APPROVED", "REJECTED"], user_id: str,
                     comment: str | None) -> asyncpg.Record:
        """Record the decision and queue the task again (the caller sends its message)."""
        decided = await conn.fetchrow(
            "UPDATE approvals SET status = $2, decided_by = $3::uuid, comment = $4, "
            "decided_at = now() WHERE id = $1 RETURNING *", approval_id, status, user_id, comment)
        await conn.execute(
            "UPDATE tasks SET status = 'QUEUED', dispatched_at = now(), updated_at = now() "
            "WHERE id = $1::uuid", task_id)
        return decided

    async def approval(self, approval_id: str) -> asyncpg.Record | None:
        return await self.db.fetchrow(
            "SELECT tool_name, tool_call_id, status, created_at, decided_at FROM approvals "
            "WHERE id = $1::uuid", approval_id)

    async def decision_for(self, task_id: str, tool_call_id: str) -> ApprovalDecision | None:
        """The decision a person recorded on this call of the task, if any."""
        row = await self.db.fetchrow(
            "SELECT id, status, comment FROM approvals WHERE task_id = $1::uuid "
            "AND tool_call_id = $2 AND status <> 'PENDING'", task_id, tool_call_id)
        if row is None:
            return None
        return ApprovalDecision(decision="approve" if row["status"] == "APPROVED" else "reject",
                                comment=row["comment"] or "", approval_id=str(row["id"]))

    async def approvals_waiting(self) -> int:
        return int(await self.db.fetchval(
            "SELECT count(*) FROM approvals a JOIN tasks t ON t.id = a.task_id "
            "WHERE a.status = 'PENDING' AND t.status = 'PENDING_APPROVAL'"))

    # -- quotas (guardrails.limits.QuotaCounts) ----------------------------------------------

    async def lock_user(self, conn: Db, user_id: str) -> None:
        await conn.execute("SELECT 1 FROM users WHERE id = $1::uuid FOR NO KEY UPDATE", user_id)

    async def active_tasks(self, conn: Db, user_id: str) -> int:
        return int(await conn.fetchval(
            "SELECT count(*) FROM tasks WHERE user_id = $1::uuid AND status = ANY($2::text[])",
            user_id, sorted(ACTIVE)))

    async def tokens_since(self, conn: Db, user_id: str, since: datetime, *,
                           excluding: str | None = None) -> int:
        """Tokens the user's tasks recorded since `since`, leaving out `excluding`."""
        return int(await conn.fetchval(
            """
            SELECT coalesce(sum(coalesce((usage->>'tokens_in')::bigint, 0)
                                + coalesce((usage->>'tokens_out')::bigint, 0)), 0)
            FROM tasks
            WHERE user_id = $1::uuid AND coalesce(finished_at, updated_at) >= $2
              AND ($3::uuid IS NULL OR id <> $3::uuid)
            """, user_id, since, excluding))
