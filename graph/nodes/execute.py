"""execute: run the approved calls through the tool contract, each once (the ledger), and
answer every proposed call with a tool message — a result, or why it did not run.

The read-only calls of one turn run concurrently (at most `GraphDeps.parallel_tools` at a
time); a side-effect or destructive call runs alone, after every call before it and before
every call after it, so what changes the world keeps the order the model asked for. Steps
are recorded and results go back to the model in call order."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import ToolMessage
from langgraph.runtime import Runtime

from graph.agents import call_key, for_agent
from graph.deps import GraphDeps
from graph.recorder import Steps
from graph.speculation import Speculated
from graph.state import AgentState, Decision
from graph.steps import ToolRan
from graph.tracing import record_tool_result, span, tool_span
from guardrails.screening import spotlight
from tools import Tool, ToolContext, ToolOutcome


@dataclass(kw_only=True)
class _Ran:
    """One call's outcome, before its step is recorded."""

    decision: Decision
    tool: Tool | None
    outcome: ToolOutcome
    content: str
    replayed: bool = False
    flags: list[str] = field(default_factory=list)
    latency_ms: int = 0
    saved_ms: int | None = None  # a speculative call's: how much had run when asked for


async def execute(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    deps = for_agent(runtime.context, state)
    steps = Steps(deps.recorder, state)
    results: list[ToolMessage] = []
    sources: list[str] = []
    limit = asyncio.Semaphore(max(1, deps.parallel_tools))

    async def bounded(decision: Decision, tool: Tool, untrusted: tuple[str, ...]) -> _Ran:
        async with limit:
            return await _run(state, deps, decision, tool, untrusted)

    for group in _groups(state.get("decisions") or [], deps):
        # What the calls see as untrusted in context: the conversation's, and what earlier
        # calls of this turn returned.
        seen = tuple(dict.fromkeys([*(state.get("untrusted") or []), *sources]))
        ran = await asyncio.gather(*(
            bounded(decision, tool, seen) if tool is not None else _not_run(decision)
            for decision, tool in group))
        for one in ran:
            if one.tool is not None:
                if one.outcome.untrusted:
                    sources.append(f"{one.tool.name} output")
                steps.later(ToolRan, call_id=one.decision["tool_call_id"],
                            tool=one.tool.name, arguments=one.decision["arguments"],
                            ok=one.outcome.ok, content=one.outcome.content,
                            replayed=one.replayed, untrusted=one.outcome.untrusted,
                            flags=one.flags, latency_ms=one.latency_ms,
                            speculative=one.saved_ms is not None,
                            saved_ms=one.saved_ms or 0)
            results.append(ToolMessage(
                content=one.content, tool_call_id=one.decision["tool_call_id"],
                name=one.decision["name"], status="success" if one.outcome.ok else "error"))
        await steps.flush()  # a group's results together, as it ends
    if deps.speculator is not None:
        await deps.speculator.end_turn()  # what the model did not ask for, it never sees
        await deps.speculator.learn(state, [(d["name"], d["arguments"])
                                            for d in state.get("decisions") or [] if d["run"]])
    if deps.outputs is not None:
        results = await deps.outputs.keep(state["task_id"], results)  # large ones: stubs
    return {"messages": results, "step": steps.last, "untrusted": sources}


def _groups(decisions: list[Decision], deps: GraphDeps,
            ) -> list[list[tuple[Decision, Tool | None]]]:
    """The calls in order, cut into groups that may run together: runs of read-only calls
    (and calls that will not run), and each side-effect or destructive call alone."""
    groups: list[list[tuple[Decision, Tool | None]]] = []
    shared = False
    for decision in decisions:
        tool = deps.toolset.get(decision["name"]) if decision["run"] else None
        alone = tool is not None and tool.risk != "read_only"
        if alone or not shared or not groups:
            groups.append([])
        groups[-1].append((decision, tool))
        shared = not alone
    return groups


async def _not_run(decision: Decision) -> _Ran:
    outcome = ToolOutcome(ok=False, content=decision["message"])
    return _Ran(decision=decision, tool=None, outcome=outcome, content=outcome.content)


async def _run(state: AgentState, deps: GraphDeps, decision: Decision, tool: Tool,
               untrusted: tuple[str, ...] = ()) -> _Ran:
    started = time.monotonic()
    # A run another worker took over starts no call: that worker will.
    await deps.fence.check()
    ctx = ToolContext(task_id=state["task_id"],
                      tool_call_id=call_key(state, decision["tool_call_id"]),
                      role=state.get("role", "analyst"), deps=deps.tool_deps,
                      untrusted=untrusted)
    ahead = deps.speculator.take(tool.name, decision["arguments"]) \
        if deps.speculator is not None else None
    saved_ms = ahead.saved_ms(started) if ahead is not None else None
    with tool_span(deps.tracing, tool=tool.name, call_id=decision["tool_call_id"],
                   risk=tool.risk, arguments=decision["arguments"]) as traced:
        outcome, replayed = await deps.ledger.run_once(
            ctx, tool_name=tool.name, arguments=decision["arguments"],
            # A speculative call for it is running (or done): its result is this call's.
            call=_awaiting(ahead) if ahead is not None else
            functools.partial(tool.invoke, ctx, decision["arguments"]),
        )
        if ahead is not None:
            if replayed:
                ahead.task.cancel()  # the ledger had the result: the speculation was not used
                saved_ms = None
            else:
                assert deps.speculator is not None and saved_ms is not None
                deps.speculator.used(ahead, saved_ms)
                traced.set_attribute("cadre.speculative", True)
                traced.set_attribute("cadre.speculation.saved_ms", saved_ms)
        if replayed:
            # The call had finished before (a resumed run): its recorded result is used.
            with span(f"ledger_replay {tool.name}", attributes={
                    "gen_ai.tool.call.id": decision["tool_call_id"],
                    "cadre.ledger.key": ctx.idempotency_key}):
                pass
        flags: list[str] = []
        content = outcome.content
        if outcome.untrusted:
            # Screened, then wrapped so the model reads it as data, never as instructions.
            flags = await deps.screen.flags(outcome.content)
            content = spotlight(outcome.content, source=tool.name)
        record_tool_result(deps.tracing, traced, ok=outcome.ok, content=outcome.content,
                           replayed=replayed, untrusted=outcome.untrusted)
        if flags:
            traced.set_attribute("cadre.screen.flags", flags)
    return _Ran(decision=decision, tool=tool, outcome=outcome, content=content,
                replayed=replayed, flags=flags, saved_ms=saved_ms,
                latency_ms=int((time.monotonic() - started) * 1000))


def _awaiting(ahead: Speculated) -> Callable[[], Awaitable[ToolOutcome]]:
    async def result() -> ToolOutcome:
        return await ahead.task
    return result
