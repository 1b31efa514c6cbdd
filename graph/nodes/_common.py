"""What every node shares: limits, usage accounting and step records."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from graph.deps import GraphDeps
from graph.errors import BudgetExceeded, RunFailure
from graph.llm import call_model
from graph.recorder import StepRecord
from graph.state import AgentState, Stop, Usage, empty_usage
from graph.window import Window, build_window, estimate_tokens, mirror_window


def stop(failure: RunFailure) -> dict[str, Any]:
    return {"stop": Stop(kind=failure.kind, message=failure.message)}


def deadline_passed(state: AgentState) -> bool:
    deadline = state.get("deadline")
    return deadline is not None and time.time() >= deadline


def over_budget(state: AgentState, window: Sequence[BaseMessage]) -> str | None:
    """Checked before every model call: would this call's prompt alone exceed the budget?"""
    budget = state.get("token_budget")
    if budget is None:
        return None
    usage = state.get("usage") or empty_usage()
    used = usage["tokens_in"] + usage["tokens_out"]
    upcoming = estimate_tokens(window)
    if used + upcoming > budget:
        return (f"token budget of {budget} reached: {used} tokens used, the next model call "
                f"needs about {upcoming} more")
    return None


def add_usage(state: AgentState, message: AIMessage, window: Sequence[BaseMessage]) -> Usage:
    """Count the model's reported usage (estimated only when the server reports none)."""
    usage = state.get("usage") or empty_usage()
    reported = message.usage_metadata
    tokens_in = reported["input_tokens"] if reported else estimate_tokens(window)
    tokens_out = reported["output_tokens"] if reported else estimate_tokens([message])
    return Usage(
        tokens_in=usage["tokens_in"] + tokens_in,
        tokens_out=usage["tokens_out"] + tokens_out,
        model_calls=usage["model_calls"] + 1,
    )


def call_tokens(message: AIMessage) -> tuple[int, int]:
    reported = message.usage_metadata
    return (reported["input_tokens"], reported["output_tokens"]) if reported else (0, 0)


async def record(deps: GraphDeps, state: AgentState, node: str, **fields: Any) -> int:
    """Write one step record; returns the step number used."""
    number = state.get("step", 0) + 1
    await deps.recorder.record(
        StepRecord(task_id=state["task_id"], step_number=number, node=node, **fields)
    )
    return number


async def window_for(deps: GraphDeps, state: AgentState, system: str) -> Window:
    window = build_window(
        system,
        state.get("messages", []),
        summary=state.get("summary", ""),
        summarized_upto=state.get("summarized_upto", 0),
        limit=deps.context_tokens,
    )
    if deps.redis is not None:
        await mirror_window(deps.redis, state["task_id"], window, deps.context_ttl_seconds)
    return window


def window_state(window: Window) -> dict[str, Any]:
    return {"summary": window.summary, "summarized_upto": window.summarized_upto}


def task_input(state: AgentState) -> str:
    for message in reversed(state.get("messages", [])):
        if isinstance(message, HumanMessage):
            return str(message.content)
    return ""


def last_ai(state: AgentState) -> AIMessage | None:
    for message in reversed(state.get("messages", [])):
        if isinstance(message, AIMessage):
            return message
    return None


def partial_result(state: AgentState) -> str:
    """What the task has produced so far, for a run that stops before finishing."""
    ai = last_ai(state)
    if ai is not None and str(ai.content).strip():
        return str(ai.content).strip()
    observations = state.get("observations") or []
    return observations[-1] if observations else ""


@dataclass(frozen=True, kw_only=True)
class Asked:
    """One model call made by a node: the answer, the window it saw, and its cost."""

    message: AIMessage
    window: Window
    latency_ms: int

    def cost(self) -> dict[str, int]:
        tokens_in, tokens_out = call_tokens(self.message)
        return {"tokens_in": tokens_in, "tokens_out": tokens_out, "latency_ms": self.latency_ms}

    def state_update(self, state: AgentState) -> dict[str, Any]:
        return {"usage": add_usage(state, self.message, self.window.messages),
                **window_state(self.window)}


async def ask(deps: GraphDeps, state: AgentState, system: str, *,
              tools: Sequence[dict[str, Any]], tool_choice: str | None = None
              ) -> Asked | dict[str, Any]:
    """Build the window, check the budget, call the model. Returns the call, or the state
    update that stops the run when the budget would be exceeded."""
    window = await window_for(deps, state, system)
    if reason := over_budget(state, window.messages):
        return stop(BudgetExceeded(reason))
    started = time.monotonic()
    message = await call_model(deps.model, window.messages, tools=tools, tool_choice=tool_choice)
    return Asked(message=message, window=window,
                 latency_ms=int((time.monotonic() - started) * 1000))
