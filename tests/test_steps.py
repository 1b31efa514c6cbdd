"""The typed run record: one sample of every step kind goes through every consumer — the
store (and back), the named columns, the live events, `cadre run`'s lines, the transcript and
the chat UI's history — and every event type through the stream's encoding. A kind added
without its sample here fails the first test; a consumer that misses a kind fails mypy."""

from __future__ import annotations

import json
import typing
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from app.events import EVENT_MODELS, Event, EventType, decode_event, step_events
from app.history import TaskLog
from app.runner import describe
from app.store import StepStore, columns, task_steps
from app.transcript import _entry
from app.ui.data_layer import _shown
from graph.recorder import Recorders
from graph.steps import (
    STEP_KINDS,
    AgentDelegated,
    AgentReturned,
    AnswerChecked,
    ModelCalled,
    PlanItem,
    PlanMade,
    RunStopped,
    Step,
    ToolHeld,
    ToolNotRun,
    ToolProposed,
    ToolRan,
)

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SAMPLES: list[Step] = [
    ModelCalled(number=1, purpose="plan", model="gpt-x", tokens_in=30, tokens_out=15,
                latency_ms=900, finish_reason="tool_calls", tool_calls=1, at=AT),
    PlanMade(number=2, steps=[PlanItem(number=1, description="Look it up", status="in_progress")],
             at=AT),
    ModelCalled(number=3, purpose="act", model="gpt-x", tokens_in=40, tokens_out=9,
                latency_ms=700, text="Let me look.", tool_calls=1, at=AT),
    ToolProposed(number=4, call_id="c1", tool="search", arguments={"query": "q"}, at=AT),
    ToolHeld(number=5, call_id="c2", tool="send_email", arguments={"to": ["a@b.c"]},
             risk="side_effect", reason="side effects need approval", rule="default", at=AT),
    ToolNotRun(number=6, call_id="c2", tool="send_email", arguments={"to": ["a@b.c"]},
               why="rejected", message="a person rejected this call", at=AT),
    ToolRan(number=7, call_id="c1", tool="search", arguments={"query": "q"}, ok=True,
            content="hits", untrusted=True, flags=["override-instructions"], latency_ms=12, at=AT),
    AnswerChecked(number=8, met=False, reason="no figure", answer="It depends.", at=AT),
    RunStopped(number=9, stop="iteration_limit", message="stopped after 15 iterations", at=AT),
    AgentDelegated(number=10, agent="manager", to="manager/researcher#1", profile="researcher",
                   plan_step=1, task="Find the price", token_share=500, max_iterations=4, at=AT),
    AgentReturned(number=11, agent="manager", to="manager/researcher#1", plan_step=1, ok=True,
                  result="1.25 EUR", tokens_in=40, tokens_out=20, model_calls=2,
                  untrusted=["search output"], at=AT),
]


def test_every_step_kind_has_a_sample() -> None:
    union = typing.get_args(typing.get_args(Step)[0])
    assert set(union) == set(STEP_KINDS)
    assert {type(s) for s in SAMPLES} == set(STEP_KINDS)


async def _task(db: asyncpg.Pool, email: str) -> str:
    """A task of a new user's new conversation."""
    user = await db.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)
    conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
    return str(await db.fetchval("INSERT INTO tasks (user_id, conversation_id, input) "
                                 "VALUES ($1, $2, 'x') RETURNING id", user, conv))


async def test_steps_survive_the_store_and_fill_the_named_columns(database_url: str) -> None:
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        task = await _task(db, "s@example.com")
        store = StepStore(db)
        assert [await store.record(task, s) for s in SAMPLES] == [True] * len(SAMPLES)
        again = await store.record(task, SAMPLES[3].model_copy(update={"tool": "other"}))
        assert again is False, "a step number is recorded once"
        assert (await task_steps(db, [task]))[task] == SAMPLES
        rows = await db.fetch("SELECT node, kind, thought, tool_name, tokens_in FROM agent_logs "
                              "WHERE task_id = $1::uuid ORDER BY step_number", task)
        assert [r["node"] for r in rows] == ["plan", "plan", "act", "act", "approve", "approve",
                                             "execute", "verify", "stop", "delegate", "collect"]
        assert rows[10]["tokens_in"] == 0, "a worker's tokens are its model calls' rows"
        assert [r["kind"] for r in rows] == [s.kind for s in SAMPLES]
        assert rows[1]["thought"] == "1. Look it up" and rows[0]["tokens_in"] == 30
        assert rows[3]["tool_name"] == "search"
    finally:
        await db.close()


async def test_steps_recorded_together_are_one_write_and_only_new_ones_are_passed_on(
        database_url: str) -> None:
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        task = await _task(db, "b@example.com")
        heard: list[list[int]] = []

        class Listener:
            async def record(self, task_id: str, step: Step) -> bool:
                heard.append([step.number])
                return True

            async def record_all(self, task_id: str, steps: Sequence[Step]) -> list[bool]:
                heard.append([s.number for s in steps])
                return [True] * len(steps)

        recorders = Recorders(StepStore(db), Listener())
        assert await recorders.record_all(task, SAMPLES[:3]) == [True] * 3
        # A node run again (after a crash, or a resume) records its numbers again: the
        # first three are kept as first written, and only the rest are passed on.
        again = [SAMPLES[2].model_copy(update={"text": "other"}), *SAMPLES[3:]]
        assert await recorders.record_all(task, again) == [False] + [True] * (len(again) - 1)
        assert heard == [[1, 2, 3], [s.number for s in SAMPLES[3:]]]
        assert (await task_steps(db, [task]))[task] == SAMPLES
        assert await recorders.record_all(task, SAMPLES[:2]) == [False, False]
        assert len(heard) == 2, "nothing new, nothing passed on"
    finally:
        await db.close()


