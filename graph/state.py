"""The graph's state. One thread per conversation: `messages` accumulate across the
conversation's tasks (memory); the per-task fields are reset by each task's input."""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages

StepStatus = Literal["pending", "in_progress", "done", "failed"]


class PlanStep(TypedDict):
    number: int
    description: str
    status: StepStatus


class Usage(TypedDict):
    tokens_in: int
    tokens_out: int
    model_calls: int
    # Tokens of calls answered by the model-call cache: not spent, not in the two above.
    tokens_cached: NotRequired[int]


class Decision(TypedDict):
    """What the approve node decided for one tool call of the current turn."""

    tool_call_id: str
    name: str
    arguments: dict[str, Any]
    run: bool
    message: str


class Stop(TypedDict):
    kind: str
    message: str


def _sources(old: list[str] | None, new: list[str] | None) -> list[str]:
    """Untrusted sources only accumulate: what the model has read stays in its context."""
    merged = list(old or [])
    merged += [s for s in new or [] if s not in merged]
    return merged


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    # Where untrusted content entered this conversation's context (a fetched page, search
    # results, uploaded files, a flagged task): side effects after it need approval.
    untrusted: Annotated[list[str], _sources]
    # Per task, set by the task's input.
    task_id: str
    role: str
    user_email: str
    max_iterations: int
    token_budget: int | None
    deadline: float | None
    task_start: int
    # The plan of a similar earlier task to start from (plan reuse): its task_id,
    # similarity and steps; None when there is none.
    reference_plan: dict[str, Any] | None
    # Progress.
    plan: list[PlanStep]
    current_step: int
    iterations: int
    usage: Usage
    observations: list[str]
    errors: list[str]
    decisions: list[Decision]
    recent_calls: list[str]
    repeat_replans: int
    verify_failures: int
    replan_reason: str | None
    step: int
    # Context management: a digest of messages that no longer fit the window.
    summary: str
    summarized_upto: int
    # Outcome.
    final_answer: str | None
    stop: Stop | None


def empty_usage() -> Usage:
    return Usage(tokens_in=0, tokens_out=0, model_calls=0)
