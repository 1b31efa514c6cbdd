"""The task service: the one code path behind the REST API, the chat UI and the CLI for
submitting, reading, cancelling and approving tasks.

Ordering within a conversation: at most one task of a conversation is dispatched to the queue
at a time. A new message waits (undispatched, `QUEUED`) behind an active task, and the task
that ends dispatches the next — under a row lock on the conversation, so a submission and a
finishing task cannot both dispatch. Chosen over an SQS FIFO queue because it keeps standard
queues (unlimited throughput, and what the embedded endpoint and most SQS clones do well) and
makes `reject` / `interrupt` simple to answer at submit time.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from app.auth import Principal
from app.events import ErrorData, EventLog, StatusData
from app.problems import Problem, too_many_requests
from app.queue import TaskMessage, TaskQueue
from app.store import task_steps
from app.telemetry import carrier
from graph.approvals import ApprovalDecision
from graph.status import ACTIVE, TaskStatus
from guardrails.limits import LimitExceeded, UserQuotas
from guardrails.screening import plain_line, screen_task

Strategy = Literal["enqueue", "reject", "interrupt"]
_Tasks = list[dict[str, Any]]  # `list` is also a method name in TaskService

_TASK_COLUMNS = """id, user_id, conversation_id, status, input, final_output, error, usage, options,
                   created_at, updated_at, started_at, finished_at, cancel_requested_at,
                   trace_context"""


@dataclass(frozen=True, kw_only=True)
class TaskService:
    db: asyncpg.Pool
    queue: TaskQueue
    events: EventLog
    default_max_iterations: int = 15
    default_token_budget: int = 200_000
    # Concurrent tasks and daily tokens per user; None (tests, maintenance) checks neither.
    quotas: UserQuotas | None = None

    # -- submit --------------------------------------------------------------------------------

    async def submit(self, who: Principal, text: str, *, conversation_id: str | None = None,
                     max_iterations: int | None = None, token_budget: int | None = None,
                     strategy: Strategy = "enqueue", files: list[str] | None = None
                     ) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_iterations": max_iterations or self.default_max_iterations,
            "token_budget": token_budget or self.default_token_budget}
        screened = screen_task(text)
        if screened.problem:
            raise Problem("invalid-request", 422, screened.problem)
        if screened.flags:
            # It runs, but its text counts as untrusted: side effects will need approval.
            options["input_flags"] = screened.flags
        cancelled: list[str] = []
        async with self.db.acquire() as conn, conn.transaction():
            conv = await self._lock_conversation(conn, who, conversation_id, text)
            active = await conn.fetch(
                "SELECT id, status, dispatched_at FROM tasks WHERE conversation_id = $1 "
                "AND status = ANY($2::text[]) ORDER BY created_at", conv, sorted(ACTIVE))
            if active and strategy == "reject":
                raise Problem("conflict", 409,
                              f"conversation {conv} is busy with task {active[0]['id']}; retry "
                              "later, or send with multitask_strategy=enqueue or interrupt",
                              active_task=str(active[0]["id"]))
            if active and strategy == "interrupt":
                for row in active:
                    if await self._cancel_locked(conn, row["id"], "interrupted by a new message"):
                        cancelled.append(str(row["id"]))
            if self.quotas is not None:
                try:
                    await self.quotas.admit(conn, who.user_id)
                except LimitExceeded as exc:
                    raise too_many_requests(exc) from None
            # The submitting request's trace: every run of the task joins it.
            task = await conn.fetchrow(
                f"INSERT INTO tasks (user_id, conversation_id, input, options, trace_context) "
                f"VALUES ($1::uuid, $2, $3, $4::jsonb, $5::jsonb) RETURNING {_TASK_COLUMNS}",
                who.user_id, conv, text, json.dumps(options), _json_or_null(carrier()))
            if files:
                owned = await conn.fetchval(
                    "SELECT count(*) FROM files WHERE id = ANY($1::uuid[]) AND user_id = $2::uuid",
                    files, who.user_id)
                if owned != len(set(files)):
                    raise Problem("not-found", 404, "one of the files was not found")
                await conn.executemany(
                    "INSERT INTO task_files (task_id, file_id) VALUES ($1, $2::uuid) "
                    "ON CONFLICT DO NOTHING", [(task["id"], f) for f in files])
            await conn.execute("UPDATE conversations SET updated_at = now() WHERE id = $1", conv)
            dispatch = await self._next_to_dispatch(conn, conv)
        for task_id in cancelled:
            await self._announce_cancelled(task_id)
        await self.events.publish(str(task["id"]), StatusData(status=TaskStatus.QUEUED))
        if dispatch is not None:
            await self._send(dispatch)
        return _task(task)

    async def _lock_conversation(self, conn: asyncpg.Connection, who: Principal,
                                 conversation_id: str | None, text: str) -> Any:
        if conversation_id is None:
            return await conn.fetchval(
                "INSERT INTO conversations (user_id, title) VALUES ($1::uuid, $2) RETURNING id",
                who.user_id, " ".join(text.split())[:80])
        conv = await conn.fetchval(
            "SELECT id FROM conversations WHERE id = $1 AND user_id = $2::uuid FOR UPDATE",
            _uuid(conversation_id, "conversation"), who.user_id)
        if conv is None:
            raise Problem("not-found", 404, f"conversation {conversation_id} not found")
        return conv

    async def _next_to_dispatch(self, conn: asyncpg.Connection, conv: Any) -> str | None:
        """Mark and return the conversation's next task to send, if none is in flight.
        The caller holds the conversation's row lock."""
        busy = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tasks WHERE conversation_id = $1 AND "
            "((status = 'QUEUED' AND dispatched_at IS NOT NULL) OR status = 'RUNNING' "
            "OR status = 'PENDING_APPROVAL'))", conv)
        if busy:
            return None
        task_id = await conn.fetchval(
            "UPDATE tasks SET dispatched_at = now() WHERE id = (SELECT id FROM tasks "
            "WHERE conversation_id = $1 AND status = 'QUEUED' AND dispatched_at IS NULL "
            "ORDER BY created_at LIMIT 1) RETURNING id", conv)
        return str(task_id) if task_id else None

    async def _send(self, task_id: str, resume: ApprovalDecision | None = None) -> None:
        trace = await self.db.fetchval("SELECT trace_context FROM tasks WHERE id = $1::uuid",
                                       task_id)
        await self.queue.send(TaskMessage(task_id=task_id, resume=resume,
                                          trace=(json.loads(trace) if trace else None) or {}))

    async def finish(self, conn: asyncpg.Connection, task_id: str) -> str | None:
        """Called in the transaction that ends a task: lock its conversation and pick the
        next task to dispatch (send it after commit with `dispatch`)."""
        conv = await conn.fetchval("SELECT conversation_id FROM tasks WHERE id = $1::uuid", task_id)
        await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conv)
        return await self._next_to_dispatch(conn, conv)

    async def dispatch(self, task_id: str | None) -> None:
        if task_id is not None:
            await self._send(task_id)

    async def requeue_orphans(self) -> int:
        """Send again every dispatched task that no live worker holds: after the queue lost
        its messages (the embedded endpoint keeps them in memory) or a message was dropped."""
        rows = await self.db.fetch(
            "SELECT id FROM tasks WHERE ((status = 'QUEUED' AND dispatched_at IS NOT NULL) "
            "OR status = 'RUNNING') AND (lease_owner IS NULL OR lease_expires_at < now())")
        for row in rows:
            await self._send(str(row["id"]))
        return len(rows)

    # -- read ----------------------------------------------------------------------------------

    async def get(self, who: Principal, task_id: str) -> dict[str, Any]:
        """The task with its steps and approvals."""
        task = await self.owned(who, task_id)
        task["steps"] = (await task_steps(self.db, [task["id"]])).get(task["id"], [])
        task["approvals"] = [_approval(r) for r in await self.db.fetch(
            "SELECT * FROM approvals WHERE task_id = $1::uuid ORDER BY created_at", task["id"])]
        return task

    async def list(self, who: Principal, *, status: str | None, limit: int,
                   cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        after_time, after_id = _decode_cursor(cursor) if cursor else (None, None)
        rows = await self.db.fetch(
            f"""SELECT {_TASK_COLUMNS} FROM tasks WHERE user_id = $1::uuid
                AND ($2::text IS NULL OR status = $2)
                AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
                ORDER BY created_at DESC, id DESC LIMIT $5""",
            who.user_id, status, after_time, after_id, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return [_task(r) for r in rows], next_cursor

    async def owned(self, who: Principal, task_id: str) -> dict[str, Any]:
        """The caller's task. Another user's task is indistinguishable from a missing one."""
        row = await self.db.fetchrow(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2::uuid",
            _uuid(task_id, "task"), who.user_id)
        if row is None:
            raise Problem("not-found", 404, f"task {task_id} not found")
        return _task(row)

    async def active_in(self, who: Principal, conversation_id: str) -> _Tasks:
        """The caller's unfinished tasks in a conversation, oldest first, each with its pending
        approvals: what a chat view reopened mid-task must follow and offer to decide."""
        rows = await self.db.fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE conversation_id = $1 AND user_id = $2::uuid "
            f"AND status = ANY($3::text[]) ORDER BY created_at, id",
            _uuid(conversation_id, "conversation"), who.user_id, sorted(ACTIVE))
        tasks = [_task(r) for r in rows]
        for task in tasks:
            task["approvals"] = [_approval(r) for r in await self.db.fetch(
                "SELECT * FROM approvals WHERE task_id = $1::uuid AND status = 'PENDING' "
                "ORDER BY created_at", task["id"])]
        return tasks

    # -- conversations -------------------------------------------------------------------------

    async def open_conversation(self, who: Principal, conversation_id: str, title: str) -> str:
        """Make sure the caller has a conversation with this id, creating it (with `title`)
        if it does not exist yet: the chat UI names its threads before their first task.
        Another user's conversation is a 404, as everywhere."""
        key = _uuid(conversation_id, "conversation")
        # Two statements: a row another transaction inserted meanwhile (Chainlit names new
        # threads concurrently) is invisible to the snapshot of the INSERT that skipped it.
        await self.db.execute(
            "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2::uuid, $3) "
            "ON CONFLICT (id) DO NOTHING", key, who.user_id, plain_line(title, 80))
        owner = await self.db.fetchval("SELECT user_id FROM conversations WHERE id = $1", key)
        if owner is None or str(owner) != who.user_id:
            raise Problem("not-found", 404, f"conversation {conversation_id} not found")
        return str(key)

    # -- cancel --------------------------------------------------------------------------------

    async def cancel(self, who: Principal, task_id: str) -> dict[str, Any]:
        """Cancel now if the task is not running; otherwise it stops at its next step boundary."""
        task = await self.owned(who, task_id)
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM conversations WHERE id = $1::uuid FOR UPDATE",
                               task["conversation_id"])
            now_cancelled = await self._cancel_locked(conn, task["id"], "cancelled by the user")
            dispatch = await self._next_to_dispatch(conn, uuid.UUID(task["conversation_id"])) \
                if now_cancelled else None
        if now_cancelled:
            await self._announce_cancelled(task["id"])
        await self.dispatch(dispatch)
        return await self.owned(who, task_id)

    async def _cancel_locked(self, conn: asyncpg.Connection, task_id: Any, reason: str) -> bool:
        """Returns True when the task was cancelled right away (it was not running)."""
        row = await conn.fetchrow(
            "UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, now()), "
            "updated_at = now() WHERE id = $1::uuid AND status = ANY($2::text[]) "
            "RETURNING status, dispatched_at", task_id, sorted(ACTIVE))
        if row is None:
            return False
        if row["status"] == "PENDING_APPROVAL" or (row["status"] == "QUEUED"
                                                   and row["dispatched_at"] is None):
            await conn.execute(
                "UPDATE tasks SET status = 'CANCELLED', finished_at = now(), updated_at = now(), "
                "error = $2::jsonb, lease_owner = NULL WHERE id = $1::uuid", task_id,
                json.dumps({"type": "cancelled", "message": reason}))
            await conn.execute(
                "UPDATE approvals SET status = 'REJECTED', comment = $2, decided_at = now() "
                "WHERE task_id = $1::uuid AND status = 'PENDING'", task_id, reason)
            return True
        return False

    async def _announce_cancelled(self, task_id: Any) -> None:
        await self.events.publish(str(task_id), ErrorData(type="cancelled",
                                                          message="the task was cancelled"))
        await self.events.publish(str(task_id), StatusData(status=TaskStatus.CANCELLED))

    # -- approvals -----------------------------------------------------------------------------

    async def decide(self, who: Principal, task_id: str, approval_id: str, *,
                     decision: Literal["approve", "reject"], comment: str | None) -> dict[str, Any]:
        """Record a human's decision (idempotent) and enqueue the resume."""
        await self.owned(who, task_id)
        status: Literal["APPROVED", "REJECTED"] = "APPROVED" if decision == "approve" \
            else "REJECTED"
        async with self.db.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT a.*, t.status AS task_status FROM approvals a JOIN tasks t "
                "ON t.id = a.task_id WHERE a.id = $1 AND a.task_id = $2::uuid FOR UPDATE OF a",
                _uuid(approval_id, "approval"), task_id)
            if row is None:
                raise Problem("not-found", 404, f"approval {approval_id} not found")
            if row["status"] != "PENDING":
                if row["status"] == status:
                    return _approval(row)
                raise Problem("conflict", 409,
                              f"approval {approval_id} was already {row['status'].lower()}")
            if row["task_status"] != "PENDING_APPROVAL":
                raise Problem("conflict", 409, f"task {task_id} is {row['task_status']}, "
                                               "not waiting for this approval")
            decided = await conn.fetchrow(
                "UPDATE approvals SET status = $2, decided_by = $3::uuid, comment = $4, "
                "decided_at = now() WHERE id = $1 RETURNING *", row["id"], status, who.user_id,
                comment)
            await conn.execute(
                "UPDATE tasks SET status = 'QUEUED', dispatched_at = now(), updated_at = now() "
                "WHERE id = $1::uuid", task_id)
        await self.events.publish(task_id, StatusData(status=TaskStatus.QUEUED, approval=status))
        await self._send(task_id, resume=ApprovalDecision(
            decision=decision, comment=comment or "", approval_id=str(decided["id"])))
        return _approval(decided)


def _json_or_null(value: dict[str, str]) -> str | None:
    return json.dumps(value) if value else None


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Problem("not-found", 404, f"{what} {value} not found") from None


def _task(row: asyncpg.Record) -> dict[str, Any]:
    task = dict(row)
    for key in ("id", "user_id", "conversation_id"):
        task[key] = str(task[key])
    for key in ("error", "usage", "options", "trace_context"):
        if isinstance(task.get(key), str):
            task[key] = json.loads(task[key])
    return task


def _approval(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "task_id": str(row["task_id"]), "tool_call_id": row["tool_call_id"],
        "tool": row["tool_name"], "arguments": json.loads(row["tool_input"]),
        "risk": row["risk"], "reason": row["reason"], "status": row["status"],
        "comment": row["comment"], "created_at": row["created_at"],
        "decided_at": row["decided_at"],
    }


def _encode_cursor(created_at: datetime, task_id: Any) -> str:
    # Opaque and URL-safe: the timestamp's "+00:00" would otherwise need escaping.
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(stamp), uuid.UUID(task_id)
    except (ValueError, UnicodeDecodeError):
        raise Problem("invalid-request", 400, "the cursor is not valid") from None
