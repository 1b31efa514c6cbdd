"""The run record: one frozen, tagged record per thing that happens in a run. Nodes make them;
everything downstream — `agent_logs`, the live events, the transcript, the chat UI's history,
`cadre run`'s output, traces — reads this one shape and `match`es every kind (a kind added
here without a consumer fails mypy's exhaustiveness check, `assert_never`).

Each step carries its number in the task's record (unique per task: a node that runs again
after a crash or a resume records the same numbers, and the store keeps the first) and the
path of the agent that took it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from graph.state import StepStatus
from guardrails import Risk

# The single agent of a task; a team's manager is "manager", its workers get paths like
# "manager/researcher#1".
MAIN_AGENT = "cadre"
MANAGER = "manager"


def is_worker(agent: str) -> bool:
    """A team's worker agent (`manager/researcher#1`), not a single agent or a manager."""
    return "/" in agent


def _now() -> datetime:
    return datetime.now(UTC)


class StepBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    number: int = Field(description="The step's place in the task's record, from 1")
    agent: str = MAIN_AGENT
    at: datetime = Field(default_factory=_now)


class PlanItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    number: int
    description: str
    status: StepStatus
    # A team's plan: the worker agent profile the step goes to, and the steps it waits for.
    agent: str | None = None
    depends_on: list[int] = Field(default_factory=list)


class PlanMade(StepBase):
    """The model wrote the plan, or revised it (`revised`, with the reason it was asked to)."""

    kind: Literal["plan_made"] = "plan_made"
    steps: list[PlanItem]
    revised: bool = False
    reason: str | None = None


class ModelCalled(StepBase):
    """One model call: who asked (`purpose`), what it cost, and what it said."""

    kind: Literal["model_called"] = "model_called"
    purpose: Literal["plan", "act", "verify"]
    model: str
    tokens_in: int
    tokens_out: int
    # The server reported no usage for this call (some do not when streaming): counted
    # from the prompt and the answer's length instead.
    tokens_estimated: bool = False
    latency_ms: int
    finish_reason: str | None = None
    text: str = ""
    tool_calls: int = 0
    # Read from the model-call cache: no model was asked, no tokens were spent.
    cached: bool = False


class ToolProposed(StepBase):
    """The model asked for a tool call."""

    kind: Literal["tool_proposed"] = "tool_proposed"
    call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolHeld(StepBase):
    """The policy held a call for a person (recorded before the run waits)."""

    kind: Literal["tool_held"] = "tool_held"
    call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    risk: Risk
    reason: str
    rule: str | None = None


NotRunWhy = Literal["malformed", "unknown_tool", "invalid_arguments", "denied", "rejected"]


class ToolNotRun(StepBase):
    """A proposed call that did not run, and why (the model reads `message`)."""

    kind: Literal["tool_not_run"] = "tool_not_run"
    call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    why: NotRunWhy
    message: str


class ToolRan(StepBase):
    """A call ran (or its recorded result was replayed from the ledger)."""

    kind: Literal["tool_ran"] = "tool_ran"
    call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    ok: bool
    content: str
    replayed: bool = False
    untrusted: bool = False
    flags: list[str] = Field(default_factory=list)
    latency_ms: int = 0
    # Started ahead of the model's asking (graph/speculation.py), and how much of it had run
    # by then.
    speculative: bool = False
    saved_ms: int = 0


class AnswerChecked(StepBase):
    """The checker judged whether the proposed answer meets the task's goal."""

    kind: Literal["answer_checked"] = "answer_checked"
    met: bool
    reason: str
    answer: str = ""


class AgentDelegated(StepBase):
    """A team's manager handed one step of its plan to a worker agent (`to`, its path)."""

    kind: Literal["agent_delegated"] = "agent_delegated"
    to: str
    profile: str
    plan_step: int
    task: str
    # What the worker may spend: its share of the team's remaining token budget (None: no
    # budget) and of the task's remaining iterations.
    token_share: int | None = None
    max_iterations: int


class AgentReturned(StepBase):
    """A worker agent finished its sub-task and reported to the manager: its answer, or why it
    stopped and what it had by then."""

    kind: Literal["agent_returned"] = "agent_returned"
    to: str = Field(description="The worker's path, e.g. manager/researcher#1")
    plan_step: int
    ok: bool
    result: str
    stop: str | None = None
    message: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    model_calls: int = 0
    # Untrusted content the worker read: it taints what the manager does next.
    untrusted: list[str] = Field(default_factory=list)


class RunStopped(StepBase):
    """The run ended without an accepted answer: a cap, the budget, the deadline, repeated
    calls, a goal judged not met, the model unavailable, or a cancellation."""

    kind: Literal["run_stopped"] = "run_stopped"
    stop: str = Field(description="budget_exceeded, iteration_limit, deadline_exceeded, ...")
    message: str


Step = Annotated[PlanMade | ModelCalled | ToolProposed | ToolHeld | ToolNotRun | ToolRan
                 | AnswerChecked | AgentDelegated | AgentReturned | RunStopped,
                 Field(discriminator="kind")]
STEPS: TypeAdapter[Step] = TypeAdapter(Step)
STEP_KINDS = (PlanMade, ModelCalled, ToolProposed, ToolHeld, ToolNotRun, ToolRan, AnswerChecked,
              AgentDelegated, AgentReturned, RunStopped)


def parse_step(data: Any) -> Step:
    """A step from its stored JSON (`agent_logs.record`)."""
    return STEPS.validate_python(data)
