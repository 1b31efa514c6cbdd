"""act: the model chooses the next tool call(s), or answers and so proposes to finish."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.deps import GraphDeps
from graph.errors import DeadlineExceeded, IterationLimit
from graph.nodes._common import Asked, ask, deadline_passed, record, stop
from graph.prompts import act_prompt
from graph.state import AgentState


async def act(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    deps = runtime.context
    iterations = state.get("iterations", 0)
    limit = state.get("max_iterations", 15)
    if iterations >= limit:
        return stop(IterationLimit(f"stopped after {limit} iterations without finishing"))
    if deadline_passed(state):
        return stop(DeadlineExceeded("the task's deadline passed"))
    system = act_prompt(state.get("plan") or [], state.get("current_step", 1),
                        state.get("observations") or [])
    asked = await ask(deps, state, system, tools=deps.toolset.schemas())
    if not isinstance(asked, Asked):
        return asked
    message = asked.message
    step = await record(deps, state, "act", thought=str(message.content) or None,
                        tool_name=", ".join(c["name"] for c in message.tool_calls) or None,
                        tool_input=[c["args"] for c in message.tool_calls] or None,
                        detail={"tool_calls": [{"id": c["id"], "name": c["name"],
                                                "arguments": c["args"]} for c in message.tool_calls]},
                        **asked.cost())
    return {"messages": [message], "iterations": iterations + 1, "step": step,
            **asked.state_update(state)}
