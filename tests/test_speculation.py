"""Speculative tool calls on the real graph: a predicted call used when the model asks for it
(run once, ahead) and dropped unseen when it asks for something else; a call started while
the model's message still streams; nothing speculated that is not read-only and allowed;
cancellation stops what runs ahead."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import guardrails
from app.settings import Settings
from graph import task_input
from graph.run import RunInterrupted, drive, start
from graph.speculation import METRICS, Speculator
from graph.steps import ToolRan
from graph.testing import call, calls, plan, reply, serving, verdict
from guardrails import DefaultPolicy
from guardrails.policy import parse_policy
from tests.agent import Agent, Outbox, make_toolset
from tests.service import running_service
from tools import ToolContext, Toolset
from tools.builtin.fetch import FetchPolicy
from tools.builtin.fetch import register as register_fetch

DEFAULT_POLICY = Path(guardrails.__file__).parent / "policy.toml"


@dataclasses.dataclass
class Probe:
    """Read-only tools that say when they start, finish or are cancelled."""

    ran: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    started: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    cancelled: list[str] = dataclasses.field(default_factory=list)
    hold: float = 0.0

    @property
    def searches(self) -> list[Any]:
        return [args for name, args in self.ran if name == "search"]


def probe_toolset(agent: Agent, probe: Probe) -> Toolset:
    toolset = make_toolset(agent.outbox)

    @toolset.tool(risk="read_only", timeout=60)
    async def search(ctx: ToolContext, query: str, limit: int = 5) -> dict[str, Any]:
        """Search the knowledge base."""
        probe.ran.append(("search", query))
        probe.started.set()
        try:
            await asyncio.sleep(probe.hold)
        except asyncio.CancelledError:
            probe.cancelled.append(query)
            raise
        return {"results": [{"title": query, "url": f"https://kb.example/{query}"}]}

    @toolset.tool(risk="read_only", timeout=60)
    async def fetch_url(ctx: ToolContext, url: str) -> str:
        """Read a page."""
        probe.ran.append(("fetch_url", url))
        return f"the page at {url}"

    @toolset.tool(risk="read_only", timeout=60)
    async def python(ctx: ToolContext, code: str) -> str:
        """Run Python."""
        probe.ran.append(("python", code))
        return "ran"

    return toolset


def speculator(agent: Agent, toolset: Toolset, **options: Any) -> Speculator:
    return Speculator(toolset=toolset, policy=options.pop("policy", DefaultPolicy()),
                      db=agent.db, redis=agent.redis, **options)


async def _run(agent: Agent, toolset: Toolset, text: str, spec: Speculator | None) -> Any:
    task_id = await agent.new_task(text)
    deps = dataclasses.replace(agent.deps(), toolset=toolset, speculator=spec)
    return await start(agent.graph, deps, thread_id=agent.conversation_id,
                       input=task_input(task_id=task_id, text=text))


async def _metrics(agent: Agent) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await agent.redis.hgetall(METRICS)).items()}


async def test_a_predicted_search_is_used_when_the_model_asks_for_it(agent: Agent) -> None:
    probe = Probe()
    toolset = probe_toolset(agent, probe)
    agent.model.add(plan("Search for pear prices", "Answer"),
                    call("search", {"query": "pear  prices"}, id="c1"),
                    reply("Pears cost 2 EUR."), verdict(True))
    done = await _run(agent, toolset, "What do pears cost?", speculator(agent, toolset))
    assert done.status == "SUCCEEDED", done
    assert probe.searches == ["pear prices"], "the search ran once, ahead"
    (ran,) = [s for s in await agent.steps() if isinstance(s, ToolRan)]
    assert ran.call_id == "c1" and ran.ok and ran.speculative and ran.saved_ms >= 0
    results = [m for m in agent.model.calls[2].messages if isinstance(m, ToolMessage)]
    assert [r.tool_call_id for r in results] == ["c1"] and "kb.example" in str(results[0].content)
    counted = await _metrics(agent)
    assert counted["plan|started"] == 1 and counted["plan|hit"] == 1
    assert "plan|wasted" not in counted


async def test_a_search_the_task_asks_for_runs_while_planning_and_its_links_are_fetched(
        agent: Agent) -> None:
    probe = Probe()
    toolset = probe_toolset(agent, probe)
    link = "https://kb.example/pears"
    agent.model.add(plan("Find pear prices", "Read the top result"),
                    call("search", {"query": "pears"}, id="s1"),
                    call("fetch_url", {"url": link}, id="f1"),
                    reply("Pears cost 2 EUR."), verdict(True))
    done = await _run(agent, toolset, "Search for pears. Then read the top result.",
                      speculator(agent, toolset))
    assert done.status == "SUCCEEDED", done
    assert probe.ran == [("search", "pears"), ("fetch_url", link)], "each ran once, ahead"
    ran = {s.call_id: s for s in await agent.steps() if isinstance(s, ToolRan)}
    assert ran["s1"].speculative and ran["f1"].speculative
    counted = await _metrics(agent)
    assert counted["plan|hit"] == 1 and counted["results|hit"] == 1


async def test_calls_that_followed_before_are_predicted_from_history(agent: Agent) -> None:
    probe = Probe()
    toolset = probe_toolset(agent, probe)
    for _ in range(3):
        agent.model.add(plan("Price three apples"), call("lookup_price", {"item": "apple"}),
                        call("multiply", {"a": 1.25, "b": 3}, id="m1"),
                        reply("3.75 EUR."), verdict(True))
        done = await _run(agent, toolset, "What do 3 apples cost?", speculator(agent, toolset))
        assert done.status == "SUCCEEDED", done
    # Learned twice by the third run: multiply after lookup_price starts as the model thinks.
    multiplied = [s for s in await agent.steps() if isinstance(s, ToolRan) and s.call_id == "m1"]
    assert [s.speculative for s in multiplied] == [True]
    assert (await _metrics(agent))["history|hit"] == 1


async def test_a_prediction_the_model_does_not_ask_for_is_never_shown(agent: Agent) -> None:
    probe = Probe(hold=30)
    toolset = probe_toolset(agent, probe)
    agent.model.add(plan("Search for kiwi prices"), call("lookup_price", {"item": "apple"}),
                    reply("An apple costs 1.25 EUR."), verdict(True))
    done = await _run(agent, toolset, "What does an apple cost?", speculator(agent, toolset))
    assert done.status == "SUCCEEDED", done
    assert probe.cancelled == ["kiwi prices"], "dropped once the model asked for another call"
    for recorded in agent.model.calls:
        assert not any("kb.example" in str(m.content) for m in recorded.messages)
    assert [s.tool for s in await agent.steps() if isinstance(s, ToolRan)] == ["lookup_price"]
    counted = await _metrics(agent)
    assert counted["plan|started"] == 1 and counted["plan|wasted"] == 1
    assert "plan|hit" not in counted


async def test_a_call_complete_mid_stream_starts_before_the_message_ends(agent: Agent) -> None:
    probe = Probe()
    toolset = probe_toolset(agent, probe)
    agent.model.add(plan("Look things up"))
    agent.model.add(calls(("search", {"query": "apples"}, "c1"),
                          ("lookup_price", {"item": "apple"}, "c2")))
    agent.model.add(reply("Apples: 1.25 EUR."), verdict(True))
    held: list[int] = []

    async def between(index: int) -> None:
        # After the first call's chunk the model stops streaming until the call has started:
        # a search that waited for the message's end would never start, and this times out.
        if index == 0 and len(agent.model.calls) == 2:
            held.append(index)
            async with asyncio.timeout(10):
                await probe.started.wait()

    agent.model.between_chunks = between
    done = await _run(agent, toolset, "Apple prices?", speculator(agent, toolset))
    assert done.status == "SUCCEEDED", done
    assert held == [0] and probe.searches == ["apples"]
    ran = {s.call_id: s for s in await agent.steps() if isinstance(s, ToolRan)}
    assert ran["c1"].speculative and ran["c2"].speculative, "both were complete before the end"
    assert (await _metrics(agent))["stream|hit"] == 2


async def test_nothing_unsafe_is_speculated(agent: Agent) -> None:
    probe = Probe()
    toolset = probe_toolset(agent, probe)
    spec = speculator(agent, toolset)
    await spec.begin_turn({"task_id": "", "role": "analyst"})
    assert spec.start("send_report", {"to": "x@example.com", "body": "y"}, "history") is None
    assert spec.start("drop_everything", {}, "history") is None
    assert spec.start("search", {"query": 3j}, "history") is None, "invalid arguments"
    # A policy that holds `python` for approval: no python ahead, whatever predicted it.
    held = parse_policy(DEFAULT_POLICY.read_text() + '\n[[rules]]\nname = "hold-python"\n'
                        'tool = "python"\nverdict = "approve"\nreason = "code is reviewed"\n')
    strict = speculator(agent, toolset, policy=held)
    await strict.begin_turn({"task_id": "", "role": "analyst"})
    assert strict.start("python", {"code": "print(1)"}, "history") is None
    assert strict.start("search", {"query": "ok"}, "history") is not None
    await strict.aclose()
    await spec.aclose()

    # A side effect streamed by the model still waits for its approval.
    agent.model.add(plan("Send"), call("send_report", {"to": "x@example.com", "body": "y"}))
    pending = await _run(agent, toolset, "Send y to x.", speculator(agent, toolset))
    assert pending.status == "PENDING_APPROVAL"
    assert agent.outbox.sent == []
    counted = await _metrics(agent)
    # send_report, drop_everything, and python under the strict policy.
    assert counted["history|refused"] == 3 and "stream|started" not in counted


async def test_a_speculative_fetch_to_a_private_address_is_refused(agent: Agent) -> None:
    hits: list[str] = []

    async def secret(request: Request) -> PlainTextResponse:
        hits.append(request.url.path)
        return PlainTextResponse("internal")

    async with serving(Starlette(routes=[Route("/secret", secret)])) as port:
        url = f"http://127.0.0.1:{port}/secret"
        toolset = make_toolset(agent.outbox)
        register_fetch(toolset, policy=FetchPolicy())

        @toolset.tool(risk="read_only", timeout=10)
        async def search(ctx: ToolContext, query: str) -> str:
            """Search."""
            return json.dumps({"results": [{"url": url}]})

        agent.model.add(plan("Search for the internal page"),
                        call("search", {"query": "the internal page"}),
                        call("fetch_url", {"url": url}, id="f1"),
                        reply("That page is not reachable."), verdict(True))
        done = await _run(agent, toolset, "Read the internal page.", speculator(agent, toolset))
        assert done.status == "SUCCEEDED", done
        assert hits == [], "neither the speculative nor the model's fetch reached the address"
        fetched = next(s for s in await agent.steps()
                       if isinstance(s, ToolRan) and s.call_id == "f1")
        assert not fetched.ok and "refused to fetch" in fetched.content
        assert fetched.speculative, "the refusal was the speculative call's, as a normal one"


async def test_cancel_stops_the_speculative_calls(agent: Agent) -> None:
    probe = Probe(hold=60)
    toolset = probe_toolset(agent, probe)
    agent.model.add(plan("Search for slow things"), call("lookup_price", {"item": "apple"}))
    task_id = await agent.new_task("Slow things?")
    deps = dataclasses.replace(agent.deps(), toolset=toolset,
                               speculator=speculator(agent, toolset))

    async def cancelled_once_running() -> str | None:
        return "cancelled" if probe.started.is_set() else None

    with pytest.raises(RunInterrupted):
        await drive(agent.graph, deps, agent.conversation_id,
                    task_input(task_id=task_id, text="Slow things?"), task_id=task_id,
                    at_boundary=cancelled_once_running)
    assert probe.cancelled == ["slow things"]


async def test_a_hit_shows_on_the_event_and_in_metrics(settings: Settings) -> None:
    outbox = Outbox()
    toolset = make_toolset(outbox)

    @toolset.tool(risk="read_only", timeout=10)
    async def search(ctx: ToolContext, query: str) -> str:
        """Search."""
        return f"results for {query}"

    async with running_service(settings, toolset=toolset) as service:
        service.model.add(plan("Search for pear prices"),
                          call("search", {"query": "pear prices"}, id="s1"),
                          reply("Pears: 2 EUR."), verdict(True))
        created = await service.submit("What do pears cost?")
        await service.wait_status(created["id"], "SUCCEEDED")
        events = await service.sse(created["id"])
        (result,) = [e for e in events if e["type"] == "tool_result"]
        assert result["data"]["speculative"] is True and result["data"]["saved_ms"] >= 0
        metrics = (await service.http.get("/metrics")).text
        assert 'cadre_speculative_calls_total{outcome="hit",source="plan"} 1.0' in metrics
        assert 'cadre_speculative_calls_total{outcome="started",source="plan"} 1.0' in metrics
        assert 'outcome="wasted"' not in metrics, "a call made is not predicted again"
        assert "cadre_speculation_saved_seconds_total " in metrics
