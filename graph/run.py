"""The one run loop. `run_task` decides from the conversation's checkpoint whether a task
starts, resumes after an approval, or continues after a crash, and `drive` runs the graph
from there: streaming the model's tokens to `on_token`, stopping at a step boundary when
`at_boundary` says so, turning a run failure into its outcome. Workers and `cadre run` both
use it; `start`, `resume` and `proceed` are the same loop with the payload chosen by hand."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, cast
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command, Interrupt, StateSnapshot
from opentelemetry.trace import Status, StatusCode

from graph import fence
from graph.approvals import ApprovalDecision, ApprovalRequest
from graph.builder import AgentGraph
from graph.deps import GraphDeps
from graph.errors import RunFailure
from graph.nodes._common import partial_result
from graph.recorder import Steps
from graph.speculation import Speculator
from graph.state import AgentState, PlanStep, Stop, Usage, empty_usage
from graph.status import TaskStatus
from graph.steps import MAIN_AGENT, MANAGER, RunStopped
from graph.tracing import agent_span

log = logging.getLogger(__name__)

DEFAULT_MAX_ITERATIONS = 15

OnToken = Callable[[str], Awaitable[None]]
T = TypeVar("T")
# Asked after every step: "cancelled" or "shutdown" to stop there, None to go on.
AtBoundary = Callable[[], Awaitable[Literal["cancelled", "shutdown"] | None]]


class RunInterrupted(Exception):
    """The run stopped at a step boundary because `at_boundary` asked (`why`). The step in
    flight is done and checkpointed; the task can go on from there."""

    def __init__(self, why: Literal["cancelled", "shutdown"]) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """Where a task stands after a run: SUCCEEDED, FAILED or PENDING_APPROVAL."""

    status: TaskStatus
    final_answer: str | None
    stop: Stop | None
    partial: str
    usage: Usage
    plan: list[PlanStep]
    approval: ApprovalRequest | None
    # Where untrusted content in the conversation's context came from, as the run left it.
    untrusted: list[str]
    # A team's usage per agent path (the manager's own and each worker's); {} for one agent.
    agents: dict[str, Usage] = field(default_factory=dict)

    def recorded_usage(self) -> dict[str, Any]:
        """The usage as a task keeps it: the total, and a team's per agent (`agents`)."""
        return {**self.usage, "agents": self.agents} if self.agents else dict(self.usage)


def task_input(
    *,
    task_id: str,
    text: str,
    role: str = "analyst",
    user_email: str = "",
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    token_budget: int | None = None,
    deadline_seconds: float | None = None,
    input_flags: list[str] | None = None,
    reference_plan: dict[str, Any] | None = None,
    mode: str = "single",
) -> AgentState:
    """The input that starts a task on a conversation's thread, resetting per-task fields.
    `input_flags` (injection phrasings found in `text`) make the text itself untrusted. A
    single agent's input leaves the team's fields out (each is one more channel in every
    checkpoint): `fresh_input` resets them only where an earlier team task left them."""
    state = AgentState(
        messages=[HumanMessage(text)],
        untrusted=[f"the task's text ({', '.join(input_flags)})"] if input_flags else [],
        task_id=task_id,
        role=role,
        user_email=user_email,
        max_iterations=max_iterations,
        token_budget=token_budget,
        deadline=time.time() + deadline_seconds if deadline_seconds else None,
        plan=[], current_step=0, iterations=0, usage=empty_usage(), observations=[], errors=[],
        decisions=[], recent_calls=[], repeat_replans=0, verify_failures=0, replan_reason=None,
        step=0, final_answer=None, stop=None, reference_plan=reference_plan,
    )
    if mode != "single":
        # A team's manager takes the task's own steps; its workers get paths under it.
        state.update(cast(AgentState, {**TEAM_FIELDS, "mode": mode,
                                       "agent": MANAGER if mode == "team" else MAIN_AGENT}))
    return state


# The team's per-task fields as a single-agent task has them.
TEAM_FIELDS: dict[str, Any] = {"mode": "single", "agent": MAIN_AGENT, "agent_results": [],
                               "delegations": {}, "team_replans": 0, "agent_usage": {},
                               "wave": []}


def fresh_input(earlier: dict[str, Any], input: AgentState) -> AgentState:
    """`input` with the team's fields reset where the thread's previous task (`earlier`, its
    last values) left them otherwise."""
    reset = {key: value for key, value in TEAM_FIELDS.items()
             if key not in input and earlier.get(key) not in (None, value)}
    return cast(AgentState, {**input, **reset}) if reset else input


