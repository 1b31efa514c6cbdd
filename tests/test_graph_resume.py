"""A run killed mid-step resumes from its last checkpoint in a new graph instance, and the
side effect that had completed is not repeated (the ledger replays it)."""

from __future__ import annotations

import asyncio
import json

from graph import compile_graph, postgres_checkpointer
from graph.testing import calls, plan, reply, verdict
from tests.agent import Agent


async def test_kill_mid_tool_then_resume_runs_the_side_effect_once(agent: Agent) -> None:
    agent.model.add(
        plan("Send the report and wait for the reply"),
        calls(("send_report", {"to": "ana@example.com", "body": "Q3 numbers"}, "call_send"),
              ("wait_a_while", {"seconds": 0.5}, "call_wait")),
    )
    pending = await agent.start("Send Ana the Q3 numbers, then wait.")
    assert pending.status == "pending_approval"

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

    assert done.status == "succeeded", done
    assert len(agent.outbox.sent) == 1, "the side effect ran exactly once"
    executed = [(r["tool_name"], json.loads(r["tool_output"])) for r in await agent.logs()
                if r["node"] == "execute"]
    assert ("send_report", {"ok": True, "content": "sent to ana@example.com", "replayed": True}) \
        in executed
    assert ("wait_a_while", {"ok": True, "content": "waited", "replayed": False}) in executed
    ledger = {r["tool_name"]: r["status"] for r in await agent.db.fetch(
        "SELECT tool_name, status FROM tool_calls WHERE task_id = $1::uuid", agent.task_id)}
    assert ledger == {"send_report": "SUCCEEDED", "wait_a_while": "SUCCEEDED"}


async def test_resume_after_kill_before_the_approval_is_answered(agent: Agent) -> None:
    agent.model.add(plan("Send"), calls(("send_report", {"to": "b@example.com", "body": "x"}, None)))
    assert (await agent.start("Send x to b.")).status == "pending_approval"

    async with postgres_checkpointer(agent.database_url) as saver:
        agent.graph = compile_graph(saver)
        still = await agent.proceed()
        assert still.status == "pending_approval", "nothing runs without the answer"
        agent.model.add(reply("Sent."), verdict(True))
        done = await agent.resume("approve")
    assert done.status == "succeeded"
    assert len(agent.outbox.sent) == 1
