"""The state graph: plan -> act -> tools (approve, execute, observe) -> (act | plan), and
act -> verify -> (finish | plan). Any node can end the run with a `stop`."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from psycopg import AsyncCursor
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from graph import fence
from graph.deps import GraphDeps
from graph.nodes._common import proposes_calls
from graph.nodes.act import act
from graph.nodes.plan import plan
from graph.nodes.tools import add_tool_nodes
from graph.nodes.verify import verify
from graph.state import AgentState
from graph.team import add_team

AgentGraph = CompiledStateGraph[AgentState, GraphDeps, AgentState, AgentState]


def _planner(state: AgentState) -> str:
    """A team's manager plans with its own node."""
    return "team_plan" if state.get("mode") == "team" else "plan"


def _after_plan(state: AgentState) -> str:
    if state.get("stop"):
        return END
    # A planner in `auto` mode that chose a team hands the task to the manager's delegation.
    return "delegate" if state.get("mode") == "team" else "act"


def _after_act(state: AgentState) -> str:
    if state.get("stop"):
        return END
    return "tools" if proposes_calls(state) else "verify"


def _after_observe(state: AgentState) -> str:
    if state.get("stop"):
        return END
    return "plan" if state.get("replan_reason") else "act"


def _after_verify(state: AgentState) -> str:
    if state.get("stop") or state.get("final_answer") is not None:
        return END
    return _planner(state)


def build_graph() -> StateGraph[AgentState, GraphDeps, AgentState, AgentState]:
    graph = StateGraph(AgentState, context_schema=GraphDeps)
    graph.add_node("plan", plan)
    graph.add_node("act", act)
    add_tool_nodes(graph, _after_observe)
    graph.add_node("verify", verify)
    add_team(graph)
    graph.add_conditional_edges(START, _planner, ["plan", "team_plan"])
    graph.add_conditional_edges("plan", _after_plan)
    graph.add_conditional_edges("act", _after_act)
    graph.add_conditional_edges("verify", _after_verify, [END, "plan", "team_plan"])
    return graph


def compile_graph(checkpointer: BaseCheckpointSaver[str]) -> AgentGraph:
    return build_graph().compile(checkpointer=checkpointer, name="cadre")


class FencedPostgresSaver(AsyncPostgresSaver):
    """LangGraph's Postgres checkpointer, writing only for a run that still holds its task's
    lease (`graph.fence.CURRENT`): a run another worker took over cannot add checkpoints the
    new owner would continue from.

    Every write of the saver (`aput`, `aput_writes`, `adelete_thread`) goes through
    `_cursor(pipeline=True)`; under a lease that becomes one transaction whose first
    statement locks the task's row if the lease still holds it (`HELD_SQL`). A takeover waits
    for that transaction, and a write after it is refused. Reads are not fenced. (`_cursor` is
    the saver's own seam; langgraph-checkpoint-postgres is pinned in constraints.txt.)"""

    def get_next_version(self, current: str | None, channel: None) -> str:
        """A channel's next version: 10 digits and 8 random hex digits (19 characters), where
        the saver's own are 32 digits and a random float (51). Every checkpoint lists the
        version of each of its ~30 channels, and each node's last-seen versions: with the long
        form those lists were half of a task's checkpoint bytes (docs/performance.md). The
        random part keeps a fork's versions apart from its original branch's, as the saver's
        does. Versions compare as strings: a fixed width keeps that numeric, and a version of
        this form sorts after any of the long form (its first ten digits are not all zero),
        so threads written before keep their order."""
        number = 0 if current is None else int(str(current).split(".", 1)[0])
        return f"{number + 1:010}.{random.getrandbits(32):08x}"

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        await fence.CURRENT.get().check()
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        await fence.CURRENT.get().check()
        await super().aput_writes(config, writes, task_id, task_path)

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        holder = fence.CURRENT.get().holder
        if not pipeline or holder is None:
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        async with super()._cursor() as cur, cur.connection.transaction():
            # The lock on the task's row must not outlive a process paused mid-transaction.
            await cur.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, true), "
                + fence.HELD_SQL.format(task="%s", worker="%s", epoch="%s") + " AS held",
                (str(fence.STALLED_WRITE_MS), *holder))
            row = await cur.fetchone()
            if not row or not row["held"]:
                raise fence.LeaseLost(f"task {holder[0]} is no longer leased to {holder[1]} "
                                      f"(epoch {holder[2]}): checkpoint not written")
            yield cur


@asynccontextmanager
async def postgres_checkpointer(database_url: str, *, pool_size: int = 5,
                                idle_transaction_seconds: float = 15,
                                ) -> AsyncIterator[AsyncPostgresSaver]:
    """LangGraph's Postgres checkpointer on its own psycopg pool (Cadre's tables use asyncpg).
    A session idle inside a transaction longer than `idle_transaction_seconds` is ended by
    the server (CADRE_DB_IDLE_TRANSACTION_SECONDS: a cut-off worker keeps no locks)."""
    async with AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=pool_size,
        open=False,
        # The saver needs autocommit and dict rows; prepared statements break behind PgBouncer.
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row,
                "options": "-c idle_in_transaction_session_timeout="
                           f"{int(idle_transaction_seconds * 1000)}"},
    ) as pool:
        yield FencedPostgresSaver(pool)  # type: ignore[arg-type]
