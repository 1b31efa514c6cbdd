"""End to end against the real offline model: llama-cpp-python's server with SmolLM2-135M,
through ChatOpenAI, the graph and the Postgres checkpointer. The model is tiny, so the test
asserts that a task reaches a terminal state through real calls, not that it is right."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from app.stack import llm
from app.stack.ports import free_port
from graph.approvals import ApprovalDecision
from graph.llm import ModelConfig, make_chat_model
from graph.run import resume, start, task_input
from graph.steps import ModelCalled, PlanMade
from tests.agent import Agent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def offline_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert llm.available(), "make test installs the local-llm extra"
    server = llm.EmbeddedLLM(port=free_port(), context_tokens=8192,
                             log_path=Path(tmp_path_factory.mktemp("llm")) / "llm.log")
    proc = server.process()
    proc.start()
    try:
        server.wait_ready(proc)
        yield server.base_url
    finally:
        proc.stop()


async def test_a_task_reaches_a_terminal_state_on_the_offline_model(
    agent: Agent, offline_model: str
) -> None:
    config = ModelConfig(model=llm.MODEL_ALIAS, base_url=offline_model, offline=True,
                         max_tokens=200, timeout=120, max_retries=1)
    deps = replace(agent.deps(), model=await asyncio.to_thread(make_chat_model, config))
    text = "What is 6 times 7? Use the multiply tool, then answer."
    task_id = await agent.new_task(text)
    result = await start(agent.graph, deps, thread_id=agent.conversation_id,
                         input=task_input(task_id=task_id, text=text, max_iterations=4,
                                          token_budget=30_000, deadline_seconds=300))
    while result.status == "PENDING_APPROVAL":  # a tiny model may reach for a side effect
        result = await resume(agent.graph, deps, thread_id=agent.conversation_id,
                              decision=ApprovalDecision(decision="reject",
                                                        comment="not in this test"))

    assert result.status in ("SUCCEEDED", "FAILED"), result
    if result.stop is not None:
        assert result.stop["kind"] != "model_unavailable", result.stop
    assert result.usage["model_calls"] >= 2
    assert result.usage["tokens_in"] > 0 and result.usage["tokens_out"] > 0
    steps = await agent.steps()
    calls = [s for s in steps if isinstance(s, ModelCalled)]
    assert calls[0].purpose == "plan" and "act" in [c.purpose for c in calls]
    assert all(c.tokens_in > 0 for c in calls), calls
    assert {c.model for c in calls} == {llm.MODEL_ALIAS}
    assert any(isinstance(s, PlanMade) for s in steps)
    assert result.plan, "the model's plan was stored"
