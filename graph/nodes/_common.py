"""What every node shares: limits, usage accounting, model calls and their step records."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from graph.deps import GraphDeps
from graph.errors import BudgetExceeded, RunFailure
from graph.llm import call_model
from graph.model_cache import deterministic
from graph.recorder import Steps
from graph.state import AgentState, Stop, Usage, empty_usage, summary_text
from graph.steps import ModelCalled, RunStopped
from graph.tracing import chat_span, record_answer, record_cached_answer, record_prompt, span
from graph.window import Window, build_window, estimate_tokens, mirror_window


def stop(failure: RunFailure) -> dict[str, Any]:
    return {"stop": Stop(kind=failure.kind, message=failure.message)}


async def stopped(steps: Steps, failure: RunFailure) -> dict[str, Any]:
    """End the run with `failure`, recorded as the run's last step."""
    await steps.add(RunStopped, stop=failure.kind, message=failure.message)
    return {**stop(failure), "step": steps.last}


def deadline_passed(state: AgentState) -> bool:
    deadline = state.get("deadline")
    return deadline is not None and time.time() >= deadline


def over_budget(state: AgentState, window: Sequence[BaseMessage]) -> str | None:
    """Checked before every model call: would this call's prompt alone exceed the budget?"""
    budget = state.get("token_budget")
    usage = state.get("usage") or empty_usage()
    used = usage["tokens_in"] + usage["tokens_out"]
    upcoming = estimate_tokens(window)
    with span("budget_check", attributes={"cadre.budget.used": used,
                                          "cadre.budget.next_call": upcoming}) as check:
        if budget is None:
            return None
        check.set_attribute("cadre.budget.limit", budget)
        exceeded = used + upcoming > budget
        check.set_attribute("cadre.budget.exceeded", exceeded)
    if exceeded:
        return (f"token budget of {budget} reached: {used} tokens used, the next model call "
                f"needs about {upcoming} more")
    return None


def call_tokens(message: AIMessage, window: Sequence[BaseMessage]) -> tuple[int, int, bool]:
    """A call's tokens in and out as the server reported them, or estimated when it reported
    none (some servers send no usage when streaming); the flag says which."""
    reported = message.usage_metadata
    if reported:
        return reported["input_tokens"], reported["output_tokens"], False
    return estimate_tokens(window), estimate_tokens([message]), True


def add_usage(state: AgentState, tokens_in: int, tokens_out: int, *,
              cached: bool = False) -> Usage:
    """Count one call's tokens in the task's usage: spent, or read from the model-call cache
    (counted apart, and not against the budget)."""
    usage = state.get("usage") or empty_usage()
    if cached:
        return Usage(tokens_in=usage["tokens_in"], tokens_out=usage["tokens_out"],
                     model_calls=usage["model_calls"],
                     tokens_cached=usage.get("tokens_cached", 0) + tokens_in + tokens_out)
    counted = Usage(tokens_in=usage["tokens_in"] + tokens_in,
                    tokens_out=usage["tokens_out"] + tokens_out,
                    model_calls=usage["model_calls"] + 1)
    if usage.get("tokens_cached"):
        counted["tokens_cached"] = usage["tokens_cached"]
    return counted


async def window_for(deps: GraphDeps, state: AgentState, system: str) -> Window:
    history, start = state.get("messages", []), state.get("summarized_upto", 0)
    if deps.outputs is not None:
        # The large results the window may hold, whole (the digest of older turns reads
        # only a result's start, which the stub keeps).
        history = await deps.outputs.resolve(history, start=start)
    window = build_window(
        system,
        history,
        summary=summary_text(state),
        summarized_upto=start,
        limit=deps.context_tokens,
    )
    if deps.redis is not None:
        # A team's worker agents each have their own window, under their path.
        key = state["task_id"] if not state.get("profile") \
            else f"{state['task_id']}/{state.get('agent')}"
        await mirror_window(deps.redis, key, window, deps.context_ttl_seconds)
    return window