def thread_config(thread_id: str) -> RunnableConfig:
    """The run configuration of a conversation's thread."""
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": 500}


async def run_task(graph: AgentGraph, deps: GraphDeps, *, thread_id: str, task_id: str,
                   fresh: Callable[[], Awaitable[AgentState]],
                   decision: ApprovalDecision | None = None,
                   token_budget: int | None = None, on_token: OnToken | None = None,
                   at_boundary: AtBoundary | None = None) -> RunResult:
    """Run task `task_id` on its conversation's thread from wherever its checkpoint stands:
    start it (`fresh()` makes the input), resume it with `decision` when it waits for one,
    continue it when a run stopped mid-way, or just report it when it has finished or still
    waits. `token_budget`, when given, replaces the run's budget on resume (a daily quota
    may have shrunk while it waited)."""
    snapshot = await graph.aget_state(thread_config(thread_id))
    ours = snapshot.values.get("task_id") == task_id
    payload: Any
    if ours and snapshot.interrupts:
        if decision is None:
            return await outcome(graph, thread_id)  # still waiting for a person
        changed = token_budget is not None and token_budget != snapshot.values.get("token_budget")
        # Worker agents of a team may wait at once: the decision answers the one reported.
        payload = Command(resume={waiting(snapshot).id: decision.model_dump()},
                          update={"token_budget": token_budget} if changed else None)
    elif ours and snapshot.tasks:
        # Stopped mid-run (crash or shutdown): continue from the last checkpoint. A step
        # whose writes were saved is not run again (`next` omits it; `tasks` does not).
        payload = None
    elif ours:
        return await outcome(graph, thread_id)  # finished, but its end not yet recorded
    else:
        payload = fresh_input(snapshot.values, await fresh())
    return await drive(graph, deps, thread_id, payload, task_id=task_id, on_token=on_token,
                       at_boundary=at_boundary)


async def drive(graph: AgentGraph, deps: GraphDeps, thread_id: str, payload: Any, *,
                task_id: str = "", on_token: OnToken | None = None,
                at_boundary: AtBoundary | None = None) -> RunResult:
    """Run the graph from `payload` until it finishes, waits for a person, fails, or
    `at_boundary` stops it (`RunInterrupted`, after recording a cancellation). The run is
    one `invoke_agent` span, under whatever span is current."""
    with agent_span(deps.tracing, task_id=task_id, conversation_id=thread_id,
                    model=deps.model_name) as traced:
        try:
            try:
                ended = await _astream(graph, deps, thread_id, payload, on_token, at_boundary)
            finally:
                if deps.speculator is not None:
                    await deps.speculator.aclose()  # no speculative call outlives its run
        except RunFailure as failure:
            result = await failed(graph, deps, thread_id, failure)
        except RunInterrupted as stopped:
            traced.set_attribute("cadre.run.interrupted", stopped.why)
            raise
        else:
            # A run that finished reports from its last values; one that waits, from its
            # checkpoint (which says what it waits for).
            result = _result(ended, None) if ended is not None else await outcome(graph, thread_id)
        traced.set_attribute("cadre.run.status", result.status.value)
        if result.stop is not None:
            traced.set_attribute("cadre.run.stop", result.stop["kind"])
            traced.set_status(Status(StatusCode.ERROR, result.stop["message"][:200]))
            traced.set_attribute("error.type", result.stop["kind"])
        traced.set_attribute("gen_ai.usage.input_tokens", result.usage["tokens_in"])
        traced.set_attribute("gen_ai.usage.output_tokens", result.usage["tokens_out"])
        return result


# The answer's tokens go to `on_token` together, at most this long after the first of them
# arrived: one event per token cost the worker a Redis write each (docs/performance.md). The
# SSE streams already send a follower's events at most every 50 ms.
TOKEN_FLUSH_SECONDS = 0.05


