"""act: the model chooses the next tool call(s), or answers and so proposes to finish."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.agents import for_agent
from graph.deps import GraphDeps
from graph.errors import DeadlineExceeded, IterationLimit
from graph.nodes._common import Asked, ask, deadline_passed, stopped
from graph.prompts import act_prompt
from graph.recorder import Steps
from graph.state import AgentState
from graph.steps import ToolProposed


async def act(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    deps = for_agent(runtime.context, state)
    steps = Steps(deps.recorder, state)
    iterations = state.get("iterations", 0)
    limit = state.get("max_iterations", 15)
    if iterations >= limit:
        return await stopped(steps, IterationLimit(
            f"stopped after {limit} iterations without finishing"))
    if deadline_passed(state):
        return await stopped(steps, DeadlineExceeded("the task's deadline passed"))
    if (step_limit := state.get("step_limit")) is not None and steps.last >= step_limit:
        return await stopped(steps, IterationLimit(
            "the worker agent recorded as many steps as it may"))
    if deps.speculator is not None:
        # Predicted calls start now and run while the model thinks.
        await deps.speculator.begin_turn(state)
    system = act_prompt(state.get("plan") or [], state.get("current_step", 1),
                        state.get("observations") or [], instructions=state.get("instructions"))
    asked = await ask(deps, state, steps, system, purpose="act", tools=deps.toolset.schemas(),
                      defer=True)
    if not isinstance(asked, Asked):
        return asked
    message = asked.message
    for call in message.tool_calls:
        steps.later(ToolProposed, call_id=call["id"] or "", tool=call["name"],
                    arguments=dict(call["args"]))
    await steps.flush()  # the model call and the calls it proposed, in one write
    return {"messages": [message], "iterations": iterations + 1, "step": steps.last,
            **asked.state_update(state)}
