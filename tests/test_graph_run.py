"""Scripted runs of the whole graph on the real Postgres checkpointer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, ToolMessage

from graph.run import outcome
from graph.steps import (
    AnswerChecked,
    ModelCalled,
    PlanMade,
    RunStopped,
    ToolHeld,
    ToolNotRun,
    ToolRan,
)
from graph.testing import call, calls, malformed, plan, reply, verdict
from tests.agent import Agent


async def test_three_step_task_with_two_tools_and_an_approval(agent: Agent) -> None:
    agent.model.add(
        plan("Look up the apple price", "Multiply it by 3", "Send the figure to Ana"),
        call("lookup_price", {"item": "apple"}),
        call("multiply", {"a": 1.25, "b": 3}),
        call("send_report", {"to": "ana@example.com", "body": "3 apples cost 3.75 EUR"}),
    )
    pending = await agent.start("What do 3 apples cost? Send the figure to ana@example.com.")
    assert pending.status == "PENDING_APPROVAL"
    assert pending.approval is not None
    assert pending.approval.tool == "send_report"
    assert pending.approval.arguments["to"] == "ana@example.com"
    assert "approve" in pending.approval.reason
    assert agent.outbox.sent == [], "nothing is sent before the click"

    agent.model.add(reply("3 apples cost 3.75 EUR; the figure was sent to Ana."),
                    verdict(True, "price computed and sent"))
    done = await agent.resume("approve")

    assert done.status == "SUCCEEDED", done
    assert done.final_answer == "3 apples cost 3.75 EUR; the figure was sent to Ana."
    assert [s["status"] for s in done.plan] == ["done", "done", "done"]
    assert len(agent.outbox.sent) == 1
    assert agent.outbox.sent[0]["key"].startswith(agent.task_id + ":")
    assert done.usage == {"tokens_in": 30 + 4 * 20 + 30, "tokens_out": 15 + 4 * 10 + 5,
                          "model_calls": 6}

    steps = await agent.steps()
    assert [s.kind for s in steps] == [
        "model_called", "plan_made",
        "model_called", "tool_proposed", "tool_ran",
        "model_called", "tool_proposed", "tool_ran",
        "model_called", "tool_proposed", "tool_held", "tool_ran",
        "model_called", "model_called", "answer_checked"]
    assert [s.number for s in steps] == list(range(1, 16))
    assert {s.agent for s in steps} == {"cadre"}
    ran = [s for s in steps if isinstance(s, ToolRan)]
    assert [s.tool for s in ran] == ["lookup_price", "multiply", "send_report"]
    assert json.loads(ran[0].content) == {"item": "apple", "price_eur": 1.25}
    assert (ran[1].ok, ran[1].content, ran[1].replayed) == (True, "3.75", False)
    assert all(s.call_id for s in ran), "a result names the call it answers"
    held = next(s for s in steps if isinstance(s, ToolHeld))
    assert (held.tool, held.risk, held.arguments["to"]) == ("send_report", "side_effect",
                                                            "ana@example.com")
    calls_made = [s for s in steps if isinstance(s, ModelCalled)]
    assert [c.purpose for c in calls_made] == ["plan", "act", "act", "act", "act", "verify"]
    assert (calls_made[0].tokens_in, calls_made[0].tokens_out) == (30, 15)
    assert calls_made[0].model == "scripted"
    assert [c.finish_reason for c in calls_made] == ["tool_calls"] * 4 + ["stop", "tool_calls"]
    plan_made = next(s for s in steps if isinstance(s, PlanMade))
    assert [i.description for i in plan_made.steps] == [
        "Look up the apple price", "Multiply it by 3", "Send the figure to Ana"]
    checked = steps[-1]
    assert isinstance(checked, AnswerChecked) and checked.met and checked.reason == \
        "price computed and sent"
    # The named columns stay filled for SQL and older readers.
    logs = await agent.logs()
    assert [r["node"] for r in logs] == [
        "plan", "plan", "act", "act", "execute", "act", "act", "execute", "act", "act",
        "approve", "execute", "act", "verify", "verify"]
    assert json.loads(logs[7]["tool_output"]) == {"ok": True, "content": "3.75", "replayed": False}
    assert logs[0]["tokens_in"] == 30 and logs[0]["tokens_out"] == 15
    ledger = await agent.db.fetch("SELECT tool_name, status FROM tool_calls WHERE task_id = $1::uuid "
                                  "ORDER BY created_at", agent.task_id)
    assert [(r["tool_name"], r["status"]) for r in ledger] == [
        ("lookup_price", "SUCCEEDED"), ("multiply", "SUCCEEDED"), ("send_report", "SUCCEEDED")]


async def test_rejected_approval_is_observed_and_replanned(agent: Agent) -> None:
    agent.model.add(plan("Send the report"),
                    call("send_report", {"to": "eve@example.com", "body": "numbers"}))
    pending = await agent.start("Send the numbers to Eve.")
    assert pending.status == "PENDING_APPROVAL"

    agent.model.add(plan("Tell the user the report was not sent"),
                    reply("I did not send the report: it was rejected."),
                    verdict(True, "user informed"))
    done = await agent.resume("reject", "wrong recipient")

    assert done.status == "SUCCEEDED"
    assert agent.outbox.sent == []
    replan_prompt = str(agent.model.calls[2].messages[0].content)
    assert "a person rejected send_report (wrong recipient)" in replan_prompt
    act_messages = agent.model.calls[3].messages
    rejection = [m for m in act_messages if isinstance(m, ToolMessage)]
    assert rejection and "rejected" in str(rejection[-1].content)
    steps = await agent.steps()
    not_run = [s for s in steps if isinstance(s, ToolNotRun)]
    assert [(s.tool, s.why) for s in not_run] == [("send_report", "rejected")]
    assert "wrong recipient" in not_run[0].message
    plans = [s for s in steps if isinstance(s, PlanMade)]
    assert [p.revised for p in plans] == [False, True]
    assert plans[1].reason == "a person rejected send_report (wrong recipient)"


async def test_destructive_tool_is_denied_and_reported_to_the_model(agent: Agent) -> None:
    agent.model.add(plan("Clean up"), call("drop_everything"),
                    reply("I am not allowed to delete the data."), verdict(True, "explained"))
    done = await agent.start("Delete everything.")
    assert done.status == "SUCCEEDED"
    tool_results = [m for m in agent.model.calls[2].messages if isinstance(m, ToolMessage)]
    assert "denied by policy" in str(tool_results[-1].content)
    assert [(s.tool, s.why) for s in await agent.steps() if isinstance(s, ToolNotRun)] == [
        ("drop_everything", "denied")]


async def test_repeated_identical_calls_replan_then_stop(agent: Agent) -> None:
    same = {"item": "apple"}
    agent.model.add(plan("Look up the price"), *[call("lookup_price", same) for _ in range(3)],
                    plan("Try again"), *[call("lookup_price", same) for _ in range(3)])
    done = await agent.start("Price of an apple?")
    assert done.status == "FAILED"
    assert done.stop is not None and done.stop["kind"] == "repeated_tool_calls"
    assert "3 times in a row" in done.stop["message"]
    assert "take a different approach" in str(agent.model.calls[4].messages[0].content)
    last = (await agent.steps())[-1]
    assert isinstance(last, RunStopped) and last.stop == "repeated_tool_calls"


async def test_budget_stops_before_the_call_that_would_exceed_it(agent: Agent) -> None:
    agent.model.add(plan("Look up the price", tokens=(100, 50)),
                    call("lookup_price", {"item": "apple"}, tokens=(700, 100)))
    done = await agent.start("Price of an apple?", token_budget=1_000)
    assert done.status == "FAILED"
    assert done.stop is not None and done.stop["kind"] == "budget_exceeded"
    assert "token budget of 1000" in done.stop["message"]
    assert done.usage["tokens_in"] + done.usage["tokens_out"] == 950 <= 1_000
    assert len(agent.model.calls) == 2, "the third call was never made"
    assert "1.25" in done.partial, "the partial result is kept"
    last = (await agent.steps())[-1]
    assert isinstance(last, RunStopped) and last.stop == "budget_exceeded"


async def test_iteration_cap_ends_with_a_clear_reason(agent: Agent) -> None:
    agent.model.add(plan("Compute"), call("multiply", {"a": 1, "b": 2}),
                    call("multiply", {"a": 2, "b": 3}))
    done = await agent.start("Multiply things forever.", max_iterations=2)
    assert done.status == "FAILED"
    assert done.stop == {"kind": "iteration_limit",
                         "message": "stopped after 2 iterations without finishing"}


async def test_deadline_ends_the_run_before_any_model_call(agent: Agent) -> None:
    done = await agent.start("Anything.", deadline_seconds=1e-9)
    assert done.stop is not None and done.stop["kind"] == "deadline_exceeded"
    assert agent.model.calls == []


async def test_bad_model_output_becomes_observations_it_can_correct(agent: Agent) -> None:
    agent.model.add(
        plan("Multiply 2 by 21"),
        call("nonexistent", {}),
        call("multiply", {"a": "two", "b": 21}),
        malformed("multiply", "a=2, b=21"),
        call("multiply", {"a": 2, "b": 21}),
        reply("2 x 21 = 42"),
        verdict(True, "correct"),
    )
    done = await agent.start("What is 2 times 21?")
    assert done.status == "SUCCEEDED" and done.final_answer == "2 x 21 = 42"
    results = [str(m.content) for m in agent.model.calls[5].messages if isinstance(m, ToolMessage)]
    assert results[0].startswith("unknown tool 'nonexistent'; available tools:")
    assert results[1].startswith("invalid arguments for multiply: a:")
    assert results[2].startswith("malformed tool call")
    assert results[3] == "42.0"
    state = await agent.graph.aget_state({"configurable": {"thread_id": agent.conversation_id}})
    assert state.values["iterations"] == 5, "each bad turn counts against the cap"
    assert [s.why for s in await agent.steps() if isinstance(s, ToolNotRun)] == [
        "unknown_tool", "invalid_arguments", "malformed"]


async def test_goal_not_met_replans(agent: Agent) -> None:
    agent.model.add(plan("Answer"), reply("Apples are fruit."), verdict(False, "no price given"),
                    plan("Look up the price and answer"), reply("An apple costs 1.25 EUR."),
                    verdict(True, "price given"))
    done = await agent.start("What does an apple cost?")
    assert done.final_answer == "An apple costs 1.25 EUR."
    assert "no price given" in str(agent.model.calls[3].messages[0].content)


async def test_follow_up_in_the_same_conversation_remembers(agent: Agent) -> None:
    agent.model.add(plan("Answer"), reply("The capital of France is Paris."), verdict(True))
    first = await agent.start("What is the capital of France?")
    first_task = agent.task_id
    agent.model.add(plan("Answer"), reply("About 2.1 million people live in Paris."), verdict(True))
    second = await agent.start("And how many people live there?")

    assert first.status == second.status == "SUCCEEDED"
    assert agent.task_id != first_task
    act_call = agent.model.calls[4]
    said = [str(m.content) for m in act_call.messages]
    assert "What is the capital of France?" in said
    assert "The capital of France is Paris." in said
    assert isinstance(act_call.messages[-1], HumanMessage)
    assert second.usage["model_calls"] == 3, "usage is per task"


async def test_several_calls_in_one_turn(agent: Agent) -> None:
    agent.model.add(
        plan("Look up both prices"),
        calls(("lookup_price", {"item": "apple"}, None), ("lookup_price", {"item": "kiwi"}, None)),
        reply("An apple costs 1.25 EUR; there is no price for kiwi."),
        verdict(True),
    )
    done = await agent.start("Prices of apple and kiwi?")
    assert done.status == "SUCCEEDED"
    results = [m for m in agent.model.calls[2].messages if isinstance(m, ToolMessage)]
    assert [r.status for r in results] == ["success", "error"]
    assert "no price for 'kiwi'" in str(results[1].content)


async def test_only_the_act_calls_are_streamed(agent: Agent) -> None:
    # Plans and verdicts are asked for whole: nothing reads their tokens, and streaming costs
    # the worker CPU for every chunk (bench/model_call.py).
    agent.model.add(plan("Look up the price"), call("lookup_price", {"item": "apple"}),
                    reply("An apple costs 1.25 EUR."), verdict(True))
    done = await agent.start("What does an apple cost?")
    assert done.status == "SUCCEEDED"
    assert [(c.tools, c.streamed) for c in agent.model.calls] == [
        (["submit_plan"], False),
        (["lookup_price", "multiply", "send_report", "wait_a_while", "drop_everything"], True),
        (["lookup_price", "multiply", "send_report", "wait_a_while", "drop_everything"], True),
        (["submit_verdict"], False)]


async def test_model_unavailable_ends_the_run_with_a_clear_reason(agent: Agent) -> None:
    from graph.errors import ModelUnavailable

    agent.model.add(plan("Answer"), ModelUnavailable("the model endpoint answered 503 after retries"))
    done = await agent.start("Anything.")
    assert done.status == "FAILED"
    assert done.stop == {"kind": "model_unavailable",
                         "message": "the model endpoint answered 503 after retries"}
    assert done.plan[0]["description"] == "Answer", "work done before the failure is kept"
    last = (await agent.steps())[-1]
    assert isinstance(last, RunStopped) and last.stop == "model_unavailable"


async def test_a_run_that_ended_reports_without_loading_its_checkpoint_again(
        agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """`drive` takes the result of a run that answered or stopped from the stream's last
    values, the same result its checkpoint gives; a run that waits for a person is reported
    from its checkpoint, which holds what it waits for."""
    loads = 0
    load = agent.graph.aget_state

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal loads
        loads += 1
        return await load(*args, **kwargs)

    monkeypatch.setattr(agent.graph, "aget_state", counted)
    agent.model.add(plan("Look up the price"), call("lookup_price", {"item": "apple"}),
                    reply("An apple costs 1.25 EUR."), verdict(True))
    done = await agent.start("What does an apple cost?")
    assert (done.status, done.final_answer) == ("SUCCEEDED", "An apple costs 1.25 EUR.")
    assert loads == 1, "only `start`'s read of the thread before the run"
    assert done == await outcome(agent.graph, agent.conversation_id)

    loads = 0
    agent.model.add(plan("Compute"), call("multiply", {"a": 1, "b": 2}))
    stopped = await agent.start("Multiply things forever.", max_iterations=1)
    assert stopped.stop is not None and stopped.stop["kind"] == "iteration_limit"
    assert loads == 1
    assert stopped == await outcome(agent.graph, agent.conversation_id)

    loads = 0
    agent.model.add(plan("Send it"), call("send_report", {"to": "ana@example.com", "body": "hi"}))
    pending = await agent.start("Send Ana a note.")
    assert pending.status == "PENDING_APPROVAL" and pending.approval is not None
    assert loads == 2, "the waiting run's result comes from its checkpoint"