class _AnswerTokens(AsyncCallbackHandler):
    """Hands the act node's answer tokens to `on_token` as the model streams them, inside
    the node: the tokens that arrived within `flush_seconds` together, and the last of them
    when the model's answer ends, before the node records its step, so a stream never shows
    a token after the step that holds the whole answer (as LangGraph's `messages` stream
    mode, drained by the consumer later, could)."""

    def __init__(self, on_token: OnToken | None, speculator: Speculator | None = None, *,
                 flush_seconds: float = TOKEN_FLUSH_SECONDS) -> None:
        self.on_token = on_token
        self.speculator = speculator
        self.answering: set[UUID] = set()
        self.flush_seconds = flush_seconds
        self._held: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # flushes hand text on in the order it came

    # These two make it a streaming handler to LangChain (a runtime-checked protocol), as
    # LangGraph's own `messages` handler is: with one present a chat model streams its
    # answer (each chunk a callback) instead of returning it whole.
    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[T]) -> AsyncIterator[T]:
        return output

    def tap_output_iter(self, run_id: UUID, output: Iterator[T]) -> Iterator[T]:
        return output

    async def on_chat_model_start(self, serialized: dict[str, Any],
                                  messages: list[list[BaseMessage]], *, run_id: UUID,
                                  metadata: dict[str, Any] | None = None,
                                  **kwargs: Any) -> None:
        metadata = metadata or {}
        # The answer's tokens: a single agent's, or a team manager's (not its workers').
        if metadata.get("langgraph_node") in ("act", "team_answer") and \
                "worker:" not in str(metadata.get("langgraph_checkpoint_ns", "")):
            self.answering.add(run_id)

    async def on_llm_new_token(self, token: str | list[str | dict[str, Any]], *,
                               chunk: Any = None, run_id: UUID,
                               parent_run_id: UUID | None = None,
                               tags: list[str] | None = None, **kwargs: Any) -> None:
        if run_id not in self.answering:
            return
        message = getattr(chunk, "message", None)
        if self.speculator is not None and getattr(message, "tool_call_chunks", None):
            # A read-only call whose arguments are complete starts before the message ends.
            self.speculator.offer_chunks(run_id, message.tool_call_chunks)  # type: ignore[union-attr]
        if self.on_token is None:
            return
        text = token if isinstance(token, str) else "".join(
            part if isinstance(part, str) else str(part.get("text", "")) for part in token)
        if text:
            self._held.append(text)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.flush_seconds,
                                                                    self._flush_later)

    def _flush_later(self) -> None:
        self._timer = None
        self._flushing = asyncio.ensure_future(self._flush())
        self._flushing.add_done_callback(_log_failure)

    async def _flush(self) -> None:
        async with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._held or self.on_token is None:
                return
            text, self._held = "".join(self._held), []
            await self.on_token(text)

    async def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.answering.discard(run_id)
        await self._flush()

    async def on_llm_error(self, error: BaseException, *, run_id: UUID,
                           **kwargs: Any) -> None:
        self.answering.discard(run_id)
        await self._flush()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("answer tokens not handed on: %s", exc)


async def _astream(graph: AgentGraph, deps: GraphDeps, thread_id: str, payload: Any,
                   on_token: OnToken | None, at_boundary: AtBoundary | None) -> AgentState | None:
    config = thread_config(thread_id)
    config["callbacks"] = [_AnswerTokens(on_token, deps.speculator)]
    # `subgraphs`: a team's workers report each of their steps too, so a cancellation or a
    # shutdown stops the run at a worker's step, not only once the whole wave is done.
    stream = cast(AsyncGenerator[Any, None], graph.astream(
        payload, config, context=deps, stream_mode=["updates", "values"], durability="sync",
        subgraphs=True))
    token = fence.CURRENT.set(deps.fence)  # the checkpointer writes only under the lease
    try:
        return await _consume(stream, graph, deps, thread_id, at_boundary)
    finally:
        fence.CURRENT.reset(token)


async def _consume(stream: AsyncGenerator[Any, None], graph: AgentGraph, deps: GraphDeps,
                   thread_id: str, at_boundary: AtBoundary | None) -> AgentState | None:
    """Drive the stream to its end; returns the run's last values when it ended (an answer or
    a stop in them, no interrupt on the way), None when the checkpoint must say how it stands
    (a run that waits for a person): `outcome` need not load the checkpoint just written."""
    why: Literal["cancelled", "shutdown"] | None = None
    last_step = 0  # the newest step number a node reported
    values: AgentState | None = None
    interrupted = False
    async with contextlib.aclosing(stream):
        async for namespace, mode, chunk in stream:
            interrupted = interrupted or "__interrupt__" in (chunk or {})
            if mode == "values":
                if not namespace:
                    values = chunk
                continue
            # The run's own steps (a worker's numbers are in its range, not the run's).
            for update in (chunk or {}).values() if not namespace else ():
                if isinstance(update, dict) and isinstance(update.get("step"), int):
                    last_step = max(last_step, update["step"])
            # A step just finished; its writes are saved (or about to be, and the aclose
            # keeps them): the boundary where the run may stop.
            if at_boundary is not None and (why := await at_boundary()) is not None:
                break
    if why is not None:
        if why == "cancelled":
            # After the stream closed: the state read for the stop's number may still have
            # lagged the step just reported, whose number it must follow.
            await _record_stop(graph, deps, thread_id, "cancelled", "the task was cancelled",
                               after=last_step)
        raise RunInterrupted(why)
    ended = values is not None and not interrupted and (
        values.get("final_answer") is not None or bool(values.get("stop")))
    return values if ended else None


