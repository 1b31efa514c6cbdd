"""The instructions each model-calling node gives the model."""

from __future__ import annotations

from typing import Any

from graph.state import PlanStep
from guardrails.screening import SPOTLIGHT_RULE

SUBMIT_PLAN: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "submit_plan",
        "description": "Submit the numbered plan: the steps, in order, that complete the task.",
        "parameters": {
            "type": "object",
            "properties": {
                "steps": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": 12,
                    "description": "One short imperative sentence per step.",
                },
            },
            "required": ["steps"],
        },
    },
}

SUBMIT_VERDICT: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "submit_verdict",
        "description": "Say whether the proposed answer fully accomplishes the user's task.",
        "parameters": {
            "type": "object",
            "properties": {
                "goal_met": {"type": "boolean"},
                "reason": {"type": "string", "description": "One sentence: why, or what is missing."},
            },
            "required": ["goal_met", "reason"],
        },
    },
}


def plan_prompt(tool_lines: str, replan_reason: str | None,
                reference_plan: list[str] | None = None) -> str:
    text = (
        "You are Cadre's planner. Break the user's latest task into a short numbered plan "
        "of concrete steps. Use only the tools listed; a step may need no tool.\n\n"
        f"Tools:\n{tool_lines or '- (none)'}\n"
    )
    if replan_reason:
        text += f"\nThe previous plan must change: {replan_reason}\n"
    elif reference_plan:
        steps = "\n".join(f"{i}. {s}" for i, s in enumerate(reference_plan, start=1))
        text += ("\nA similar earlier task of this user succeeded with this plan. Start from "
                 "it: keep what fits this task, change what does not.\n" + steps + "\n")
    return text + "\nCall submit_plan with the steps."


def act_prompt(plan: list[PlanStep], current_step: int, observations: list[str], *,
               instructions: str | None = None) -> str:
    lines = "\n".join(
        f"{s['number']}. [{s['status']}] {s['description']}" for s in plan
    ) or "(no plan)"
    # A team's worker agent is told its profile's instructions; its plan is its sub-task.
    who = (f"You are a worker agent of Cadre's team. {instructions.strip()}\n"
           "Your task is the step below; the user's message holds it and its inputs.\n"
           if instructions else "You are Cadre, an agent that completes the user's task with tools.\n")
    text = (
        who
        + f"Plan:\n{lines}\nYou are on step {current_step}.\n"
        "Call the tools needed for the current step. When the whole task is done, answer the "
        "user directly with the final result and call no tool. Never invent tool results.\n"
        + SPOTLIGHT_RULE
    )
    if observations:
        text += "\n\nNotes from earlier steps:\n" + "\n".join(f"- {o}" for o in observations[-8:])
    return text


def verify_prompt(task: str, answer: str) -> str:
    return (
        "You check an agent's work. Given the user's task and the proposed final answer, decide "
        "whether the answer fully accomplishes the task, using the conversation as evidence.\n\n"
        f"Task: {task}\n\nProposed answer: {answer}\n\nCall submit_verdict."
    )
