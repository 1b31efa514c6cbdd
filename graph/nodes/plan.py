"""plan: the model writes (or revises) a numbered plan as a structured tool call. A task in
`auto` mode may instead get a team plan: the planner is shown the worker agents and chooses
(graph/team.py); the task then goes on as a team, its manager's steps as `manager`."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graph.deps import GraphDeps
from graph.errors import DeadlineExceeded
from graph.nodes._common import Asked, ask, deadline_passed, stopped, task_input
from graph.prompts import SUBMIT_PLAN, plan_prompt
from graph.recorder import Steps
from graph.state import AgentState, PlanStep
from graph.steps import MANAGER, PlanItem, PlanMade
from graph.team import SUBMIT_TEAM_PLAN, choose_team_prompt, parse_team_plan, team_lines


async def plan(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    deps = runtime.context
    steps_log = Steps(deps.recorder, state)
    if deadline_passed(state):
        return await stopped(steps_log, DeadlineExceeded("the task's deadline passed while planning"))
    if deps.speculator is not None:
        # What the task asks for first may run while the model writes the plan.
        await deps.speculator.begin_turn(state, planning=True)
    tool_lines = "\n".join(f"- {t.name}: {t.description.splitlines()[0]}" for t in deps.toolset)
    reason = state.get("replan_reason")
    # The first plan of a task like an earlier one starts from that task's plan.
    reference = None if state.get("plan") else (state.get("reference_plan") or {}).get("steps")
    team = deps.team if state.get("mode") == "auto" and not state.get("plan") else None
    system = plan_prompt(tool_lines, reason, reference)
    if team is not None and len(team.profiles):
        system += "\n\n" + choose_team_prompt(team_lines(team))
        asked = await ask(deps, state, steps_log, system, purpose="plan",
                          tools=[SUBMIT_PLAN, SUBMIT_TEAM_PLAN], tool_choice="required",
                          defer=True)
    else:
        asked = await ask(deps, state, steps_log, system, purpose="plan",
                          tools=[SUBMIT_PLAN], tool_choice="submit_plan", defer=True)
    if not isinstance(asked, Asked):
        return asked
    if team is not None and any(c["name"] == "submit_team_plan" for c in asked.message.tool_calls):
        team_steps, problem = parse_team_plan(asked.message.tool_calls,
                                              {p.name for p in team.profiles})
        if not problem:
            # The planner chose a team: from here the task is the manager's.
            await steps_log.flush()  # the planner's call is the task's own
            manager = Steps(deps.recorder, state, agent=MANAGER)
            manager.last = steps_log.last
            await manager.add(PlanMade, steps=[PlanItem(**p) for p in team_steps])
            return {"plan": team_steps, "current_step": 1, "replan_reason": None,
                    "mode": "team", "agent": MANAGER, "agent_results": [], "wave": [],
                    "step": manager.last, **asked.state_update(state)}
    steps, problem = _parse(asked.message.tool_calls)
    errors = list(state.get("errors") or [])
    if problem:
        # A plan the model could not express still leaves the task itself as the one step.
        errors.append(f"plan: {problem}")
        steps = [task_input(state)[:500] or "Complete the task"]
    plan_steps = [PlanStep(number=i, description=s, status="pending")
                  for i, s in enumerate(steps, start=1)]
    plan_steps[0]["status"] = "in_progress"
    await steps_log.add(PlanMade, steps=[PlanItem(**p) for p in plan_steps],
                        revised=bool(state.get("plan")), reason=reason)
    return {"plan": plan_steps, "current_step": 1, "replan_reason": None, "errors": errors,
            "step": steps_log.last, **asked.state_update(state)}


def _parse(calls: list[Any]) -> tuple[list[str], str | None]:
    for call in calls:
        if call["name"] != "submit_plan":
            continue
        steps = call["args"].get("steps")
        if isinstance(steps, list):
            cleaned = [str(s).strip() for s in steps if str(s).strip()][:12]
            if cleaned:
                return cleaned, None
        return [], "submit_plan had no usable steps"
    return [], "the model did not call submit_plan"
