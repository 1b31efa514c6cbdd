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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from app.auth import Principal
from app.deps import Deps
from app.events import ApprovalRequiredData, ErrorData, EventLog, StatusData
from app.problems import Problem, too_many_requests
from app.queue import TaskMessage, TaskQueue
from app.store import TaskStore, approval_row, task_steps
from app.store.webhooks import WebhookStore
from app.telemetry import carrier
from app.webhooks import check_url
from graph.approvals import ApprovalDecision
from graph.status import TaskStatus
from graph.steps import ToolRan
from guardrails.limits import LimitExceeded, UserQuotas
from guardrails.screening import plain_line, screen_task
from tools.builtin.fetch import FetchPolicy

Strategy = Literal["enqueue", "reject", "interrupt"]
_Tasks = list[dict[str, Any]]  # `list` is also a method name in TaskService



@dataclass(frozen=True, kw_only=True)
class Accepted:
    """A task just written: the row, the task to send now (it, or None while the
    conversation is busy), and the tasks an `interrupt` cancelled."""

    task: dict[str, Any]
    dispatch: str | None
    cancelled: list[str]


@dataclass(frozen=True, kw_only=True)
class Resent:
    """A task the sweeper sent to the queue again, under which delivery, and why."""

    task_id: str
    delivery: int
    why: str


