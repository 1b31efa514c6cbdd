"""Tokens stream out of the graph while the model writes, for the live views to forward."""

from __future__ import annotations

import asyncio
import uuid

from langchain_core.messages import AIMessageChunk

from graph import task_input
from graph.run import _AnswerTokens
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


async def test_answer_tokens_go_on_together_and_all_before_the_answer_ends() -> None:
    got: list[str] = []

    async def on_token(text: str) -> None:
        got.append(text)

    handler = _AnswerTokens(on_token, flush_seconds=3600)  # only the answer's end hands on
    run = uuid.uuid4()
    await handler.on_chat_model_start({}, [[]], run_id=run, metadata={"langgraph_node": "act"})
    for word in ["Paris", " is", " the", " capital."]:
        await handler.on_llm_new_token(word, run_id=run)
    assert got == []
    await handler.on_llm_end(None, run_id=run)
    assert got == ["Paris is the capital."]
    # A plan's tokens are not the answer's.
    planning = uuid.uuid4()
    await handler.on_chat_model_start({}, [[]], run_id=planning,
                                      metadata={"langgraph_node": "plan"})
    await handler.on_llm_new_token("1. Look", run_id=planning)
    await handler.on_llm_end(None, run_id=planning)
    assert got == ["Paris is the capital."]


async def test_held_tokens_go_on_while_the_model_pauses() -> None:
    got: list[str] = []

    async def on_token(text: str) -> None:
        got.append(text)

    handler = _AnswerTokens(on_token, flush_seconds=0.01)
    run = uuid.uuid4()
    await handler.on_chat_model_start({}, [[]], run_id=run, metadata={"langgraph_node": "act"})
    await handler.on_llm_new_token("Paris", run_id=run)
    await handler.on_llm_new_token(" is", run_id=run)
    # The loop runs the flush (due first) before this sleep ends: no new token needed.
    await asyncio.sleep(0.2)
    assert got == ["Paris is"]
    await handler.on_llm_new_token(" the capital.", run_id=run)
    await handler.on_llm_error(RuntimeError("cut off"), run_id=run)
    assert got == ["Paris is", " the capital."]
