"""Running one queued task on a worker: take the lease, run (or resume) the graph on the
conversation's thread, stream its events, keep the lease and the message alive, and record
the outcome. Every exit path either finishes the task or lets its message come back."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage

from app.deps import Deps
from app.events import (
    AnyEventData,
    ApprovalRequiredData,
    CacheData,
    ErrorData,
    EventLog,
    FinalData,
    StatusData,
    StepPublisher,
    TokenData,
    step_events,
)
from app.files import FileStore
from app.lease import Lease, Leases
from app.metrics import StepMetrics, count_cache
from app.queue import ReceivedMessage, TaskMessage
from app.service import TaskService
from app.store import PolicyAudit, StepStore, TaskStore
from app.store.steps import task_steps
from app.store.tasks import task_options
from app.store.webhooks import WebhookStore
from app.task_cache import Earlier, Lookup, TaskCache
from app.telemetry import attach, detach, record_wait
from graph import ApprovalDecision, GraphDeps, TaskStatus, fence, task_input
from graph.agents import Team
from graph.builder import AgentGraph
from graph.fence import BOUNDED_SQL, LeaseLost
from graph.fork import ForkError, fork_thread
from graph.model_cache import ModelCache
from graph.outputs import OutputStore
from graph.recorder import Recorders
from graph.run import RunInterrupted, RunResult, run_task, thread_config, waiting
from graph.speculation import Speculator
from graph.state import AgentState
from graph.status import TERMINAL
from graph.tracing import Tracing, span
from guardrails import Policy
from guardrails.limits import DailyAllowance, UserQuotas
from guardrails.screening import RuleScreen, Screen
from tools import Ledger, Toolset

log = logging.getLogger("cadre.worker")


@dataclass(kw_only=True)
class Executor:
    deps: Deps
    service: TaskService
    events: EventLog
    graph: AgentGraph
    model: BaseChatModel | None
    model_problem: str
    toolset: Toolset
    policy: Policy
    worker_id: str
    tool_deps: Any = None
    screen: Screen = field(default_factory=RuleScreen)
    # The daily token quota caps each run's token budget; None checks no quota.
    quotas: UserQuotas | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tracing: Tracing = field(default_factory=Tracing)
    # The worker agents a team task's manager delegates to (CADRE_AGENTS_FILE).
    team: Team | None = None
    # The leases this worker holds, renewed together by the worker's heartbeat.
    leases: Leases | None = None
    # Large tool results kept out of the checkpoints (CADRE_OUTPUT_INLINE_CHARS): one store
    # per worker, so what it keeps in memory serves all of its tasks.
    outputs: OutputStore = field(init=False)

    def __post_init__(self) -> None:
        self.outputs = OutputStore(self.deps.db,
                                   inline_chars=self.deps.settings.output_inline_chars)
        if self.leases is None:
            self.leases = Leases(store=self.store, worker=self.worker_id,
                                 seconds=self.lease_seconds)

    @property
    def lease_seconds(self) -> float:
        return self.deps.settings.lease_seconds

    @property
    def store(self) -> TaskStore:
        return TaskStore(self.deps.db)

    async def handle(self, message: ReceivedMessage) -> None:
        try:
            body = TaskMessage.model_validate_json(message.body)
        except ValueError:
            log.warning("message %s is not a task message; after %d deliveries it goes to the "
                        "dead-letter queue: %.200s", message.message_id,
                        self.deps.settings.max_receive_count, message.body)
            return
        log.debug("task %s: delivery %d", body.task_id, message.receive_count)
        # Every run of the task joins the trace of the request that submitted it.
        token = attach(message.attributes)
        try:
            await self._handle(body, message)
        except LeaseLost:
            # Another worker continues the task from its last checkpoint; this message is
            # stale (that worker has its own).
            await self.deps.queue.delete(message)
        except Exception as exc:
            log.exception("task %s failed on delivery %d", body.task_id, message.receive_count)
            await self._release(body.task_id)
            last = message.receive_count >= self.deps.settings.max_receive_count
            if last:
                await self._finish(body.task_id, TaskStatus.FAILED, output=None, error={
                    "type": "delivery_failed",
                    "message": f"the task failed {message.receive_count} deliveries; last error: "
                               f"{type(exc).__name__}: {exc}"})
            # Back soon: delivered again, or after the last one moved to the dead-letter queue.
            await self._retry_soon(message, 0 if last else retry_after(message.receive_count))
        finally:
            detach(token)

    async def _retry_soon(self, message: ReceivedMessage, seconds: int) -> None:
        """The next receive after `seconds`, not the whole visibility timeout."""
        try:
            await self.deps.queue.change_visibility(message, seconds)
        except Exception as exc:  # then it comes back when the visibility timeout ends
            log.warning("message %s: could not shorten its visibility for a retry: %s",
                        message.message_id, exc)

    async def _handle(self, body: TaskMessage, message: ReceivedMessage) -> None:
        asked = time.monotonic()
        task = await self.store.take_lease(body.task_id, self.worker_id, self.lease_seconds,
                                           body.delivery)
        if task is None:
            await self._not_taken(body, message)
            return
        task_id = str(task["id"])
        lease = Lease(store=self.store, task_id=task_id, worker=self.worker_id,
                      epoch=int(task["epoch"]), seconds=self.lease_seconds)
        lease.renewed(asked)
        assert self.leases is not None
        self.leases.add(lease)
        try:
            await self._run_leased(task, lease, body, message)
        except LeaseLost as lost:
            lease.lose(str(lost))  # says once, in the worker's log, why the run stopped
            raise
        finally:
            self.leases.remove(lease)

    async def _run_leased(self, task: Any, lease: Lease, body: TaskMessage,
                          message: ReceivedMessage) -> None:
        db = self.deps.db
        task_id = lease.task_id
        if task["cancel_requested_at"] is not None:
            await self._finish(task_id, TaskStatus.CANCELLED, lease=lease, output=None,
                               error={"type": "cancelled", "message": "the task was cancelled"})
            await self.deps.queue.delete(message)
            return
        await self.events.claim(task_id, lease.epoch)  # older runs publish nothing more
        if lease.epoch > 1:
            await self._show_unshown_steps(task_id, lease.epoch)
        await self.events.publish(task_id, StatusData(status=TaskStatus.RUNNING,
                                                      worker=self.worker_id), epoch=lease.epoch)
        if self.model is None:
            await self._finish(task_id, TaskStatus.FAILED, lease=lease, output=None,
                               error={"type": "model_unavailable", "message": self.model_problem})
            await self.deps.queue.delete(message)
            return
        allowance = None
        if self.quotas is not None:
            allowance = await self.quotas.allowance(db, str(task["user_id"]), task_id=task_id)
            used = _tokens(task["usage"])
            if allowance.left <= used:
                await self._finish(task_id, TaskStatus.FAILED, lease=lease, output=None, error={
                    "type": "budget_exceeded", "message": allowance.exhausted(used)})
                await self.deps.queue.delete(message)
                return

        # Hidden from other workers from here on: the cache lookup may wait on embeddings.
        heartbeat = asyncio.create_task(self._keep_hidden(message))
        try:
            lookup = await self._cache_lookup(task, lease, body)
            if lookup.hit is not None:
                await self._answer_from_cache(task, lease, lookup.hit)
                await self.deps.queue.delete(message)
                return
            if body.resume is not None and body.resume.approval_id:
                await self._trace_wait(body.resume.approval_id)
            await self._seed_fork(task, lease)
            result = await self._run_graph(task, body, lease, allowance, lookup)
        except ForkError as cannot:
            await self._finish(task_id, TaskStatus.FAILED, lease=lease, output=None,
                               error={"type": "fork_failed", "message": str(cannot)})
            await self.deps.queue.delete(message)
            return
        except RunInterrupted as stop:
            if stop.why == "cancelled":
                await self._finish(task_id, TaskStatus.CANCELLED, lease=lease, output=None,
                                   error={"type": "cancelled", "message": "the task was cancelled"})
                await self.deps.queue.delete(message)
            else:
                # Shutting down: the step in flight is done and checkpointed; another worker
                # picks the task up from there as soon as the message is visible again.
                await self._release(task_id, lease)
                await self.deps.queue.change_visibility(message, 0)
            return
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)

        if result.status is TaskStatus.PENDING_APPROVAL:
            await self._await_approval(task_id, result, lease)
        elif result.status is TaskStatus.SUCCEEDED:
            # Kept before the end is recorded: a task sent after this one ended finds it.
            await self._keep_for_cache(task, result, lookup)
            await self._finish(task_id, TaskStatus.SUCCEEDED, lease=lease,
                               output=result.final_answer, error=None, usage=result.recorded_usage())
        else:
            assert result.stop is not None
            error = {"type": result.stop["kind"], "message": result.stop["message"]}
            if allowance is not None and result.stop["kind"] == "budget_exceeded" and \
                    await self._quota_was_the_budget(task):
                error["message"] = allowance.exhausted(_tokens(result.usage))
            await self._finish(task_id, TaskStatus.FAILED, lease=lease,
                               output=result.partial or None, error=error, usage=result.recorded_usage())
        await self.deps.queue.delete(message)

    async def _seed_fork(self, task: Any, lease: Lease) -> None:
        """A fork's first run: its thread starts as the original's checkpoint at the step it
        forks from, and its record and ledger as the original's up to there."""
        fork = task_options(task).get("fork")
        thread_id = str(task["conversation_id"])
        if not fork:
            return
        snapshot = await self.graph.aget_state(thread_config(thread_id))
        if snapshot.values.get("task_id") == str(task["id"]):
            return  # seeded on an earlier delivery
        source = await self.deps.db.fetchrow(
            "SELECT conversation_id FROM tasks WHERE id = $1::uuid", fork["task_id"])
        if source is None:
            raise ForkError(f"the task it forks from ({fork['task_id']}) no longer exists")
        token = fence.CURRENT.set(lease)  # the seed checkpoint too is written under the lease
        try:
            upto = await fork_thread(
                self.graph, source_thread=str(source["conversation_id"]),
                source_task=str(fork["task_id"]), from_step=int(fork["from_step"]),
                target_thread=thread_id, target_task=str(task["id"]),
                instruction=fork.get("instruction"), tool_results=fork.get("tool_results"))
        finally:
            fence.CURRENT.reset(token)
        await self.store.copy_history(str(fork["task_id"]), str(task["id"]), upto)

    async def _quota_was_the_budget(self, task: Any) -> bool:
        """Whether the run's token budget was cut below the task's own by the daily quota."""
        snapshot = await self.graph.aget_state(thread_config(str(task["conversation_id"])))
        budget = snapshot.values.get("token_budget")
        own = task_options(task).get("token_budget")
        return budget is not None and (own is None or budget < own)

    def _speculator(self, task: Any) -> Speculator | None:
        """The run's speculative calls, unless the deployment or the task turned them off."""
        settings = self.deps.settings
        if not settings.speculation or task_options(task).get("speculation") is False:
            return None
        return Speculator(toolset=self.toolset, policy=self.policy, tool_deps=self.tool_deps,
                          db=self.deps.db, redis=self.deps.redis, limit=settings.speculation_max,
                          outputs=self.outputs)

    def _model_cache(self, task: Any) -> ModelCache | None:
        """The exact model-call cache, unless turned off, or the task is a "run again"
        (`cache: false`), which asks the model anew."""
        settings = self.deps.settings
        if not settings.model_cache or task_options(task).get("cache") is False:
            return None
        return ModelCache(db=self.deps.db, user_id=str(task["user_id"]),
                          ttl_seconds=settings.model_cache_ttl_seconds)

    # -- the semantic task cache and plan reuse (app/task_cache.py) ------------------------

    @functools.cached_property
    def _task_cache(self) -> TaskCache | None:
        """The semantic task cache, where the tools have an embeddings client."""
        settings = self.deps.settings
        embedder = getattr(self.tool_deps, "embedder", None)
        if embedder is None:
            return None
        return TaskCache(db=self.deps.db, embedder=embedder, toolset=self.toolset,
                         threshold=settings.cache_threshold,
                         ttl_seconds=settings.cache_ttl_seconds,
                         live_ttl_seconds=settings.cache_live_ttl_seconds,
                         plan_reuse=settings.plan_reuse)

    async def _cache_lookup(self, task: Any, lease: Lease, body: TaskMessage) -> Lookup:
        """On a task's first run only: a run taken over or resumed has begun already."""
        cache = self._task_cache
        if cache is None or lease.epoch > 1 or body.resume is not None:
            return Lookup(outcome=None)
        wanted = bool(task_options(task).get("cache", self.deps.settings.semantic_cache))
        with span("task_cache lookup", attributes={"cadre.cache.kind": "task",
                                                   "cadre.task.id": str(task["id"])}) as traced:
            lookup = await cache.lookup(task, wanted=wanted)
            if lookup.outcome is not None:
                traced.set_attribute("cadre.cache.outcome", lookup.outcome)
            closest = lookup.hit or lookup.nearest
            if closest is not None:
                traced.set_attribute("cadre.cache.similarity", closest.similarity)
        if lookup.outcome is not None or lookup.plan_from is not None:
            shown = closest if lookup.outcome in ("hit", "near_miss") else None
            await self.events.publish(str(task["id"]), CacheData(
                outcome=lookup.outcome, source_task=shown.task_id if shown else None,
                cached_at=shown.at if shown else None,
                similarity=round(shown.similarity, 4) if shown else None,
                threshold=cache.threshold,
                plan_from=lookup.plan_from.task_id if lookup.plan_from else None),
                epoch=lease.epoch)
            if lookup.outcome is not None:
                await count_cache(self.deps.redis, "task", lookup.outcome)
        if lookup.plan_from is not None and lookup.hit is None:
            await count_cache(self.deps.redis, "plan", "hit")
        return lookup

    async def _answer_from_cache(self, task: Any, lease: Lease, hit: Earlier) -> None:
        """The earlier answer is this task's: on its thread (a follow-up in the conversation
        reads it as said) and as its end, marked with where it came from."""
        task_id = str(task["id"])
        cached_from = {"task_id": hit.task_id, "at": hit.at.isoformat(),
                       "similarity": round(hit.similarity, 4)}
        marked = await self.deps.db.fetchval(
            "UPDATE tasks SET options = options || jsonb_build_object('cached_from', $2::jsonb) "
            "WHERE id = $1::uuid AND lease_owner = $3 AND epoch = $4 RETURNING true",
            task_id, json.dumps(cached_from), lease.worker, lease.epoch)
        if not marked:
            lease.lose(f"task {task_id}: another worker took it over before its cached answer")
            raise LeaseLost(f"task {task_id} is no longer leased to {lease.worker}")
        token = fence.CURRENT.set(lease)
        try:
            state = await start_state(self.deps.db, task, token_budget=None)
            state["messages"] = [*state["messages"], AIMessage(hit.answer)]
            state["final_answer"] = hit.answer
            # What the earlier answer was built on is in this conversation now.
            state["untrusted"] = [*state.get("untrusted", []), *hit.untrusted]
            await self.graph.aupdate_state(thread_config(str(task["conversation_id"])),
                                           dict(state), as_node="verify")
        finally:
            fence.CURRENT.reset(token)
        await self._finish(task_id, TaskStatus.SUCCEEDED, lease=lease, output=hit.answer,
                           error=None, usage={"tokens_in": 0, "tokens_out": 0, "model_calls": 0},
                           cached_from=cached_from)

    async def _keep_for_cache(self, task: Any, result: RunResult, lookup: Lookup) -> None:
        cache = self._task_cache
        if cache is None:
            return
        try:
            await cache.record(task, result.final_answer or "", embedding=lookup.embedding,
                               untrusted=result.untrusted)
        except (asyncpg.PostgresError, OSError) as exc:  # the task's end matters more
            log.warning("task %s: not kept for the cache: %s", task["id"], exc)

    async def _run_graph(self, task: Any, body: TaskMessage, lease: Lease,
                         allowance: DailyAllowance | None = None,
                         lookup: Lookup | None = None) -> RunResult:
        task_id = str(task["id"])
        assert self.model is not None
        deps = GraphDeps(
            model=self.model, toolset=self.toolset, policy=self.policy,
            ledger=Ledger(self.deps.db, lease=(lease.worker, lease.epoch)),
            recorder=Recorders(StepStore(self.deps.db, lease=(lease.worker, lease.epoch)),
                               StepPublisher(self.events, epoch=lease.epoch),
                               StepMetrics(self.deps.redis)),
            redis=self.deps.redis, context_tokens=self.deps.settings.context_tokens,
            tool_deps=self.tool_deps, audit=PolicyAudit(self.deps.db), screen=self.screen,
            tracing=self.tracing, fence=lease, parallel_tools=self.deps.settings.parallel_tools,
            speculator=self._speculator(task), model_cache=self._model_cache(task),
            team=self.team, outputs=self.outputs,
        )

        plan_from = lookup.plan_from if lookup is not None else None

        async def fresh() -> AgentState:
            await self._stage_inputs(task_id)
            state = await start_state(self.deps.db, task, token_budget=_budget(task, allowance))
            if plan_from is not None:
                state["reference_plan"] = {"task_id": plan_from.task_id, "steps": plan_from.plan,
                                           "similarity": round(plan_from.similarity, 4)}
            return state

        async def on_token(text: str) -> None:
            await self.events.publish(task_id, TokenData(text=text), epoch=lease.epoch)

        async def at_boundary() -> Literal["cancelled", "shutdown"] | None:
            if await self._cancel_requested(task_id):
                return "cancelled"
            return "shutdown" if self.stopping.is_set() else None

        thread_id = str(task["conversation_id"])
        decision = body.resume
        if decision is None and lease.epoch > 1:
            decision = await self._decision_on_record(task_id, thread_id)
        # The quota may have been spent while the task waited: its budget is set anew.
        return await run_task(self.graph, deps, thread_id=thread_id,
                              task_id=task_id, fresh=fresh, decision=decision,
                              token_budget=_budget(task, allowance), on_token=on_token,
                              at_boundary=at_boundary)

    async def _decision_on_record(self, task_id: str, thread_id: str) -> ApprovalDecision | None:
        """A message without the person's decision (the sweeper's, or one sent again after the
        queue lost the one that carried it) resumes a run waiting on a call with the decision
        recorded for that call, instead of asking again."""
        snapshot = await self.graph.aget_state(thread_config(thread_id))
        if snapshot.values.get("task_id") != task_id or not snapshot.interrupts:
            return None
        held = waiting(snapshot).value
        call_id = held.get("tool_call_id") if isinstance(held, dict) else None
        return await self.store.decision_for(task_id, call_id) if call_id else None

    async def _trace_wait(self, approval_id: str) -> None:
        """The time the task waited for a person, as a span of its trace."""
        row = await self.store.approval(approval_id)
        if row is not None:
            record_wait(f"approval_wait {row['tool_name']}", started=row["created_at"],
                        ended=row["decided_at"], attributes={
                            "gen_ai.tool.name": row["tool_name"],
                            "gen_ai.tool.call.id": row["tool_call_id"],
                            "cadre.approval.id": approval_id,
                            "cadre.approval.status": row["status"]})

    async def _stage_inputs(self, task_id: str) -> None:
        """Put the task's uploaded files where its sandbox shows them (read-only)."""
        sandbox = getattr(self.tool_deps, "sandbox", None)
        if sandbox is not None:
            store = FileStore(self.deps.settings.home / "files", self.deps.db)
            await store.copy_to(task_id, sandbox.inputs(task_id))

    async def _cancel_requested(self, task_id: str) -> bool:
        return await self.store.cancel_requested(task_id)

    async def _await_approval(self, task_id: str, result: RunResult, lease: Lease) -> None:
        approval = result.approval
        assert approval is not None, "a run waiting for a person says what for"
        approval_id = await self.store.hold(
            task_id, tool_call_id=approval.tool_call_id, tool=approval.tool,
            arguments=approval.arguments, reason=approval.reason, risk=approval.risk,
            usage=result.recorded_usage(), lease=(lease.worker, lease.epoch))
        if approval_id is None:
            lease.lose(f"task {task_id}: another worker took it over before its approval was "
                       "recorded")
            raise LeaseLost(f"task {task_id} is no longer leased to {lease.worker}")
        await self.events.publish_all(task_id, [ApprovalRequiredData(
            approval_id=str(approval_id), tool=approval.tool, arguments=approval.arguments,
            risk=approval.risk, reason=approval.reason, rule=approval.rule, agent=approval.agent),
            StatusData(status=TaskStatus.PENDING_APPROVAL)])

    async def _finish(self, task_id: str, status: TaskStatus, *, output: str | None,
                      error: dict[str, Any] | None, usage: Mapping[str, Any] | None = None,
                      lease: Lease | None = None,
                      cached_from: dict[str, Any] | None = None) -> None:
        async with self.deps.db.acquire() as conn, conn.transaction():
            await conn.execute(BOUNDED_SQL)  # a paused worker must not hold the locks
            updated = await self.store.finish(
                conn, task_id, status, output=output, error=error,
                usage=dict(usage) if usage else None,
                lease=(lease.worker, lease.epoch) if lease is not None else None)
            following = await self.service.finish(conn, task_id) if updated else None
            if updated:  # with the end, atomically: a recorded end is never without its webhook
                await WebhookStore(conn).task_ended(task_id, status, output=output, error=error,
                                                    usage=dict(usage) if usage else None)
        if not updated:
            if lease is not None and await self.store.lease_left(
                    task_id, lease.worker, lease.epoch) is None:
                lease.lose(f"task {task_id}: another worker took it over before its end was "
                           "recorded")
                raise LeaseLost(f"task {task_id} is no longer leased to {lease.worker}")
            return
        sandbox = getattr(self.tool_deps, "sandbox", None)
        if sandbox is not None:
            await sandbox.close(task_id)  # the task's interpreter ends with the task
        # The end is recorded: announcing it is no longer fenced (a run that lost its lease
        # cannot have got here).
        await self._announce_end(task_id, status, output=output, error=error, usage=usage,
                                 cached_from=cached_from)
        await self.service.dispatch(following)

    async def _announce_end(self, task_id: str, status: TaskStatus, *, output: str | None,
                            error: dict[str, Any] | None, usage: Mapping[str, Any] | None,
                            cached_from: dict[str, Any] | None = None) -> None:
        end: AnyEventData
        if status == TaskStatus.SUCCEEDED:
            end = FinalData(output=output, usage={k: int(v) for k, v in (usage or {}).items()
                                                  if isinstance(v, int)},
                            agents=(usage or {}).get("agents"), cached_from=cached_from)
        else:
            end = ErrorData(type=str((error or {}).get("type", "failed")),
                            message=str((error or {}).get("message", "")), partial=output)
        await self.events.publish_all(task_id, [end, StatusData(status=TaskStatus(status))])

    async def _repair_end(self, task_id: str) -> None:
        """A worker that died between recording a task's end and announcing it (or sending
        the conversation's next task) left the message behind: finish that work now."""
        row = await self.store.ended(task_id)
        assert row is not None
        history = await self.events.history(task_id)
        if not history or not history[-1].ends_stream:
            error, usage = (json.loads(v) if isinstance(v, str) else v
                            for v in (row["error"], row["usage"]))
            await self._announce_end(task_id, TaskStatus(row["status"]), output=row["final_output"],
                                     error=error, usage=usage)
        for other in await self.store.stranded(row["conversation_id"]):
            await self.service.dispatch(other)

    async def _show_unshown_steps(self, task_id: str, epoch: int) -> None:
        """Publish the events of steps an earlier run recorded but did not live to show (it
        died between the two writes). The claim came first, so that run can add none now:
        every step is shown once."""
        shown = {getattr(e.data, "step", None) for e in await self.events.history(task_id)}
        for step in (await task_steps(self.deps.db, [task_id])).get(task_id, []):
            if step.number not in shown and (events := step_events(step)):
                log.info("task %s: showing step %d, recorded by a run that did not show it",
                         task_id, step.number)
                await self.events.publish_all(task_id, events, epoch=epoch)

    async def _release(self, task_id: str, lease: Lease | None = None) -> None:
        with contextlib.suppress(Exception):
            await self.store.release_lease(task_id, self.worker_id,
                                           lease.epoch if lease is not None else None)

    async def _not_taken(self, body: TaskMessage, message: ReceivedMessage) -> None:
        task_id = body.task_id
        row = await self.store.lease_state(task_id)
        if row is None or row["status"] in TERMINAL | {TaskStatus.PENDING_APPROVAL}:
            # A duplicate or stale delivery: nothing left to run for it.
            if row is not None and row["status"] == TaskStatus.PENDING_APPROVAL:
                # The run that held the call may have died before announcing the request.
                await self.service.show_unshown_approvals(task_id)
            elif row is not None:
                await self._repair_end(task_id)
            log.info("task %s: message %s (delivery %s) came for a task that is %s; dropped",
                     task_id, message.message_id, body.delivery,
                     row["status"] if row is not None else "gone")
            await self.deps.queue.delete(message)
            return
        if body.delivery is not None:
            # A message sent before the task's newest (a dead worker's, back after its
            # visibility timeout), or a second copy of the one another worker is running:
            # that worker, or the sweeper if it dies, sees the task through.
            why = "stale" if body.delivery < row["delivery"] else "a duplicate"
            log.info("task %s: message %s is %s (delivery %d, the task's %d); dropped",
                     task_id, message.message_id, why, body.delivery, row["delivery"])
            await self.deps.queue.delete(message)
            return
        # Another live worker holds the lease: come back when it would have expired.
        wait = int(min(max(float(row["left_s"] or 0) + 5, 5), 900))
        log.info("task %s is leased by another worker; retry in %ds", task_id, wait)
        await self.deps.queue.change_visibility(message, wait)

    async def _keep_hidden(self, message: ReceivedMessage) -> None:
        """Keep the task's message from other workers while it runs (the lease itself is
        renewed with the worker's other leases)."""
        seconds = self.deps.settings.visibility_seconds
        while True:  # the receive hid it for a few seconds only (HANDOFF_SECONDS)
            await self.deps.queue.change_visibility(message, seconds)
            await asyncio.sleep(seconds / 3)


