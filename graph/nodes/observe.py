"""observe: take in the turn's results, move the plan on, and decide — loop, re-plan or stop.
It runs as part of the `tools` node (graph/nodes/tools.py)."""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import ToolMessage
from langgraph.runtime import Runtime

from graph.deps import GraphDeps
from graph.errors import RepeatedToolCalls
from graph.nodes._common import stopped
from graph.recorder import Steps
from graph.state import AgentState, PlanStep

REPEAT_LIMIT = 3


async def observe(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    decisions = state.get("decisions") or []
    results = _turn_results(state)
    observations = list(state.get("observations") or [])
    for result in results:
        verb = "returned" if result.status == "success" else "failed"
        observations.append(f"{result.name} {verb}: {' '.join(str(result.content).split())[:300]}")

    update: dict[str, Any] = {"observations": observations[-50:]}
    signatures = [f"{d['name']}:{json.dumps(d['arguments'], sort_keys=True, default=str)}"
                  for d in decisions]
    recent = (list(state.get("recent_calls") or []) + signatures)[-REPEAT_LIMIT:]
    if len(recent) == REPEAT_LIMIT and len(set(recent)) == 1:
        name = recent[0].split(":", 1)[0]
        if state.get("repeat_replans", 0) >= 1:
            return {**update, **await stopped(Steps(runtime.context.recorder, state),
                                              RepeatedToolCalls(
                f"{name} was called with the same arguments {REPEAT_LIMIT} times in a row, "
                "again after a re-plan"))}
        return {**update, "recent_calls": [], "repeat_replans": state.get("repeat_replans", 0) + 1,
                "replan_reason": f"{name} was called {REPEAT_LIMIT} times in a row with the same "
                                 "arguments; take a different approach"}
    update["recent_calls"] = recent

    plan = [PlanStep(**s) for s in state.get("plan") or []]
    current = state.get("current_step", 1)
    if plan and results and 1 <= current <= len(plan):
        failed = any(r.status != "success" for r in results)
        if not failed:
            plan[current - 1]["status"] = "done"
            current = min(current + 1, len(plan))
            if plan[current - 1]["status"] == "pending":
                plan[current - 1]["status"] = "in_progress"
        update["plan"] = plan
        update["current_step"] = current
    return update


def _turn_results(state: AgentState) -> list[ToolMessage]:
    results: list[ToolMessage] = []
    for message in reversed(state.get("messages") or []):
        if not isinstance(message, ToolMessage):
            break
        results.append(message)
    return list(reversed(results))
