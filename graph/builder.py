"""The state graph: plan -> act -> tools (approve, execute, observe) -> (act | plan), and
act -> verify -> (finish | plan). Any node can end the run with a `stop`."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

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
        if not pipeline:
            async with self._unlocked_cursor() as cur:
                yield cur
            return
        if holder is None:
            async with self._unlocked_cursor(pipeline=True) as cur:
                yield _one_statement_writes(cur)
            return
        # Each statement of the transaction is sent and answered on its own, not pipelined:
        # the server's idle_in_transaction_session_timeout runs only between an answer and
        # the next statement, so a process paused anywhere in the transaction loses its
        # session, and the lock on the task's row, within STALLED_WRITE_MS.
        async with self._unlocked_cursor() as cur, cur.connection.transaction():
            await cur.execute(
                "SELECT set_config('idle_in_transaction_session_timeout', %s, true), "
                + fence.HELD_SQL.format(task="%s", worker="%s", epoch="%s") + " AS held",
                (str(fence.STALLED_WRITE_MS), *holder))
            row = await cur.fetchone()
            if not row or not row["held"]:
                raise fence.LeaseLost(f"task {holder[0]} is no longer leased to {holder[1]} "
                                      f"(epoch {holder[2]}): checkpoint not written")
            yield _one_statement_writes(cur)

    @asynccontextmanager
    async def _unlocked_cursor(self, *, pipeline: bool = False,
                               ) -> AsyncIterator[AsyncCursor[DictRow]]:
        """The saver's cursor without the saver's lock when it runs on a pool: LangGraph's
        saver holds one `asyncio.Lock` around every read and write, pool or not, so a
        worker's tasks read and wrote their checkpoints one at a time, on one connection of
        the pool (LangGraph issue #7259). Here each call takes a connection of the pool.
        The lock stays for a saver on one shared connection, which Cadre never opens."""
        if not isinstance(self.conn, AsyncConnectionPool):  # (a pool cannot have a `pipe`)
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        async with self.conn.connection() as conn:
            if not pipeline:
                async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            elif self.supports_pipeline:
                async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur
            else:
                async with conn.transaction(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                    yield cur


def _as_arrays(sql: str, types: Sequence[str]) -> str:
    """`INSERT ... VALUES (%s, ...) ON CONFLICT ...` as `INSERT ... SELECT * FROM
    unnest(%s::type[], ...) ON CONFLICT ...`: the same rows and conflict rule, one statement."""
    arrays = ", ".join(f"%s::{kind}[]" for kind in types)
    rewritten, found = re.subn(r"VALUES\s*\(\s*%s(?:\s*,\s*%s)*\s*\)",
                               f"SELECT * FROM unnest({arrays})", sql)
    assert found == 1 and rewritten.count("%s") == len(types), "the saver's SQL changed"
    return rewritten


# The saver's multi-row writes (a checkpoint's blobs, a task's writes), by its SQL: the
# statement that writes them all at once, and for a DO UPDATE the positions of the conflict
# key (one statement may not update a row twice; those few go row by row, as before).
_BLOBS = ("text", "text", "text", "text", "text", "bytea")
_WRITES = ("text", "text", "text", "text", "text", "int4", "text", "text", "bytea")
_ONE_STATEMENT: dict[str, tuple[str, tuple[int, ...] | None]] = {
    AsyncPostgresSaver.UPSERT_CHECKPOINT_BLOBS_SQL:
        (_as_arrays(AsyncPostgresSaver.UPSERT_CHECKPOINT_BLOBS_SQL, _BLOBS), None),
    AsyncPostgresSaver.INSERT_CHECKPOINT_WRITES_SQL:
        (_as_arrays(AsyncPostgresSaver.INSERT_CHECKPOINT_WRITES_SQL, _WRITES), None),
    AsyncPostgresSaver.UPSERT_CHECKPOINT_WRITES_SQL:
        (_as_arrays(AsyncPostgresSaver.UPSERT_CHECKPOINT_WRITES_SQL, _WRITES), (0, 1, 2, 3, 5)),
}


class _OneStatementCursor:
    """The saver's cursor for its writes, where `executemany` of the rows of one blob or
    writes insert is one statement of arrays instead of one statement per row: a 3-call
    task's 60 row inserts become 9 statements (docs/performance.md); rows one statement may
    not hold go one `execute` each. Everything else goes to the cursor as it is."""

    def __init__(self, cursor: AsyncCursor[DictRow]) -> None:
        self._cursor = cursor

    async def executemany(self, query: str, params_seq: Iterable[Sequence[Any]],
                          **kwargs: Any) -> None:
        rows = [tuple(row) for row in params_seq]
        rewrite = _ONE_STATEMENT.get(query)
        if rewrite is not None and rows and not kwargs:
            sql, key = rewrite
            if key is None or len({tuple(row[i] for i in key) for row in rows}) == len(rows):
                await self._cursor.execute(sql, [list(column) for column in zip(*rows, strict=True)])
                return
        if kwargs:
            await self._cursor.executemany(query, rows, **kwargs)
            return
        # A statement per row, not psycopg's executemany: that pipelines its rows, and in a
        # write under a lease every statement must be answered before the next is sent
        # (FencedPostgresSaver._cursor).
        for row in rows:
            await self._cursor.execute(query, row)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def _one_statement_writes(cursor: AsyncCursor[DictRow]) -> AsyncCursor[DictRow]:
    return cast(AsyncCursor[DictRow], _OneStatementCursor(cursor))


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
        # The saver needs autocommit and dict rows; prepare_threshold=0 prepares each of its
        # statements the first time a connection runs it (LangGraph's documented setting).
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row,
                "options": "-c idle_in_transaction_session_timeout="
                           f"{int(idle_transaction_seconds * 1000)}"},
    ) as pool:
        yield FencedPostgresSaver(pool)  # type: ignore[arg-type]
