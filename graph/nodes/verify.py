"""verify: before finishing, the model judges whether the proposed answer meets the goal.
"Not met" re-plans, within the caps; twice "not met" more ends the task as such."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.deps import GraphDeps
from graph.errors import GoalNotMet
from graph.nodes._common import Asked, ask, last_ai, stopped, task_input
from graph.prompts import SUBMIT_VERDICT, verify_prompt
from graph.recorder import Steps
from graph.state import AgentState
from graph.steps import AnswerChecked

MAX_NOT_MET = 2


async def verify(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    deps = runtime.context
    steps = Steps(deps.recorder, state)
    answer_message = last_ai(state)
    answer = str(answer_message.content).strip() if answer_message else ""
    asked = await ask(deps, state, steps, verify_prompt(task_input(state), answer),
                      purpose="verify", tools=[SUBMIT_VERDICT], tool_choice="submit_verdict",
                      defer=True)
    if not isinstance(asked, Asked):
        return asked
    met, why = _parse(asked.message.tool_calls)
    await steps.add(AnswerChecked, met=met, reason=why, answer=answer)  # with the call
    update: dict[str, Any] = {"step": steps.last, **asked.state_update(state)}
    if met and answer:
        plan = [{**s, "status": "done" if s["status"] != "failed" else "failed"}
                for s in state.get("plan") or []]
        return {**update, "final_answer": answer, "plan": plan}
    failures = state.get("verify_failures", 0) + 1
    if failures > MAX_NOT_MET:
        return {**update, **await stopped(steps, GoalNotMet(
            f"the goal was judged not met {failures} times: {why}"))}
    return {**update, "verify_failures": failures,
            "replan_reason": f"a check found the goal not met: {why}" if answer
            else "the answer was empty"}


def _parse(calls: list[Any]) -> tuple[bool, str]:
    for call in calls:
        if call["name"] == "submit_verdict":
            return bool(call["args"].get("goal_met")), str(call["args"].get("reason") or "")
    # No verdict is no evidence the goal is met.
    return False, "the checker gave no verdict"
