"""verify: before finishing, the model judges whether the proposed answer meets the goal.
"Not met" re-plans, within the caps; twice "not met" more ends the task as such."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from graph.deps import GraphDeps
from graph.errors import BudgetExceeded, GoalNotMet
from graph.llm import call_model
from graph.nodes._common import (
    add_usage,
    call_tokens,
    last_ai,
    over_budget,
    record,
    stop,
    task_input,
    window_for,
    window_state,
)
from graph.prompts import SUBMIT_VERDICT, verify_prompt
from graph.state import AgentState

MAX_NOT_MET = 2


async def verify(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    deps = runtime.context
    answer_message = last_ai(state)
    answer = str(answer_message.content).strip() if answer_message else ""
    window = await window_for(deps, state, verify_prompt(task_input(state), answer))
    if reason := over_budget(state, window.messages):
        return stop(BudgetExceeded(reason))

    started = time.monotonic()
    message = await call_model(deps.model, window.messages, tools=[SUBMIT_VERDICT],
                               tool_choice="submit_verdict")
    met, why = _parse(message.tool_calls)
    tokens_in, tokens_out = call_tokens(message)
    step = await record(deps, state, "verify", thought=f"goal met: {met}. {why}",
                        tokens_in=tokens_in, tokens_out=tokens_out,
                        latency_ms=int((time.monotonic() - started) * 1000))
    update: dict[str, Any] = {"usage": add_usage(state, message, window.messages), "step": step,
                              **window_state(window)}
    if met and answer:
        plan = [{**s, "status": "done" if s["status"] != "failed" else "failed"}
                for s in state.get("plan") or []]
        return {**update, "final_answer": answer, "plan": plan}
    failures = state.get("verify_failures", 0) + 1
    if failures > MAX_NOT_MET:
        return {**update, **stop(GoalNotMet(f"the goal was judged not met {failures} times: {why}"))}
    return {**update, "verify_failures": failures,
            "replan_reason": f"a check found the goal not met: {why}" if answer
            else "the answer was empty"}


def _parse(calls: list[Any]) -> tuple[bool, str]:
    for call in calls:
        if call["name"] == "submit_verdict":
            return bool(call["args"].get("goal_met")), str(call["args"].get("reason") or "")
    # No verdict is no evidence the goal is met.
    return False, "the checker gave no verdict"