def window_state(window: Window, state: AgentState) -> dict[str, Any]:
    """What of the window's digest changed since `state`: written only then."""
    update: dict[str, Any] = {}
    if window.summary != summary_text(state):
        update["summary"] = [window.summary]
    if window.summarized_upto != state.get("summarized_upto", 0):
        update["summarized_upto"] = window.summarized_upto
    return update


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


def proposes_calls(state: AgentState) -> bool:
    """The model's last turn asked for tool calls (well-formed or not)."""
    message = last_ai(state)
    return message is not None and bool(message.tool_calls or message.invalid_tool_calls)


def partial_result(state: AgentState) -> str:
    """What the task has produced so far, for a run that stops before finishing: a team's,
    each worker's result by path."""
    if results := state.get("agent_results"):
        return "\n\n".join(f"{r['path']}: {r['result']}" for r in
                           sorted(results, key=lambda r: r["number"]) if r["result"])
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
    # What it cost, as recorded on its step.
    tokens_in: int
    tokens_out: int
    # Answered by the model-call cache: no model was asked.
    cached: bool = False

    def state_update(self, state: AgentState) -> dict[str, Any]:
        return {"usage": add_usage(state, self.tokens_in, self.tokens_out, cached=self.cached),
                **window_state(self.window, state)}


async def ask(deps: GraphDeps, state: AgentState, steps: Steps, system: str, *,
              purpose: Literal["plan", "act", "verify"], tools: Sequence[dict[str, Any]],
              tool_choice: str | None = None, defer: bool = False) -> Asked | dict[str, Any]:
    """Build the window, check the budget, call the model, record the call (with `defer`,
    queued in `steps` for the node to record with the steps it makes of the answer).
    Returns the call, or the state update that stops the run when the budget would be
    exceeded."""
    window = await window_for(deps, state, system)
    if reason := over_budget(state, window.messages):
        return await stopped(steps, BudgetExceeded(reason))
    cache = deps.model_cache if deps.model_cache is not None and deterministic(deps.model) \
        else None
    key = cache.key(deps.model, window.messages, tools, tool_choice) if cache else ""
    with chat_span(deps.tracing, model=deps.model_name, purpose=purpose) as chat:
        record_prompt(deps.tracing, chat, window.messages)
        started = time.monotonic()
        hit = await cache.get(key) if cache else None
        if hit is not None:
            message = hit.message
            tokens_in, tokens_out, estimated = hit.tokens_in, hit.tokens_out, False
        else:
            # Only the answer's tokens are streamed to listeners (and its turns' tool calls to
            # speculation): a plan, a verdict and a team's worker agent are answered whole.
            message = await call_model(deps.model, window.messages, tools=tools,
                                       tool_choice=tool_choice,
                                       stream=purpose == "act" and not state.get("profile"))
            tokens_in, tokens_out, estimated = call_tokens(message, window.messages)
        latency_ms = int((time.monotonic() - started) * 1000)
        finish_reason = message.response_metadata.get("finish_reason")
        if cache is not None:
            chat.set_attribute("cadre.cache.hit", hit is not None)
        if hit is not None:
            record_cached_answer(chat, tokens_in=tokens_in, tokens_out=tokens_out)
        else:
            record_answer(deps.tracing, chat, message, tokens_in=tokens_in,
                          tokens_out=tokens_out, estimated=estimated, finish_reason=finish_reason)
    if cache is not None and hit is None:
        await cache.put(key, deps.model_name, message, tokens_in=tokens_in, tokens_out=tokens_out)
    steps.later(ModelCalled, purpose=purpose, model=deps.model_name, tokens_in=tokens_in,
                tokens_out=tokens_out, tokens_estimated=estimated, latency_ms=latency_ms,
                finish_reason=finish_reason, cached=hit is not None,
                text=str(message.content), tool_calls=len(message.tool_calls))
    if not defer:
        await steps.flush()
    return Asked(message=message, window=window, latency_ms=latency_ms, tokens_in=tokens_in,
                 tokens_out=tokens_out, cached=hit is not None)
