"""tools: a turn's tool calls in one node — decide them (approve's checks and the policy),
execute what may run, observe the results — so a tool turn is one superstep and one
checkpoint, not three (docs/performance.md, "Checkpoint bytes"). Each part sees the state
the graph would have handed it after the part before.

A turn with a call that must wait for a person is left to the nodes it replaced: `tools`
returns without an update, and `approve` decides the turn again and asks (`interrupt()`),
then `execute` executes and observes. That turn keeps a checkpoint after its approval (a
fork from the approval re-executes the approved call, replayed from the ledger), and a
person's wait costs nothing a checkpoint could save. `observe` stays a node of its own for
checkpoints saved before the parts were one node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from graph.deps import GraphDeps
from graph.nodes.approve import approve, decide
from graph.nodes.execute import execute
from graph.nodes.observe import observe
from graph.state import AgentState, merge_sources


async def tools(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    decided = await decide(state, runtime, ask=False)
    if decided is None:
        return {}  # a person must decide: `approve` asks (see `add_tool_nodes`)
    return {**decided, **await execute_and_observe(_after(state, decided), runtime)}


async def execute_and_observe(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    executed = await execute(state, runtime)
    return {**executed, **await observe(_after(state, executed), runtime)}


def _after(state: AgentState, update: dict[str, Any]) -> AgentState:
    """`state` with a part's `update` applied, as the graph's reducers would."""
    after: dict[str, Any] = {**state, **update}
    if "messages" in update:
        after["messages"] = [*(state.get("messages") or []), *update["messages"]]
    if "untrusted" in update:
        after["untrusted"] = merge_sources(state.get("untrusted"), update["untrusted"])
    return after  # type: ignore[return-value]


def _unanswered(state: AgentState) -> bool:
    """The turn's calls have no results yet: `tools` left them for a person."""
    messages = state.get("messages") or []
    return bool(messages) and isinstance(messages[-1], AIMessage) and bool(messages[-1].tool_calls)


def add_tool_nodes(graph: StateGraph[AgentState, GraphDeps, AgentState, AgentState],
                   after: Callable[[AgentState], str]) -> None:
    """`tools`, routed by `after` once the turn has run; `approve` -> `execute` for a turn
    that waits for a person; `observe` for a checkpoint saved when it was a node."""
    graph.add_node("tools", tools)
    graph.add_node("approve", approve)
    graph.add_node("execute", execute_and_observe)
    graph.add_node("observe", observe)
    graph.add_conditional_edges("tools", lambda state: "approve" if _unanswered(state)
                                else after(state))
    graph.add_edge("approve", "execute")
    graph.add_conditional_edges("execute", after)
    graph.add_conditional_edges("observe", after)
