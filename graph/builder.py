"""The state graph: plan -> act -> approve -> execute -> observe -> (act | plan), and
act -> verify -> (finish | plan). Any node can end the run with a `stop`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from graph.deps import GraphDeps
from graph.nodes._common import last_ai
from graph.nodes.act import act
from graph.nodes.approve import approve
from graph.nodes.execute import execute
from graph.nodes.observe import observe
from graph.nodes.plan import plan
from graph.nodes.verify import verify
from graph.state import AgentState

AgentGraph = CompiledStateGraph[AgentState, GraphDeps, AgentState, AgentState]


def _after_plan(state: AgentState) -> str:
    return END if state.get("stop") else "act"


def _after_act(state: AgentState) -> str:
    if state.get("stop"):
        return END
    message = last_ai(state)
    if message is not None and (message.tool_calls or message.invalid_tool_calls):
        return "approve"
    return "verify"


def _after_observe(state: AgentState) -> str:
    if state.get("stop"):
        return END
    return "plan" if state.get("replan_reason") else "act"


def _after_verify(state: AgentState) -> str:
    if state.get("stop") or state.get("final_answer") is not None:
        return END
    return "plan"


def build_graph() -> StateGraph[AgentState, GraphDeps, AgentState, AgentState]:
    graph = StateGraph(AgentState, context_schema=GraphDeps)
    graph.add_node("plan", plan)
    graph.add_node("act", act)
    graph.add_node("approve", approve)
    graph.add_node("execute", execute)
    graph.add_node("observe", observe)
    graph.add_node("verify", verify)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", _after_plan)
    graph.add_conditional_edges("act", _after_act)
    graph.add_edge("approve", "execute")
    graph.add_edge("execute", "observe")
    graph.add_conditional_edges("observe", _after_observe)
    graph.add_conditional_edges("verify", _after_verify)
    return graph


def compile_graph(checkpointer: BaseCheckpointSaver[str]) -> AgentGraph:
    return build_graph().compile(checkpointer=checkpointer, name="cadre")


@asynccontextmanager
async def postgres_checkpointer(database_url: str, *, pool_size: int = 5
                                ) -> AsyncIterator[AsyncPostgresSaver]:
    """LangGraph's Postgres checkpointer on its own psycopg pool (Cadre's tables use asyncpg)."""
    async with AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=pool_size,
        open=False,
        # The saver needs autocommit and dict rows; prepared statements break behind PgBouncer.
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    ) as pool:
        yield AsyncPostgresSaver(pool)  # type: ignore[arg-type]
