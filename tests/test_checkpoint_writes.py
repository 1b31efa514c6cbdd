"""Cadre's checkpointer writes a checkpoint's blobs and a task's writes as one statement each,
and what it wrote reads back exactly as what LangGraph's own saver writes row by row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from graph import postgres_checkpointer

# LangGraph's special channels (private constants since 1.0), written with negative indexes.
ERROR, INTERRUPT = "__error__", "__interrupt__"


@pytest.fixture
async def savers(database_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """Cadre's saver and LangGraph's own on the same pool."""
    async with postgres_checkpointer(database_url) as cadre:
        yield cadre, AsyncPostgresSaver(cadre.conn)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The table of every INSERT a psycopg cursor sends into checkpoint_blobs or
    checkpoint_writes, once per statement."""
    sent: list[str] = []
    execute, executemany = psycopg.AsyncCursor.execute, psycopg.AsyncCursor.executemany

    def note(query: Any, times: int) -> None:
        words = str(query).split()
        if words[:2] == ["INSERT", "INTO"] and words[2] in ("checkpoint_blobs",
                                                           "checkpoint_writes"):
            sent.extend([words[2]] * times)

    async def spy_execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        note(query, 1)
        return await execute(self, query, params, **kwargs)

    async def spy_executemany(self: Any, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        rows = list(params_seq)
        note(query, len(rows))
        return await executemany(self, query, rows, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", spy_execute)
    monkeypatch.setattr(psycopg.AsyncCursor, "executemany", spy_executemany)
    return sent


def _checkpoint() -> Any:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {
        "messages": [HumanMessage("What does an apple cost?"), AIMessage("1.25")],
        "plan": {"steps": ["Look it up", "Answer"]},
        "usage": {"tokens_in": 12, "tokens_out": 3},
        "iterations": 2,  # a primitive: inline in the checkpoint, not a blob
    }
    checkpoint["channel_versions"] = {name: "0000000001.00000000" for name in
                                      checkpoint["channel_values"]}
    return checkpoint


async def _write(saver: Any, thread: str, writes: list[tuple[str, Any]]) -> Any:
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    checkpoint = _checkpoint()
    saved = await saver.aput(config, checkpoint, {"source": "loop", "step": 1},
                             checkpoint["channel_versions"])
    await saver.aput_writes(saved, writes, task_id="task-1", task_path="~plan")
    return await saver.aget_tuple(saved)


def _same(ours: Any, theirs: Any) -> None:
    assert ours.checkpoint["channel_values"] == theirs.checkpoint["channel_values"]
    assert ours.pending_writes == theirs.pending_writes


async def test_blobs_and_writes_go_in_one_statement_each_and_read_back_the_same(
        savers: tuple[Any, Any], statements: list[str]) -> None:
    cadre, langgraph = savers
    writes = [("messages", [AIMessage("looked up")]), ("plan", {"steps": ["Answer"]}),
              ("usage", {"tokens_in": 5}), ("iterations", 3), (ERROR, ValueError("late"))]

    ours = await _write(cadre, "ours", writes)
    assert statements == ["checkpoint_blobs", "checkpoint_writes"], \
        "three blobs and five writes, one statement each"
    statements.clear()
    theirs = await _write(langgraph, "theirs", writes)
    assert len(statements) == 3 + 5, "LangGraph's own saver: a statement per row"

    _same(ours, theirs)
    assert ours.checkpoint["channel_values"]["iterations"] == 2
    assert [(task, channel) for task, channel, _ in ours.pending_writes] == [
        ("task-1", name) for name in (ERROR, "messages", "plan", "usage", "iterations")]


async def test_writes_that_would_update_one_row_twice_go_row_by_row(
        savers: tuple[Any, Any], statements: list[str]) -> None:
    """Writes only to special channels are upserts; two to the same one have the same key,
    which one statement may not update twice: they go one by one, the last one kept."""
    cadre, langgraph = savers
    writes = [(INTERRUPT, "first"), (INTERRUPT, "second")]
    ours = await _write(cadre, "ours", writes)
    assert statements == ["checkpoint_blobs", "checkpoint_writes", "checkpoint_writes"]
    theirs = await _write(langgraph, "theirs", writes)
    _same(ours, theirs)
    assert [value for _, _, value in ours.pending_writes] == ["second"]


async def test_writing_the_same_writes_again_changes_nothing(savers: tuple[Any, Any]) -> None:
    cadre, _ = savers
    writes = [("plan", {"steps": ["A"]}), ("usage", {"tokens_in": 1})]
    first = await _write(cadre, "again", writes)
    await cadre.aput_writes(first.config, [("plan", {"steps": ["B"]}), ("usage", {})],
                            task_id="task-1", task_path="~plan")
    again = await cadre.aget_tuple(first.config)
    assert again.pending_writes == first.pending_writes, "a task's writes are kept once"
