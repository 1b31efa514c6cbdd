"""The graph's state. One thread per conversation: `messages` accumulate across the
conversation's tasks (memory); the per-task fields are reset by each task's input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, NotRequired, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.channels.delta import DeltaChannel
from langgraph.graph.message import _messages_delta_reducer

StepStatus = Literal["pending", "in_progress", "done", "failed"]


class PlanStep(TypedDict):
    number: int
    description: str
    status: StepStatus
    # A team's plan: the worker agent profile the step is delegated to, and the steps whose
    # results it needs (graph/team.py).
    agent: NotRequired[str]
    depends_on: NotRequired[list[int]]


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


class AgentResult(TypedDict):
    """What one worker agent of a team brought back to the manager (graph/team.py)."""

    number: int  # the plan step it was given
    path: str  # e.g. "manager/researcher#1"
    profile: str
    ok: bool
    result: str
    stop: Stop | None
    usage: Usage
    iterations: int
    # Where untrusted content entered the worker's context while it worked.
    untrusted: list[str]


def _results(old: list[AgentResult] | None, new: list[AgentResult] | None) -> list[AgentResult]:
    """Workers of one wave report at once; an empty list (a new task, a new plan) clears."""
    if new is None:
        return list(old or [])
    if not new:
        return []
    return [*(old or []), *new]


def merge_sources(old: list[str] | None, new: list[str] | None) -> list[str]:
    """Untrusted sources only accumulate: what the model has read stays in its context."""
    merged = list(old or [])
    merged += [s for s in new or [] if s not in merged]
    return merged


# A conversation's messages are saved as what each step added (a delta channel), not as the
# whole list in every checkpoint: a checkpoint's bytes stay flat as the conversation grows.
# Loading a thread replays the additions since the last full copy, which is written every
# MESSAGES_SNAPSHOT_EVERY additions (docs/performance.md, "Checkpoint bytes").
MESSAGES_SNAPSHOT_EVERY = 100


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage],
                        DeltaChannel(_messages_delta_reducer,
                                     snapshot_frequency=MESSAGES_SNAPSHOT_EVERY)]
    # Where untrusted content entered this conversation's context (a fetched page, search
    # results, uploaded files, a flagged task): side effects after it need approval.
    untrusted: Annotated[list[str], merge_sources]
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
    # "team": a manager delegates the plan's steps to worker agents (graph/team.py).
    mode: str
    # Who takes this run's steps: absent for a single agent ("cadre"); "manager" for a team's
    # manager; "manager/researcher#1" for a worker agent, which also has its profile's name
    # and instructions here.
    agent: str
    profile: str
    instructions: str
    # A team's manager: what its workers brought back for the current plan, how many worker
    # agents the task has started (their paths' numbers), and how often it re-planned.
    agent_results: Annotated[list[AgentResult], _results]
    delegations: dict[str, int]
    team_replans: int
    # The workers `delegate` starts at once (graph/team.py `WorkerInput`s).
    wave: list[Any]
    # A worker agent's last step number of its own range.
    step_limit: int
    # Usage per agent path (the task's `usage` is the team's total).
    agent_usage: dict[str, Usage]
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
    # Context management: a digest of messages that no longer fit the window (`summary_text`).
    # Kept as a one-item list: the saver copies a string into every checkpoint of the thread,
    # and stores anything else once per change (threads saved before hold a string).
    summary: list[str] | str
    summarized_upto: int
    # Outcome.
    final_answer: str | None
    stop: Stop | None


def empty_usage() -> Usage:
    return Usage(tokens_in=0, tokens_out=0, model_calls=0)


def summary_text(state: Mapping[str, Any]) -> str:
    """The digest of the messages before the window, as `summary` keeps it."""
    value = state.get("summary") or ""
    return value if isinstance(value, str) else "".join(value)