async def test_rows_from_before_typed_steps_still_read(database_url: str) -> None:
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        user = await db.fetchval("INSERT INTO users (email) VALUES ('o@example.com') RETURNING id")
        conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id",
                                 user)
        task = str(await db.fetchval("INSERT INTO tasks (user_id, conversation_id, input) "
                                     "VALUES ($1, $2, 'x') RETURNING id", user, conv))
        old = [  # as the previous version wrote them: no kind, no record
            (1, "plan", "1. Look up\n2. Answer", None, None, None, 30, 15),
            (2, "act", "", "lookup_price, multiply", [{"item": "apple"}, {"a": 1, "b": 2}],
             None, 20, 10),
            (3, "execute", None, "lookup_price", {"item": "apple"},
             {"ok": True, "content": "1.25", "replayed": False}, 0, 0),
            (4, "approve", "denied by policy (default): no", "drop", {}, None, 0, 0),
            (5, "verify", "goal met: True. answered", None, None, None, 30, 5),
        ]
        for number, node, thought, tool, tool_input, output, t_in, t_out in old:
            await db.execute(
                "INSERT INTO agent_logs (task_id, step_number, node, thought, tool_name, "
                "tool_input, tool_output, tokens_in, tokens_out) "
                "VALUES ($1::uuid, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)", task, number,
                node, thought, tool, json.dumps(tool_input) if tool_input is not None else None,
                json.dumps(output) if output is not None else None, t_in, t_out)
        steps = (await task_steps(db, [task]))[task]
    finally:
        await db.close()
    assert [s.kind for s in steps] == ["plan_made", "model_called", "tool_proposed",
                                       "tool_proposed", "tool_ran", "tool_not_run",
                                       "answer_checked"]
    plan = steps[0]
    assert isinstance(plan, PlanMade) and [i.description for i in plan.steps] == ["Look up", "Answer"]
    ran = steps[4]
    assert isinstance(ran, ToolRan) and (ran.tool, ran.content, ran.ok) == ("lookup_price", "1.25", True)
    not_run = steps[5]
    assert isinstance(not_run, ToolNotRun) and not_run.why == "denied"
    checked = steps[6]
    assert isinstance(checked, AnswerChecked) and checked.met and checked.reason == "answered"


def test_every_step_kind_reaches_every_consumer() -> None:
    task = TaskLog(id=str(uuid.uuid4()), status="FAILED", input="x", final_output=None,
                   error={"type": "iteration_limit", "message": "stopped"}, created_at=AT,
                   finished_at=AT, steps=SAMPLES)
    events = {s.kind: [e.event_type for e in step_events(s)] for s in SAMPLES}
    assert events == {
        "model_called": ["model_call", "thought"], "plan_made": ["plan"],
        "tool_proposed": ["tool_call"], "tool_held": [], "tool_not_run": ["tool_result"],
        "tool_ran": ["tool_result"], "answer_checked": ["thought"], "run_stopped": [],
        "agent_delegated": ["agent"], "agent_returned": ["agent"]}
    assert [e.event_type for e in step_events(SAMPLES[0])] == ["model_call"], \
        "a planning call shows its cost, not a thought"
    lines = [describe(s) for s in SAMPLES]
    assert lines[1].startswith("plan") and "1. Look it up" in lines[1]
    assert lines[6].startswith("ran") and "search" in lines[6]
    assert lines[8].startswith("stopped") and "iteration_limit" in lines[8]
    transcript = [(_entry(s, task) or {}).get("kind") for s in SAMPLES]
    assert transcript == [None, "plan", "thought", None, None, "not_run", "tool", "check", None,
                          "delegated", "returned"]
    plans = [s for s in SAMPLES if isinstance(s, PlanMade)]
    history = [(shown[1], shown[2]) if (shown := _shown(s, task, latest_plan=plans[-1],
                                                         revised=False)) else None
               for s in SAMPLES]
    assert history == [None, ("assistant_message", "Cadre"), ("llm", "reasoning"), None, None,
                       ("tool", "send_email"), ("tool", "search"), ("llm", "check"), None,
                       ("run", "manager/researcher#1"), None]
    assert lines[9].startswith("delegate") and "manager/researcher#1" in lines[9]
    assert {columns(s).node for s in SAMPLES} == {"plan", "act", "approve", "execute", "verify",
                                                   "stop", "delegate", "collect"}


def test_every_event_type_encodes_and_decodes() -> None:
    made = [data for s in SAMPLES for data in step_events(s)]
    kinds = {d.event_type for d in made}
    assert kinds == {"model_call", "thought", "plan", "tool_call", "tool_result", "agent"}
    for data in made:
        event = Event(id="1700000000000-1", data=data)
        frame = event.sse.decode()
        assert frame.startswith(f"id: 1700000000000-1\nevent: {event.type}\ndata: {{")
        assert json.loads(event.json_text) == event.to_json()
        back = decode_event(event.id, {b"type": event.type.encode(),
                                       b"data": event.data_text.encode()})
        assert back.data == data and back.type == event.type
    assert set(EVENT_MODELS) == set(typing.get_args(EventType)), "a model per event type"