@dataclass(frozen=True, kw_only=True)
class TaskService:
    db: asyncpg.Pool
    queue: TaskQueue
    events: EventLog
    default_max_iterations: int = 15
    default_token_budget: int = 200_000
    # Concurrent tasks and daily tokens per user; None (tests, maintenance) checks neither.
    quotas: UserQuotas | None = None
    # Hosts on a private network webhooks may go to (CADRE_WEBHOOK_ALLOW_PRIVATE, parsed).
    webhook_allow_private: frozenset[str] = frozenset()
    # The shared cache scopes a task may name (CADRE_CACHE_SHARED_SCOPES).
    cache_scopes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, deps: Deps, events: EventLog) -> TaskService:
        """The service as a deployment configures it: its defaults, quotas and webhook rule
        (the API's, and the scheduler's, which submits as the schedules' owners)."""
        settings = deps.settings
        return cls(db=deps.db, queue=deps.queue, events=events,
                   default_max_iterations=settings.max_iterations,
                   default_token_budget=settings.token_budget,
                   quotas=UserQuotas(max_concurrent_tasks=settings.max_concurrent_tasks,
                                     daily_tokens=settings.daily_token_quota,
                                     counts=TaskStore(deps.db)),
                   webhook_allow_private=FetchPolicy.parse_hosts(settings.webhook_allow_private),
                   cache_scopes=frozenset(n.strip() for n in settings.cache_shared_scopes.split(",")
                                          if n.strip()))

    @property
    def store(self) -> TaskStore:
        return TaskStore(self.db)

    # -- submit --------------------------------------------------------------------------------

    async def submit(self, who: Principal, text: str, *, conversation_id: str | None = None,
                     max_iterations: int | None = None, token_budget: int | None = None,
                     strategy: Strategy = "enqueue", files: list[str] | None = None,
                     webhook_url: str | None = None,
                     speculation: bool | None = None,
                     cache: bool | None = None, cache_scope: str | None = None,
                     mode: Literal["single", "team", "auto"] = "single") -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_iterations": max_iterations or self.default_max_iterations,
            "token_budget": token_budget or self.default_token_budget}
        if mode != "single":
            options["mode"] = mode
        if speculation is not None:
            options["speculation"] = speculation
        if cache is not None:
            options["cache"] = cache
        if cache_scope is not None:
            if cache_scope not in self.cache_scopes:
                raise Problem("invalid-request", 422, f"cache_scope {cache_scope!r} is not a "
                              "shared scope of this deployment (CADRE_CACHE_SHARED_SCOPES: "
                              f"{', '.join(sorted(self.cache_scopes)) or 'none'})")
            options["cache_scope"] = cache_scope
        if webhook_url is not None:
            options["webhook_url"] = await self.webhook_url(who, webhook_url)
        async with self.db.acquire() as conn, conn.transaction():
            accepted = await self.submit_in(conn, who, text, conversation_id=conversation_id,
                                            options=options, strategy=strategy, files=files)
        await self.announce(accepted)
        return accepted.task

    async def submit_in(self, conn: asyncpg.Connection, who: Principal, text: str, *,
                        conversation_id: str | None, options: dict[str, Any],
                        strategy: Strategy = "enqueue", files: list[str] | None = None,
                        ) -> Accepted:
        """The task's rows, in the caller's transaction: the scheduler creates a task and
        advances its schedule in one. `announce` it after the commit."""
        screened = screen_task(text)
        if screened.problem:
            raise Problem("invalid-request", 422, screened.problem)
        if screened.flags:
            # It runs, but its text counts as untrusted: side effects will need approval.
            options = {**options, "input_flags": screened.flags}
        cancelled: list[str] = []
        store = self.store
        conv = await self._lock_conversation(conn, who, conversation_id, text)
        active = await store.active_in_conversation(conn, conv)
        if active and strategy == "reject":
            raise Problem("conflict", 409,
                          f"conversation {conv} is busy with task {active[0]['id']}; retry "
                          "later, or send with multitask_strategy=enqueue or interrupt",
                          active_task=str(active[0]["id"]))
        if active and strategy == "interrupt":
            for row in active:
                if await store.request_cancel(conn, row["id"], "interrupted by a new message"):
                    cancelled.append(str(row["id"]))
        if self.quotas is not None:
            try:
                await self.quotas.admit(conn, who.user_id)
            except LimitExceeded as exc:
                raise too_many_requests(exc) from None
        # The submitting request's trace: every run of the task joins it.
        task = await store.insert(conn, user_id=who.user_id, conversation=conv, text=text,
                                  options=options, trace=carrier())
        if files and not await store.attach_files(conn, task["id"], who.user_id, files):
            raise Problem("not-found", 404, "one of the files was not found")
        await store.touch_conversation(conn, conv)
        dispatch = await store.next_to_dispatch(conn, conv)
        return Accepted(task=task, dispatch=dispatch, cancelled=cancelled)

    async def announce(self, accepted: Accepted) -> None:
        """After the commit: the cancelled tasks' ends, the new task's status, and its
        message to the queue if it is the conversation's next."""
        for task_id in accepted.cancelled:
            await self._announce_cancelled(task_id)
        await self.events.publish(accepted.task["id"], StatusData(status=TaskStatus.QUEUED))
        if accepted.dispatch is not None:
            await self._send(accepted.dispatch)

    async def fork(self, who: Principal, task_id: str, *, from_step: int,
                   instruction: str | None = None, note: str | None = None,
                   tool_results: dict[str, str] | None = None) -> dict[str, Any]:
        """A new task, in a new conversation, that goes on from `task_id`'s state at step
        `from_step` (a worker seeds its thread: graph/fork.py), with `instruction` as a new
        message when given. The original must have stopped: ended, or waiting for a person."""
        original = await self.owned(who, task_id)
        if original["status"] in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            raise Problem("conflict", 409, f"task {task_id} is {original['status']}: fork it "
                          "once it has ended or waits for approval")
        last = await self.store.last_step(original["id"])
        if from_step > last:
            raise Problem("invalid-request", 422, f"task {task_id} has {last} steps; "
                          f"from_step must be between 0 and {last}")
        if instruction is not None and (screened := screen_task(instruction)).problem:
            raise Problem("invalid-request", 422, screened.problem)
        if tool_results:
            steps = (await task_steps(self.db, [original["id"]])).get(original["id"], [])
            known = {s.call_id for s in steps if isinstance(s, ToolRan) and s.number <= from_step}
            if unknown := sorted(set(tool_results) - known):
                raise Problem("invalid-request", 422, f"no tool call {unknown[0]} ran by step "
                              f"{from_step} of task {task_id}: tool_results names the "
                              "`call_id` of a `tool_ran` step")
        options = {**{k: v for k, v in original["options"].items()
                      if k in ("max_iterations", "token_budget", "speculation", "webhook_url")},
                   "fork": {"task_id": original["id"], "from_step": from_step,
                            "instruction": instruction, "note": note,
                            **({"tool_results": tool_results} if tool_results else {})}}
        async with self.db.acquire() as conn, conn.transaction():
            conv = await self.store.new_conversation(
                conn, who.user_id, plain_line(f"Fork: {note or original['input']}", 80))
            accepted = await self.submit_in(conn, who, original["input"],
                                            conversation_id=str(conv), options=options)
        await self.announce(accepted)
        return accepted.task

    async def _lock_conversation(self, conn: asyncpg.Connection, who: Principal,
                                 conversation_id: str | None, text: str) -> Any:
        if conversation_id is None:
            return await self.store.new_conversation(conn, who.user_id, plain_line(text, 80))
        conv = await self.store.lock_conversation(
            conn, _uuid(conversation_id, "conversation"), who.user_id)
        if conv is None:
            raise Problem("not-found", 404, f"conversation {conversation_id} not found")
        return conv

    async def _send(self, task_id: str, resume: ApprovalDecision | None = None) -> None:
        delivery, trace = await self.store.delivery_of(task_id)
        await self.queue.send(TaskMessage(task_id=task_id, resume=resume, delivery=delivery,
                                          trace=trace))

    async def finish(self, conn: asyncpg.Connection, task_id: str) -> str | None:
        """Called in the transaction that ends a task: lock its conversation and pick the
        next task to dispatch (send it after commit with `dispatch`)."""
        conv = await self.store.conversation_of(conn, task_id)
        await self.store.lock_conversation(conn, conv)
        return await self.store.next_to_dispatch(conn, conv)

    async def dispatch(self, task_id: str | None) -> None:
        if task_id is not None:
            await self._send(task_id)

    async def resend_lapsed(self, resend_after: float = 30, *,
                            gone: Callable[[list[str]], Awaitable[list[str]]] | None = None,
                            ) -> list[Resent]:
        """Send every running task whose lease lapsed, or whose worker `gone` says is gone,
        to the queue again, each once (the store's claim skips tasks another sweeper holds),
        and again after `resend_after` seconds if no worker took it. One statement when
        nothing needs sending."""
        owners = await self.store.running_owners()
        workers = [owner for owner, _ in owners if owner is not None]
        dead = await gone(workers) if gone is not None and workers else []
        if not dead and not any(lapsed for _, lapsed in owners):
            return []
        sent = []
        for row in await self.store.claim_lapsed(resend_after, gone=dead):
            trace = json.loads(row["trace_context"]) if row["trace_context"] else {}
            await self.queue.send(TaskMessage(task_id=str(row["id"]), delivery=row["delivery"],
                                              trace=trace or {}))
            why = ("no worker took it since it was last sent" if row["owner"] is None
                   else f"worker {row['owner']}'s lease lapsed" if row["lapsed"]
                   else f"worker {row['owner']}'s liveness key is gone")
            sent.append(Resent(task_id=str(row["id"]), delivery=int(row["delivery"]), why=why))
        return sent

    async def requeue_orphans(self) -> int:
        """Send again every dispatched task that no live worker holds: after the queue lost
        its messages (the embedded endpoint keeps them in memory) or a message was dropped."""
        orphans = await self.store.orphans()
        for task_id in orphans:
            await self._send(task_id)
        return len(orphans)

    async def webhook_url(self, who: Principal, url: str) -> str:
        """`url` if `who` may have webhooks sent there: they have a signing secret (409
        otherwise) and it is an address webhooks may go to (422 otherwise)."""
        if not (await WebhookStore(self.db).settings_of(who.user_id))["has_secret"]:
            raise Problem("conflict", 409, "a webhook URL needs your signing secret first: "
                          "POST /v1/webhooks/secret")
        return await check_url(url, self.webhook_allow_private)

    # -- read ----------------------------------------------------------------------------------

    async def get(self, who: Principal, task_id: str) -> dict[str, Any]:
        """The task with its steps and approvals."""
        task = await self.owned(who, task_id)
        task["steps"] = (await task_steps(self.db, [task["id"]])).get(task["id"], [])
        task["approvals"] = await self.store.approvals_of(task["id"])
        return task

    async def list(self, who: Principal, *, status: str | None, limit: int,
                   cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        rows = await self.store.page(who.user_id, status=status,
                                     after=_decode_cursor(cursor) if cursor else None,
                                     limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return rows, next_cursor

    async def owned(self, who: Principal, task_id: str) -> dict[str, Any]:
        """The caller's task. Another user's task is indistinguishable from a missing one."""
        task = await self.store.owned(_uuid(task_id, "task"), who.user_id)
        if task is None:
            raise Problem("not-found", 404, f"task {task_id} not found")
        return task

    async def active_in(self, who: Principal, conversation_id: str) -> _Tasks:
        """The caller's unfinished tasks in a conversation, oldest first, each with its pending
        approvals: what a chat view reopened mid-task must follow and offer to decide."""
        tasks = await self.store.active_of(_uuid(conversation_id, "conversation"), who.user_id)
        for task in tasks:
            task["approvals"] = await self.store.approvals_of(task["id"], pending_only=True)
        return tasks

    # -- conversations -------------------------------------------------------------------------

    async def open_conversation(self, who: Principal, conversation_id: str, title: str) -> str:
        """Make sure the caller has a conversation with this id, creating it (with `title`)
        if it does not exist yet: the chat UI names its threads before their first task.
        Another user's conversation is a 404, as everywhere."""
        key = _uuid(conversation_id, "conversation")
        owner = await self.store.open_conversation(key, who.user_id, plain_line(title, 80))
        if owner is None or str(owner) != who.user_id:
            raise Problem("not-found", 404, f"conversation {conversation_id} not found")
        return str(key)

    # -- cancel --------------------------------------------------------------------------------

    async def cancel(self, who: Principal, task_id: str) -> dict[str, Any]:
        """Cancel now if the task is not running; otherwise it stops at its next step boundary."""
        task = await self.owned(who, task_id)
        store = self.store
        async with self.db.acquire() as conn, conn.transaction():
            await store.lock_conversation(conn, task["conversation_id"])
            now_cancelled = await store.request_cancel(conn, task["id"], "cancelled by the user")
            dispatch = await store.next_to_dispatch(conn, uuid.UUID(task["conversation_id"])) \
                if now_cancelled else None
        if now_cancelled:
            await self._announce_cancelled(task["id"])
        await self.dispatch(dispatch)
        return await self.owned(who, task_id)

    async def _announce_cancelled(self, task_id: Any) -> None:
        await self.events.publish(str(task_id), ErrorData(type="cancelled",
                                                          message="the task was cancelled"))
        await self.events.publish(str(task_id), StatusData(status=TaskStatus.CANCELLED))

    # -- approvals -----------------------------------------------------------------------------

    async def decide(self, who: Principal, task_id: str, approval_id: str,
                     answer: ApprovalDecision) -> dict[str, Any]:
        """Record a human's decision (idempotent) and enqueue the resume."""
        await self.owned(who, task_id)
        # The request the person answers is on the record before the answer is.
        await self.show_unshown_approvals(task_id)
        status: Literal["APPROVED", "REJECTED"] = "APPROVED" if answer.approved else "REJECTED"
        comment = answer.comment or None
        store = self.store
        async with self.db.acquire() as conn, conn.transaction():
            row = await store.approval_for_update(conn, _uuid(approval_id, "approval"), task_id)
            if row is None:
                raise Problem("not-found", 404, f"approval {approval_id} not found")
            if row["status"] != "PENDING":
                if row["status"] == status:
                    return approval_row(row)
                raise Problem("conflict", 409,
                              f"approval {approval_id} was already {row['status'].lower()}")
            if row["task_status"] != TaskStatus.PENDING_APPROVAL:
                raise Problem("conflict", 409, f"task {task_id} is {row['task_status']}, "
                                               "not waiting for this approval")
            decided = await store.decide(conn, row["id"], task_id, status=status,
                                         user_id=who.user_id, comment=comment)
        await self.events.publish(task_id, StatusData(status=TaskStatus.QUEUED, approval=status))
        await self._send(task_id, resume=answer.model_copy(update={
            "approval_id": str(decided["id"])}))
        return approval_row(decided)


    async def show_unshown_approvals(self, task_id: str) -> None:
        """Publish `approval_required` for each pending approval of the task that has none:
        a worker that died between recording the hold and announcing it left it unshown (the
        approval itself is recorded with the hold, in one transaction)."""
        pending = await self.store.approvals_of(task_id, pending_only=True)
        if not pending:
            return
        shown = {e.data.approval_id for e in await self.events.history(task_id)
                 if isinstance(e.data, ApprovalRequiredData)}
        for approval in pending:
            if approval["id"] not in shown:
                await self.events.publish_all(task_id, [ApprovalRequiredData(
                    approval_id=approval["id"], tool=approval["tool"],
                    arguments=approval["arguments"], risk=approval["risk"],
                    reason=approval["reason"] or "", agent=approval["agent"]),
                    StatusData(status=TaskStatus.PENDING_APPROVAL)])


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Problem("not-found", 404, f"{what} {value} not found") from None


def _encode_cursor(created_at: datetime, task_id: Any) -> str:
    # Opaque and URL-safe: the timestamp's "+00:00" would otherwise need escaping.
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(stamp), uuid.UUID(task_id)
    except (ValueError, UnicodeDecodeError):
        raise Problem("invalid-request", 400, "the cursor is not valid") from None
