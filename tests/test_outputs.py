"""What a long conversation keeps out of its checkpoints: large tool results (graph/outputs.py:
stored once, a stub in the checkpoint, the whole result in every model call's window, from
memory or from the table), and the digest of older turns (stored once per change)."""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import replace

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from bench.loop_overhead import _checkpoint_bytes
from graph import GraphDeps, task_input
from graph.fork import fork_thread
from graph.nodes._common import window_for, window_state
from graph.outputs import HEAD_CHARS, OUTPUT_KEY, TAIL_CHARS, OutputStore
from graph.run import start, thread_config
from graph.state import AgentState
from graph.testing import call, plan, reply, verdict
from tests.agent import Agent
from tests.test_speculation import Probe, probe_toolset, speculator
from tools import ToolContext, Toolset

# Text that compresses about as little as a real page does (Postgres compresses large values).
PAGE = "".join(random.Random(7).choices(string.ascii_letters + string.digits + " \n", k=16_000))


def _pages() -> Toolset:
    toolset = Toolset()

    @toolset.tool(risk="read_only", timeout=5)
    async def read_page(ctx: ToolContext, name: str) -> str:
        """Read a page of the handbook."""
        return PAGE if name == "long" else f"page {name}: short"

    return toolset


def _deps(agent: Agent, outputs: OutputStore | None) -> GraphDeps:
    # A window that holds a whole page, so a later task's call still sees the earlier one.
    return replace(agent.deps(), toolset=_pages(), outputs=outputs, context_tokens=20_000)


async def _read(agent: Agent, deps: GraphDeps, name: str, *, thread: str | None = None) -> str:
    agent.model.add(plan(f"read {name}"), call("read_page", {"name": name}), reply("read it"),
                    verdict(True))
    task = await agent.new_task(f"read the {name} page")
    result = await start(agent.graph, deps, thread_id=thread or agent.conversation_id,
                         input=task_input(task_id=task, text=f"read the {name} page"))
    assert result.status == "SUCCEEDED", result
    return task


def _results(messages: list[object]) -> list[ToolMessage]:
    return [m for m in messages if isinstance(m, ToolMessage)]


async def _kept(agent: Agent, thread: str | None = None) -> list[ToolMessage]:
    """The tool results as the conversation's checkpoint holds them."""
    state = await agent.graph.aget_state(thread_config(thread or agent.conversation_id))
    return _results(state.values["messages"])


async def test_a_large_result_is_stored_once_and_the_model_sees_it_whole(agent: Agent) -> None:
    await _read(agent, _deps(agent, OutputStore(agent.db)), "long")

    # The call after the tool ran, and the verdict, saw the page whole, with no reference.
    for seen in (agent.model.calls[2], agent.model.calls[3]):
        result = _results(seen.messages)[-1]
        assert result.content == PAGE
        assert OUTPUT_KEY not in result.additional_kwargs
    # The checkpoint holds its start, its end and its digest.
    [kept] = await _kept(agent)
    assert kept.additional_kwargs[OUTPUT_KEY]["chars"] == len(PAGE)
    assert str(kept.content).startswith(PAGE[:HEAD_CHARS])
    assert str(kept.content).endswith(PAGE[-TAIL_CHARS:])
    assert len(str(kept.content)) < HEAD_CHARS + TAIL_CHARS + 100
    rows = await agent.db.fetch("SELECT digest, task_id, chars, content FROM tool_outputs")
    assert [(r["digest"], str(r["task_id"]), r["chars"], r["content"]) for r in rows] == [
        (kept.additional_kwargs[OUTPUT_KEY]["digest"], agent.task_id, len(PAGE), PAGE)]
    # The step record keeps the whole result as before.
    [ran] = [s for s in await agent.steps() if s.kind == "tool_ran"]
    assert ran.content == PAGE  # type: ignore[union-attr]


async def test_the_checkpoints_hold_the_stub_not_the_result(agent: Agent) -> None:
    await _read(agent, _deps(agent, OutputStore(agent.db)), "long")
    stored = await _checkpoint_bytes(agent.db, agent.conversation_id)

    inline = str(await agent.db.fetchval(
        "INSERT INTO conversations (user_id) VALUES ($1::uuid) RETURNING id", agent.user_id))
    await _read(agent, _deps(agent, None), "long", thread=inline)
    whole = await _checkpoint_bytes(agent.db, inline)
    assert _results(await _kept(agent, inline))[0].content == PAGE

    # The page is written once per task into the checkpoints, and once more in each full copy
    # of the messages; with the store, only its stub.
    assert whole - stored > len(PAGE) * 0.6, (whole, stored)


async def test_a_later_task_on_another_worker_reads_the_result_back(agent: Agent) -> None:
    await _read(agent, _deps(agent, OutputStore(agent.db)), "long")
    # A store with nothing in memory (another worker, or this one restarted).
    calls_before = len(agent.model.calls)
    await _read(agent, _deps(agent, OutputStore(agent.db)), "short")

    plan_call = agent.model.calls[calls_before]
    assert [m.content for m in _results(plan_call.messages)] == [PAGE]
    assert [str(m.content) for m in _results(agent.model.calls[calls_before + 2].messages)] == [
        PAGE, "page short: short"]
    # A short result stays in the checkpoint as it is; nothing more is stored.
    kept = await _kept(agent)
    assert [OUTPUT_KEY in m.additional_kwargs for m in kept] == [True, False]
    assert await agent.db.fetchval("SELECT count(*) FROM tool_outputs") == 1


