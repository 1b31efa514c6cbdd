"""The read-only calls of one model turn run concurrently; a side-effect call in the same turn
still waits for its approval, runs once, and results reach the model in call order."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from langchain_core.messages import ToolMessage

from graph import ApprovalDecision, task_input
from graph.run import resume, start
from graph.steps import ToolRan
from graph.testing import calls, plan, reply, verdict
from tests.agent import Agent, make_toolset
from tools import ToolContext, ToolError, Toolset


def meeting_toolset(agent: Agent, party: int, *, patience: float = 8,
                    ) -> tuple[Toolset, list[str]]:
    """The agent's tools plus `meet`, which returns only once `party` calls have started:
    run one after another, the first waits `patience` seconds for a second that never
    starts, and fails."""
    toolset = make_toolset(agent.outbox)
    barrier = asyncio.Barrier(party)
    started: list[str] = []

    @toolset.tool(risk="read_only", timeout=10)
    async def meet(ctx: ToolContext, who: str) -> str:
        """Meet the others."""
        started.append(who)
        try:
            async with asyncio.timeout(patience):
                await barrier.wait()
        except TimeoutError:
            raise ToolError(f"{who} waited alone: the other calls never started") from None
        return f"{who} met everyone"

    return toolset, started


async def _run(agent: Agent, toolset: Toolset, text: str, **deps: Any) -> Any:
    task_id = await agent.new_task(text)
    return await start(agent.graph, dataclasses.replace(agent.deps(), toolset=toolset, **deps),
                       thread_id=agent.conversation_id, input=task_input(task_id=task_id,
                                                                          text=text))


async def test_read_only_calls_of_one_turn_run_together(agent: Agent) -> None:
    toolset, started = meeting_toolset(agent, 2)
    agent.model.add(plan("Meet both"),
                    calls(("meet", {"who": "ana"}, "c1"), ("meet", {"who": "bo"}, "c2")),
                    reply("Both met."), verdict(True))
    done = await _run(agent, toolset, "Meet Ana and Bo.")
    assert done.status == "SUCCEEDED", done
    results = [m for m in agent.model.calls[2].messages if isinstance(m, ToolMessage)]
    assert [(r.tool_call_id, r.content, r.status) for r in results] == [
        ("c1", "ana met everyone", "success"), ("c2", "bo met everyone", "success")]
    ran = [s for s in await agent.steps() if isinstance(s, ToolRan)]
    assert [(s.call_id, s.ok) for s in ran] == [("c1", True), ("c2", True)]
    assert sorted(started) == ["ana", "bo"]


async def test_one_at_a_time_when_parallel_tools_is_one(agent: Agent) -> None:
    toolset, _ = meeting_toolset(agent, 2, patience=0.5)
    agent.model.add(plan("Meet both"),
                    calls(("meet", {"who": "ana"}, "c1"), ("meet", {"who": "bo"}, "c2")),
                    reply("Nobody met."), verdict(True))
    done = await _run(agent, toolset, "Meet Ana and Bo.", parallel_tools=1)
    assert done.status == "SUCCEEDED", done
    results = [m for m in agent.model.calls[2].messages if isinstance(m, ToolMessage)]
    assert [r.status for r in results] == ["error", "error"]
    assert "waited alone" in str(results[0].content)


async def test_a_side_effect_in_the_turn_waits_for_approval_and_runs_once(agent: Agent) -> None:
    toolset, started = meeting_toolset(agent, 2, patience=0.5)
    agent.model.add(plan("Meet both, then report"), calls(
        ("meet", {"who": "ana"}, "c1"),
        ("send_report", {"to": "ana@example.com", "body": "met"}, "c2"),
        ("meet", {"who": "bo"}, "c3")))
    held = await _run(agent, toolset, "Meet Ana and Bo and report.")
    assert held.status == "PENDING_APPROVAL"
    assert started == [] and agent.outbox.sent == [], "nothing of the turn ran before approval"

    agent.model.add(reply("Met and reported."), verdict(True))
    done = await resume(agent.graph, dataclasses.replace(agent.deps(), toolset=toolset),
                        thread_id=agent.conversation_id,
                        decision=ApprovalDecision(decision="approve"))
    assert done.status == "SUCCEEDED", done
    assert [m["to"] for m in agent.outbox.sent] == ["ana@example.com"]
    # The report ran alone, between the two: the meetings could not meet each other.
    results = [m for m in agent.model.calls[2].messages if isinstance(m, ToolMessage)]
    assert [(r.tool_call_id, r.status) for r in results] == [
        ("c1", "error"), ("c2", "success"), ("c3", "error")]
    assert started == ["ana", "bo"]
