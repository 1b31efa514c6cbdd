"""Run failures: conditions that end a task with a clear reason (and map to problem types)."""

from __future__ import annotations

from typing import Literal

StopKind = Literal[
    "budget_exceeded",
    "iteration_limit",
    "deadline_exceeded",
    "repeated_tool_calls",
    "model_unavailable",
    "goal_not_met",
]


class RunFailure(Exception):
    """Base of the errors that end a run; `kind` is stable and machine-readable."""

    kind: StopKind

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BudgetExceeded(RunFailure):
    kind = "budget_exceeded"


class IterationLimit(RunFailure):
    kind = "iteration_limit"


class DeadlineExceeded(RunFailure):
    kind = "deadline_exceeded"


class RepeatedToolCalls(RunFailure):
    kind = "repeated_tool_calls"


class ModelUnavailable(RunFailure):
    kind = "model_unavailable"


class GoalNotMet(RunFailure):
    kind = "goal_not_met"