async def test_a_result_no_longer_stored_leaves_the_model_its_stub(agent: Agent) -> None:
    await _read(agent, _deps(agent, OutputStore(agent.db)), "long")
    await agent.db.execute("DELETE FROM tool_outputs")
    calls_before = len(agent.model.calls)
    await _read(agent, _deps(agent, OutputStore(agent.db)), "short")

    [seen] = _results(agent.model.calls[calls_before].messages)
    assert seen.content == (await _kept(agent))[0].content
    assert "characters of this result are stored apart" in str(seen.content)


async def test_a_store_turned_off_stores_nothing_new_and_still_reads_the_stubs(
        agent: Agent) -> None:
    await _read(agent, _deps(agent, OutputStore(agent.db)), "long")
    calls_before = len(agent.model.calls)
    await _read(agent, _deps(agent, OutputStore(agent.db, inline_chars=0)), "long")

    # The model saw both pages whole: the first from its stub, the second as it came.
    assert [m.content for m in _results(agent.model.calls[calls_before + 2].messages)] == [
        PAGE, PAGE]
    first, second = await _kept(agent)
    assert OUTPUT_KEY in first.additional_kwargs
    assert second.content == PAGE and OUTPUT_KEY not in second.additional_kwargs
    assert await agent.db.fetchval("SELECT count(*) FROM tool_outputs") == 1
    with pytest.raises(ValueError, match="0 or at least 2000"):
        OutputStore(agent.db, inline_chars=1999)


async def test_speculation_reads_the_links_of_a_stored_search_result(agent: Agent) -> None:
    toolset = probe_toolset(agent, Probe())
    deep = "https://kb.example/deep-in-the-results"
    found = ToolMessage(content="results: " + "x " * 2_500 + deep + " " + "y " * 1_000,
                        tool_call_id="s1", name="search")
    [kept] = await OutputStore(agent.db).keep(await agent.new_task("search"), [found])
    state: AgentState = {"task_id": agent.task_id, "messages": [
        HumanMessage("search for it"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"query": "it"}, "id": "s1",
                                   "type": "tool_call"}]),
        kept]}
    assert deep not in str(kept.content)

    def fetches(predicted: list[tuple[str, dict[str, object], str]]) -> list[object]:
        return [arguments["url"] for name, arguments, _ in predicted if name == "fetch_url"]

    reading = speculator(agent, toolset, outputs=OutputStore(agent.db))
    assert fetches(await reading.predict(state)) == [deep]
    assert fetches(await speculator(agent, toolset).predict(state)) == []


async def test_a_fork_that_edits_a_stored_result_sees_the_edit(agent: Agent) -> None:
    await _read(agent, _deps(agent, OutputStore(agent.db)), "long")
    [kept] = await _kept(agent)
    source_task = agent.task_id
    steps = await agent.steps()
    ran = next(s.number for s in steps if s.kind == "tool_ran")
    target = str(await agent.db.fetchval(
        "INSERT INTO conversations (user_id) VALUES ($1::uuid) RETURNING id", agent.user_id))
    target_task = await agent.new_task("read the long page")
    await fork_thread(agent.graph, source_thread=agent.conversation_id, source_task=source_task,
                      from_step=ran, target_thread=target, target_task=target_task,
                      tool_results={kept.tool_call_id: "the page was empty"})

    [edited] = await _kept(agent, target)
    assert edited.content == "the page was empty"
    assert OUTPUT_KEY not in edited.additional_kwargs
    # Resolving the fork's window leaves the edit as it is.
    [resolved] = _results(await OutputStore(agent.db).resolve([edited]))
    assert resolved.content == "the page was empty"


async def test_the_digest_is_written_when_it_changes_and_kept_out_of_the_checkpoints(
        agent: Agent) -> None:
    # A window of about one page: each task's page is folded into the digest by the next.
    deps = replace(_deps(agent, OutputStore(agent.db)), context_tokens=6_000)
    for _ in range(3):
        await _read(agent, deps, "long")

    state = await agent.graph.aget_state(thread_config(agent.conversation_id))
    [digest] = state.values["summary"]
    assert "result of read_page" in digest
    assert f"Earlier in this conversation (digest):\n{digest}" in str(
        agent.model.calls[-1].messages[0].content)
    # Not copied into every checkpoint (a string would be), and written only when it changed.
    assert await agent.db.fetchval(
        "SELECT count(*) FROM checkpoints WHERE thread_id = $1 "
        "AND checkpoint -> 'channel_values' ? 'summary'", agent.conversation_id) == 0
    written = await agent.db.fetchrow(
        "SELECT count(*) AS writes, count(DISTINCT blob) AS values FROM checkpoint_writes "
        "WHERE thread_id = $1 AND channel = 'summary'", agent.conversation_id)
    assert written["writes"] >= 2 and written["writes"] == written["values"]


async def test_a_digest_saved_as_a_string_is_read(agent: Agent) -> None:
    deps = replace(agent.deps(), redis=None)
    history = [HumanMessage("what is a pear?"), AIMessage("a fruit")]
    state: AgentState = {"task_id": agent.task_id or str(uuid.uuid4()), "messages": history,
                         "summary": "- user: an older question", "summarized_upto": 0}
    window = await window_for(deps, state, "You are Cadre.")
    assert "- user: an older question" in str(window.messages[0].content)
    assert window_state(window, state) == {}  # unchanged: nothing to write