async def start(graph: AgentGraph, deps: GraphDeps, *, thread_id: str,
                input: AgentState) -> RunResult:
    earlier = (await graph.aget_state(thread_config(thread_id))).values
    return await drive(graph, deps, thread_id, fresh_input(earlier, input),
                       task_id=input.get("task_id", ""))


async def resume(graph: AgentGraph, deps: GraphDeps, *, thread_id: str,
                 decision: ApprovalDecision) -> RunResult:
    """Answer the pending approval (the one `outcome` reports, when several wait)."""
    snapshot = await graph.aget_state(thread_config(thread_id))
    return await drive(graph, deps, thread_id,
                       Command(resume={waiting(snapshot).id: decision.model_dump()}))


def waiting(snapshot: StateSnapshot) -> Interrupt:
    """The approval a run waits for; when a team's workers wait for several, always the same
    one of them (the first by interrupt id) until it is answered."""
    return min(snapshot.interrupts, key=lambda i: i.id)


async def proceed(graph: AgentGraph, deps: GraphDeps, *, thread_id: str) -> RunResult:
    """Continue from the last checkpoint (after a crash): finished steps are not run again."""
    return await drive(graph, deps, thread_id, None)


async def failed(graph: AgentGraph, deps: GraphDeps, thread_id: str,
                 failure: RunFailure) -> RunResult:
    """The outcome of a run a node ended by raising (the model endpoint gave up): the
    checkpoint holds the last finished step, so the task can also be retried with `proceed`."""
    await _record_stop(graph, deps, thread_id, failure.kind, failure.message)
    result = await outcome(graph, thread_id)
    return replace(result, status=TaskStatus.FAILED,
                   stop=Stop(kind=failure.kind, message=failure.message))


async def _record_stop(graph: AgentGraph, deps: GraphDeps, thread_id: str, kind: str,
                       message: str, *, after: int = 0) -> None:
    state = cast(AgentState, (await graph.aget_state(thread_config(thread_id))).values)
    if state.get("task_id"):
        numbered = cast(AgentState, {**state, "step": max(state.get("step", 0), after)})
        await Steps(deps.recorder, numbered).add(RunStopped, stop=kind, message=message)


async def outcome(graph: AgentGraph, thread_id: str) -> RunResult:
    snapshot = await graph.aget_state(thread_config(thread_id))
    return _result(cast(AgentState, snapshot.values),
                   waiting(snapshot).value if snapshot.interrupts else None)


def _result(values: AgentState, pending: Any) -> RunResult:
    """A run's result from its values and the approval it waits for (`pending`), if any."""
    stop = values.get("stop")
    if pending is not None:
        status = TaskStatus.PENDING_APPROVAL
    elif values.get("final_answer") is not None and not stop:
        status = TaskStatus.SUCCEEDED
    else:
        status = TaskStatus.FAILED
    return RunResult(
        status=status,
        final_answer=values.get("final_answer"),
        stop=stop,
        partial=partial_result(values),
        usage=values.get("usage") or empty_usage(),
        plan=values.get("plan") or [],
        approval=ApprovalRequest.model_validate(pending) if pending is not None else None,
        untrusted=list(values.get("untrusted") or []),
        agents=_agent_usage(values),
    )


def _agent_usage(values: AgentState) -> dict[str, Usage]:
    """A team's usage per agent: each worker's, and the manager's own (the rest of the total);
    empty for a single agent."""
    workers = values.get("agent_usage") or {}
    if not workers:
        return {}
    total = values.get("usage") or empty_usage()
    own = Usage(
        tokens_in=total["tokens_in"] - sum(u["tokens_in"] for u in workers.values()),
        tokens_out=total["tokens_out"] - sum(u["tokens_out"] for u in workers.values()),
        model_calls=total["model_calls"] - sum(u["model_calls"] for u in workers.values()))
    return {values.get("agent") or MANAGER: own, **workers}
