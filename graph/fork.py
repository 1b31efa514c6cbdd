"""Forking a run: a new thread whose state is a task's checkpoint at one of its steps, from
which a new task goes on. Nothing the original did is done again by accident: the fork's
state holds the results the original had by then, and its ledger starts with the original's
finished calls, so a call the fork executes again under the same id is replayed, not re-run.
A call the model proposes anew is a new call, decided by the policy like any other (a side
effect waits for approval)."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.types import StateSnapshot

from graph.builder import AgentGraph
from graph.outputs import unstubbed
from graph.run import thread_config
from graph.state import empty_usage


class ForkError(ValueError):
    """The fork cannot start where it was asked to (no checkpoint there)."""


async def fork_thread(graph: AgentGraph, *, source_thread: str, source_task: str,
                      from_step: int, target_thread: str, target_task: str,
                      instruction: str | None = None,
                      tool_results: dict[str, str] | None = None) -> int:
    """Seed `target_thread` with `source_task`'s state as of `from_step` (the newest
    checkpoint at or before it that is not waiting for a person), the task id changed, its
    usage counted afresh, `tool_results` (call id → content) replacing what those calls
    returned, and `instruction`, if given, as a new user message. Returns the step number
    the fork's own steps follow."""
    chosen: StateSnapshot | None = None
    async for snapshot in graph.aget_state_history(thread_config(source_thread)):
        values = snapshot.values
        if values.get("task_id") != source_task or not snapshot.next or snapshot.interrupts:
            continue
        if int(values.get("step") or 0) <= from_step:
            chosen = snapshot  # the history comes newest first
            break
    if chosen is None:
        raise ForkError(f"task {source_task} has no checkpoint at or before step {from_step}")
    as_node = await _written_by(graph, chosen)
    values = dict(chosen.values)
    values.update(task_id=target_task, usage=empty_usage(), stop=None, deadline=None)
    messages = list(values.get("messages", []))
    for call_id, content in (tool_results or {}).items():
        found = [i for i, m in enumerate(messages)
                 if isinstance(m, ToolMessage) and m.tool_call_id == call_id]
        if not found:
            raise ForkError(f"the state at step {from_step} has no result of call {call_id}")
        messages[found[-1]] = unstubbed(messages[found[-1]], content)
    if instruction:
        messages.append(HumanMessage(instruction))
    values["messages"] = messages
    await graph.aupdate_state(thread_config(target_thread), values, as_node=as_node)
    return int(values.get("step") or 0)


async def _written_by(graph: AgentGraph, snapshot: StateSnapshot) -> str:
    """The node whose writes made `snapshot`: the one its parent checkpoint was to run next
    (the input when the parent belongs to an earlier task, or there is none)."""
    parent_config = snapshot.parent_config
    if parent_config is None:
        return "__start__"
    parent = await graph.aget_state(parent_config)
    parent_values: dict[str, Any] = parent.values or {}
    if parent_values.get("task_id") != snapshot.values.get("task_id") or not parent.next:
        return "__start__"
    return str(parent.next[0])
