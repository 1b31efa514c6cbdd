"""act: the model chooses the next tool call(s), or answers and so proposes to finish."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from graph.deps import GraphDeps
from graph.errors import BudgetExceeded, DeadlineExceeded, IterationLimit
from graph.llm import call_model
from graph.nodes._common import (
    add_usage,
    call_tokens,
    deadline_passed,
    over_budget,
    record,
    stop,
    window_for,
    window_state,
)
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
    window = await window_for(deps, state, system)
    if reason := over_budget(state, window.messages):
        return stop(BudgetExceeded(reason))

    started = time.monotonic()
    message = await call_model(deps.model, window.messages, tools=deps.toolset.schemas())
    tokens_in, tokens_out = call_tokens(message)
    calls = [c["name"] for c in message.tool_calls]
    step = await record(deps, state, "act", thought=str(message.content) or None,
                        tool_name=", ".join(calls) or None,
                        tool_input=[c["args"] for c in message.tool_calls] or None,
                        tokens_in=tokens_in, tokens_out=tokens_out,
                        latency_ms=int((time.monotonic() - started) * 1000),
                        detail={"tool_calls": [{"id": c["id"], "name": c["name"], "arguments": c["args"]}
                                               for c in message.tool_calls]})
    return {
        "messages": [message],
        "iterations": iterations + 1,
        "usage": add_usage(state, message, window.messages),
        "step": step,
        **window_state(window),
    }
