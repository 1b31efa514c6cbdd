"""Running a task on the graph: start it, resume it after an approval, or continue it from
its last checkpoint after a crash. Each returns where the task now stands."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command

from graph.builder import AgentGraph
from graph.deps import GraphDeps
from graph.errors import RunFailure
from graph.nodes._common import partial_result
from graph.state import AgentState, PlanStep, Stop, Usage, empty_usage

DEFAULT_MAX_ITERATIONS = 15


@dataclass(frozen=True, kw_only=True)
class RunResult:
    status: Literal["succeeded", "failed", "pending_approval"]
    final_answer: str | None
    stop: Stop | None
    partial: str
    usage: Usage
    plan: list[PlanStep]
    approval: dict[str, Any] | None


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
) -> AgentState:
    """The input that starts a task on a conversation's thread, resetting per-task fields.
    `input_flags` (injection phrasings found in `text`) make the text itself untrusted."""
    return AgentState(
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
        step=0, final_answer=None, stop=None,
    )


def thread_config(thread_id: str) -> RunnableConfig:
    """The run configuration of a conversation's thread."""
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": 500}


async def start(graph: AgentGraph, deps: GraphDeps, *, thread_id: str, input: AgentState) -> RunResult:
    return await _run(graph, deps, thread_id, input)


async def resume(graph: AgentGraph, deps: GraphDeps, *, thread_id: str,
                 decision: dict[str, Any]) -> RunResult:
    """Answer the pending approval: `{"decision": "approve" | "reject", "comment": ...}`."""
    return await _run(graph, deps, thread_id, Command(resume=decision))


async def proceed(graph: AgentGraph, deps: GraphDeps, *, thread_id: str) -> RunResult:
    """Continue from the last checkpoint (after a crash): finished steps are not run again."""
    return await _run(graph, deps, thread_id, None)


async def _run(graph: AgentGraph, deps: GraphDeps, thread_id: str, payload: Any) -> RunResult:
    try:
        await graph.ainvoke(payload, thread_config(thread_id), context=deps, durability="sync")
    except RunFailure as failure:
        return await failed(graph, thread_id, failure)
    return await outcome(graph, thread_id)


async def failed(graph: AgentGraph, thread_id: str, failure: RunFailure) -> RunResult:
    """The outcome of a run a node ended by raising (the model endpoint gave up): the
    checkpoint holds the last finished step, so the task can also be retried with `proceed`."""
    result = await outcome(graph, thread_id)
    return replace(result, status="failed", stop=Stop(kind=failure.kind, message=failure.message))


async def outcome(graph: AgentGraph, thread_id: str) -> RunResult:
    snapshot = await graph.aget_state(thread_config(thread_id))
    values = cast(AgentState, snapshot.values)
    approval = next((i.value for i in snapshot.interrupts), None)
    stop = values.get("stop")
    if approval is not None:
        status: Literal["succeeded", "failed", "pending_approval"] = "pending_approval"
    elif values.get("final_answer") is not None and not stop:
        status = "succeeded"
    else:
        status = "failed"
    return RunResult(
        status=status,
        final_answer=values.get("final_answer"),
        stop=stop,
        partial=partial_result(values),
        usage=values.get("usage") or empty_usage(),
        plan=values.get("plan") or [],
        approval=approval,
    )