def retry_after(deliveries: int) -> int:
    """Seconds before a failed task's next delivery: 1, 2, 4, ... up to a minute."""
    return int(min(2 ** (deliveries - 1), 60))


async def start_state(db: asyncpg.Pool, task: Any, *, token_budget: int | None) -> AgentState:
    """The graph input that starts `task` (a `tasks` row): its text, its owner's role and
    email, its options. A run and a replay of the task start from the same state."""
    options = task_options(task)
    user = await db.fetchrow("SELECT role, email FROM users WHERE id = $1::uuid", task["user_id"])
    return task_input(task_id=str(task["id"]), text=task["input"], role=user["role"],
                      user_email=user["email"], max_iterations=options.get("max_iterations", 15),
                      token_budget=token_budget, input_flags=options.get("input_flags"),
                      mode=options.get("mode", "single"))



def _budget(task: Any, allowance: DailyAllowance | None) -> int | None:
    """The run's token budget: the task's own, cut to what the daily quota leaves."""
    own = task_options(task).get("token_budget")
    return own if allowance is None else allowance.budget(own)


def _tokens(usage: Any) -> int:
    usage = json.loads(usage) if isinstance(usage, str) else usage or {}
    return int(usage.get("tokens_in", 0)) + int(usage.get("tokens_out", 0))
