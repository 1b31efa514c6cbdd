"""The model factory over real HTTP against a fake OpenAI-compatible server."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from graph.errors import ModelUnavailable
from graph.llm import ModelConfig, call_model, make_chat_model
from graph.testing import FakeOpenAIServer, FakeResponse, completion
from tests.agent import Agent


async def _model(server: FakeOpenAIServer, **overrides: object) -> Any:
    config = ModelConfig(model="fake", base_url=server.base_url, max_retries=3, timeout=10)
    return await asyncio.to_thread(make_chat_model, replace(config, **overrides))


async def test_retries_429_with_retry_after_then_succeeds() -> None:
    async with FakeOpenAIServer() as server:
        server.queue(FakeResponse(status=429, headers={"Retry-After": "1"}),
                     FakeResponse(body=completion("hello")))
        message = await call_model(await _model(server), [HumanMessage("hi")])
    assert message.content == "hello"
    assert len(server.requests) == 2 and server.unexpected == 0
    assert message.usage_metadata is not None and message.usage_metadata["input_tokens"] == 12


async def test_retries_500_then_succeeds() -> None:
    async with FakeOpenAIServer() as server:
        server.queue(FakeResponse(status=500), FakeResponse(status=503),
                     FakeResponse(body=completion("ok")))
        message = await call_model(await _model(server), [HumanMessage("hi")])
    assert message.content == "ok" and len(server.requests) == 3


async def test_gives_up_with_model_unavailable_after_the_retry_budget() -> None:
    async with FakeOpenAIServer() as server:
        server.default = FakeResponse(status=500)
        with pytest.raises(ModelUnavailable, match="answered 500 after retries"):
            await call_model(await _model(server, max_retries=2), [HumanMessage("hi")])
    assert len(server.requests) == 3, "one try and two retries"


async def test_slow_response_times_out_as_model_unavailable() -> None:
    async with FakeOpenAIServer() as server:
        server.default = FakeResponse(body=completion("late"), delay=3)
        with pytest.raises(ModelUnavailable, match="could not be reached"):
            await call_model(await _model(server, timeout=0.5, max_retries=1), [HumanMessage("hi")])
    assert len(server.requests) == 2


async def test_malformed_tool_call_json_is_an_invalid_tool_call() -> None:
    async with FakeOpenAIServer() as server:
        server.queue(FakeResponse(body=completion(tool_calls=[("multiply", "{a: 2, b: 21")])))
        message = await call_model(await _model(server), [HumanMessage("hi")], tools=[{
            "type": "function", "function": {"name": "multiply", "parameters": {"type": "object"}}}])
    assert message.tool_calls == []
    assert [c["name"] for c in message.invalid_tool_calls] == ["multiply"]


async def test_whole_graph_over_http_with_a_forced_plan_tool(agent: Agent) -> None:
    async with FakeOpenAIServer() as server:
        server.queue(
            FakeResponse(body=completion(tool_calls=[("submit_plan", '{"steps": ["Answer"]}')])),
            FakeResponse(body=completion("Paris.")),
            FakeResponse(body=completion(tool_calls=[
                ("submit_verdict", '{"goal_met": true, "reason": "answered"}')])),
        )
        deps = agent.deps()
        http_deps = replace(deps, model=await _model(server))
        from graph.run import start, task_input

        task_id = await agent.new_task("Capital of France?")
        done = await start(agent.graph, http_deps, thread_id=agent.conversation_id,
                           input=task_input(task_id=task_id, text="Capital of France?"))
    assert done.status == "SUCCEEDED" and done.final_answer == "Paris."
    assert server.unexpected == 0
    plan_request = server.requests[0]
    assert plan_request["tool_choice"] == {"type": "function", "function": {"name": "submit_plan"}}
    assert plan_request["model"] == "fake"
    assert done.usage == {"tokens_in": 36, "tokens_out": 21, "model_calls": 3}
