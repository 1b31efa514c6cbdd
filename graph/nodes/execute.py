"""execute: run the approved calls through the tool contract, each once (the ledger), and
answer every proposed call with a tool message — a result, or why it did not run."""

from __future__ import annotations

import functools
import time
from typing import Any

from langchain_core.messages import ToolMessage
from langgraph.runtime import Runtime

from graph.deps import GraphDeps
from graph.recorder import Steps
from graph.state import AgentState
from graph.steps import ToolRan
from graph.tracing import record_tool_result, span, tool_span
from guardrails.screening import spotlight
from tools import ToolContext, ToolOutcome


async def execute(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    deps = runtime.context
    steps = Steps(deps.recorder, state)
    results: list[ToolMessage] = []
    sources: list[str] = []
    for decision in state.get("decisions") or []:
        started = time.monotonic()
        replayed = False
        tool = deps.toolset.get(decision["name"])
        if decision["run"] and tool is not None:
            # A run another worker took over starts no call: that worker will.
            await deps.fence.check()
            ctx = ToolContext(task_id=state["task_id"], tool_call_id=decision["tool_call_id"],
                              role=state.get("role", "analyst"), deps=deps.tool_deps)
            with tool_span(deps.tracing, tool=tool.name, call_id=decision["tool_call_id"],
                           risk=tool.risk, arguments=decision["arguments"]) as traced:
                outcome, replayed = await deps.ledger.run_once(
                    ctx, tool_name=tool.name, arguments=decision["arguments"],
                    call=functools.partial(tool.invoke, ctx, decision["arguments"]),
                )
                if replayed:
                    # The call had finished before (a resumed run): its recorded result is used.
                    with span(f"ledger_replay {tool.name}", attributes={
                            "gen_ai.tool.call.id": decision["tool_call_id"],
                            "cadre.ledger.key": ctx.idempotency_key}):
                        pass
                flags: list[str] = []
                content = outcome.content
                if outcome.untrusted:
                    # Screened, then wrapped so the model reads it as data, never as
                    # instructions.
                    flags = await deps.screen.flags(outcome.content)
                    content = spotlight(outcome.content, source=tool.name)
                    sources.append(f"{tool.name} output")
                record_tool_result(deps.tracing, traced, ok=outcome.ok, content=outcome.content,
                                   replayed=replayed, untrusted=outcome.untrusted)
                if flags:
                    traced.set_attribute("cadre.screen.flags", flags)
            await steps.add(ToolRan, call_id=decision["tool_call_id"], tool=tool.name,
                            arguments=decision["arguments"], ok=outcome.ok,
                            content=outcome.content, replayed=replayed,
                            untrusted=outcome.untrusted, flags=flags,
                            latency_ms=int((time.monotonic() - started) * 1000))
        else:
            outcome = ToolOutcome(ok=False, content=decision["message"])
            content = outcome.content
        results.append(ToolMessage(
            content=content,
            tool_call_id=decision["tool_call_id"],
            name=decision["name"],
            status="success" if outcome.ok else "error",
        ))
    return {"messages": results, "step": steps.last, "untrusted": sources}
