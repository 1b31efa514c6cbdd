"""Tokens stream out of the graph while the model writes, for the live views to forward."""

from __future__ import annotations

from langchain_core.messages import AIMessageChunk

from graph import task_input
from graph.testing import plan, reply, verdict
from tests.agent import Agent


async def test_answer_tokens_stream_from_the_act_node(agent: Agent) -> None:
    agent.model.add(plan("Answer"), reply("Paris is the capital of France."), verdict(True))
    task_id = await agent.new_task("Capital of France?")
    tokens: list[tuple[str, str]] = []
    async for chunk, meta in agent.graph.astream(
        task_input(task_id=task_id, text="Capital of France?"),
        {"configurable": {"thread_id": agent.conversation_id}},
        context=agent.deps(), stream_mode="messages", durability="sync",
    ):
        if isinstance(chunk, AIMessageChunk) and chunk.content:
            tokens.append((meta["langgraph_node"], str(chunk.content)))
    assert [node for node, _ in tokens] == ["act"] * 6
    assert "".join(text for _, text in tokens) == "Paris is the capital of France."
