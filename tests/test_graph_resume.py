"""A run killed mid-step resumes from its last checkpoint in a new graph instance, and the
side effect that had completed is not repeated (the ledger replays it)."""

from __future__ import annotations

import asyncio

from graph import compile_graph, postgres_checkpointer
from graph.steps import ToolRan
from graph.testing import calls, plan, reply, verdict
from tests.agent import Agent


async def test_kill_mid_tool_then_resume_runs_the_side_effect_once(agent: Agent) -> None:
    agent.model.add(
        plan("Send the report and wait for the reply"),
        calls(("send_report", {"to": "ana@example.com", "body": "Q3 numbers"}, "call_send"),
              ("wait_a_while", {"seconds": 0.5}, "call_wait")),
    )
    pending = await agent.start("Send Ana the Q3 numbers, then wait.")
    assert pending.status == "PENDING_APPROVAL"

    # The worker dies while the second tool of the turn is running: the first one's effect
    # has happened and is in the ledger; the checkpoint still says "execute not done".
    running = asyncio.create_task(agent.resume("approve"))
    await asyncio.wait_for(agent.outbox.slow.wait(), timeout=10)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert len(agent.outbox.sent) == 1

    # Another process picks the thread up from Postgres with a fresh graph.
    agent.model.add(reply("Sent the Q3 numbers to Ana and waited."), verdict(True))
    async with postgres_checkpointer(agent.database_url) as saver:
        agent.graph = compile_graph(saver)
        done = await agent.proceed()

    assert done.status == "SUCCEEDED", done
    assert len(agent.outbox.sent) == 1, "the side effect ran exactly once"
    # The record shows each call once: the send as it happened before the kill (its replay
    # on resume has the same step number and is not recorded again), then the wait.
    ran = [(s.tool, s.content, s.replayed) for s in await agent.steps() if isinstance(s, ToolRan)]
    assert ran == [("send_report", "sent to ana@example.com", False),
                   ("wait_a_while", "waited", False)]
    ledger = {r["tool_name"]: r["status"] for r in await agent.db.fetch(
        "SELECT tool_name, status FROM tool_calls WHERE task_id = $1::uuid", agent.task_id)}
    assert ledger == {"send_report": "SUCCEEDED", "wait_a_while": "SUCCEEDED"}


async def test_resume_after_kill_before_the_approval_is_answered(agent: Agent) -> None:
    agent.model.add(plan("Send"), calls(("send_report", {"to": "b@example.com", "body": "x"}, None)))
    assert (await agent.start("Send x to b.")).status == "PENDING_APPROVAL"

    async with postgres_checkpointer(agent.database_url) as saver:
        agent.graph = compile_graph(saver)
        still = await agent.proceed()
        assert still.status == "PENDING_APPROVAL", "nothing runs without the answer"
        agent.model.add(reply("Sent."), verdict(True))
        done = await agent.resume("approve")
    assert done.status == "SUCCEEDED"
    assert len(agent.outbox.sent) == 1
