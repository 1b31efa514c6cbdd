"""Crash test for team tasks: 3 worker processes, 6 team tasks each split into 3 worker agents
with a side effect each, and a worker process SIGKILLed while a task's worker agents run
(before their effects, and between their effects and their return to the manager). Every
task succeeds on another process, each worker agent's effect happens exactly once at the
receiving end, and each task's record has each worker agent returning once.

Half the tasks are an operator's, whose effects the policy allows (the worker agents run at
once, unheld); half an analyst's, whose effects wait for approval one by one, so crashes
also land on runs resumed after an approval."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.api import create_app
from app.deps import open_deps
from app.keys import create_key
from app.liveness import alive_key, worker_id
from app.settings import Settings
from graph.testing import FakeOpenAIServer, FakeResponse, completion, serving

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TASKS = 6  # half the operator's (no approvals), half the analyst's (each effect approved)
PARTS = 3  # worker agents per task, all independent
WORKERS = 3
MAX_KILLS = 5
# How long a worker agent's model calls take, and how far apart tasks are submitted: long
# enough that tasks with worker agents out overlap the restarts of killed workers (a worker
# takes seconds to start on a slow machine, and a kill waits for all to be up), so the test
# finds its kills however fast the machine is.
WORKER_CALL_SECONDS = 2.0
SUBMIT_EVERY_SECONDS = 3.0
PATHS = {f"manager/recorder#{k}" for k in range(1, PARTS + 1)}
_TEAM = re.compile(r"team-\d+")
_PART = re.compile(r"team-\d+/part-\d+")

PROFILES = '''version = 1

[[agents]]
name = "recorder"
description = "Records labelled effects with record_effect."
instructions = "Record the effect your sub-task names, once, with record_effect."
tools = ["record_effect"]
max_iterations = 4
'''
# The default policy, and the operator's effects allowed: the analyst's still wait.
POLICY_RULE = '''
[[rules]]
name = "crash-test-effects"
roles = ["operator"]
tool = "record_effect"
verdict = "allow"
reason = "the crash test's effects"
'''


class Receiver:
    """The receiving end, as in test_crash_resume.py (not imported: that module does not pass
    mypy): applies each idempotency key once, counts every request, and notes the labels
    sent under each key."""

    def __init__(self) -> None:
        self.requests = 0
        self.applied: Counter[str] = Counter()
        self.labels: dict[str, set[str]] = {}

    async def effect(self, request: Request) -> JSONResponse:
        self.requests += 1
        key = request.headers["idempotency-key"]
        self.labels.setdefault(key, set()).add(str((await request.json())["label"]))
        if key not in self.applied:
            self.applied[key] += 1
        return JSONResponse({"ok": True})

    def effects_of(self, task_id: str) -> int:
        return sum(1 for key in self.applied if key.split(":", 1)[0] == task_id)


class TeamModel:
    """A deterministic model for a team: the manager plans PARTS independent steps for the
    recorder; each worker agent records its step's label once, then answers; the manager
    answers from their results; the checker accepts. Anything else is noted as a surprise."""

    def __init__(self) -> None:
        self.surprises: list[str] = []
        self.calls = 0

    def __call__(self, body: dict[str, Any]) -> FakeResponse:
        self.calls += 1
        messages = body["messages"]
        choice = body.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else None
        system = " ".join(str(m.get("content") or "") for m in messages
                          if m["role"] in ("system", "developer"))
        users = [str(m.get("content") or "") for m in messages if m["role"] == "user"]
        if name == "submit_team_plan":
            team = _TEAM.search(users[-1])
            if team is None:
                return self._surprise(f"a team plan for {users[-1]!r}")
            steps = [{"task": f"Record the effect {team.group()}/part-{k}", "agent": "recorder",
                      "depends_on": []} for k in range(1, PARTS + 1)]
            return FakeResponse(body=completion(tool_calls=[
                ("submit_team_plan", json.dumps({"steps": steps}))]), delay=0.1)
        if name == "submit_verdict":
            return FakeResponse(body=completion(tool_calls=[
                ("submit_verdict", '{"goal_met": true, "reason": "all recorded"}')]), delay=0.05)
        if name is not None:
            return self._surprise(f"a call forcing {name}")
        if system.startswith("You are a worker agent of Cadre's team."):
            tools = sorted(t["function"]["name"] for t in body.get("tools") or [])
            label = _PART.search(users[0]) if users else None
            if tools != ["record_effect"] or label is None:
                return self._surprise(f"a worker call with tools {tools} for {users[:1]}")
            if messages[-1]["role"] == "tool":
                return FakeResponse(body=completion(f"Recorded {label.group()}."),
                                    delay=WORKER_CALL_SECONDS)
            # A fresh call id per answer, as a real model gives: a call asked again would be
            # another key at the receiver.
            return FakeResponse(body=completion(tool_calls=[
                ("record_effect", json.dumps({"label": label.group()}),
                 f"call_{self.calls}")]), delay=WORKER_CALL_SECONDS)
        if "Your worker agents did the steps of your plan" in system:
            return FakeResponse(body=completion("All three effects were recorded."), delay=0.3)
        return self._surprise(f"a call with system prompt {system[:80]!r}")

    def _surprise(self, what: str) -> FakeResponse:
        self.surprises.append(what)
        return FakeResponse(status=500, body={"error": {"message": f"unexpected: {what}"}})


async def test_workers_killed_while_sub_agents_run_repeat_no_effect(
    settings: Settings, service_env: dict[str, str], tmp_path: Path
) -> None:
    receiver = Receiver()
    model = TeamModel()
    profiles = tmp_path / "agents.toml"
    profiles.write_text(PROFILES)
    policy = tmp_path / "policy.toml"
    policy.write_text((ROOT / "guardrails" / "policy.toml").read_text() + POLICY_RULE)
    async with serving(Starlette(routes=[Route("/effect", receiver.effect, methods=["POST"])])) \
            as r_port, FakeOpenAIServer() as server, \
            open_deps(settings.model_copy(update={"max_concurrent_tasks": TASKS})) as deps, \
            AsyncExitStack() as stack:
        server.responder = model
        # Messages of a killed worker come back after 10 s (its heartbeat would have kept them).
        await asyncio.to_thread(deps.queue._client.set_queue_attributes, QueueUrl=deps.queue.url,
                                Attributes={"VisibilityTimeout": "10"})
        keys = {role: (await create_key(deps.db, email=f"{role}@example.com", role=role)).secret
                for role in ("operator", "analyst")}
        app = create_app(deps=deps)
        stack.push_async_callback(app.state.streams.aclose)
        a_port = await stack.enter_async_context(serving(app))
        env = {**service_env, "OPENAI_BASE_URL": server.base_url, "CADRE_MODEL": "fake",
               "CADRE_TOOLS": "tests.plugins:toolset",
               "CADRE_AGENTS_FILE": str(profiles), "CADRE_POLICY_FILE": str(policy),
               "CADRE_TEST_RECEIVER": f"http://127.0.0.1:{r_port}",
               "CADRE_LEASE_SECONDS": "10", "CADRE_SQS_WAIT_SECONDS": "1",
               # A sweeper killed between claiming a dead worker's task and sending it anew
               # leaves it unsent: sent again after 10 s (not 30).
               "CADRE_VISIBILITY_SECONDS": "10",
               "CADRE_WORKER_CONCURRENCY": "4", "PYTHONPATH": str(ROOT)}
        logs = tmp_path / "workers"
        logs.mkdir()
        spawned = 0

        async def spawn() -> asyncio.subprocess.Process:
            nonlocal spawned
            spawned += 1
            log = (logs / f"worker-{spawned}.log").open("wb")
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "worker", env=env, cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)

        async def alive(worker: asyncio.subprocess.Process) -> bool:
            """The worker is up: its liveness key is set (it has started serving)."""
            return worker.returncode is None and \
                bool(await deps.redis.exists(alive_key(worker_id(worker.pid))))

        workers = [await spawn() for _ in range(WORKERS)]
        kills: list[str] = []  # why each kill came when it did
        try:
            async with AsyncExitStack() as clients:
                http = {role: await clients.enter_async_context(httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{a_port}", timeout=30,
                    headers={"Authorization": f"Bearer {key}"})) for role, key in keys.items()}
                owner: dict[str, str] = {}
                ids: list[str] = []
                loop = asyncio.get_running_loop()
                started = loop.time()
                async with asyncio.timeout(30):  # a worker starts in a few seconds
                    while not all([await alive(w) for w in workers]):
                        await asyncio.sleep(0.2)
                next_submit = last_kill = loop.time()
                async with asyncio.timeout(150):
                    while True:
                        now = loop.time()
                        if len(ids) < TASKS and now >= next_submit:
                            role = "operator" if len(ids) % 2 == 0 else "analyst"
                            response = await http[role].post("/v1/tasks", json={
                                "input": f"Record three effects for team-{len(ids)}.",
                                "mode": "team"})
                            assert response.status_code == 202, response.text
                            ids.append(response.json()["id"])
                            owner[ids[-1]] = role
                            next_submit = now + SUBMIT_EVERY_SECONDS
                        rows = await deps.db.fetch(
                            "SELECT t.id::text AS id, t.status, t.lease_owner, "
                            "count(*) FILTER (WHERE l.kind = 'agent_delegated') AS delegated, "
                            "count(*) FILTER (WHERE l.kind = 'agent_returned') AS returned "
                            "FROM tasks t LEFT JOIN agent_logs l ON l.task_id = t.id "
                            "GROUP BY t.id")
                        for row in rows:
                            if row["status"] == "PENDING_APPROVAL":
                                client = http[owner[row["id"]]]
                                detail = (await client.get(f"/v1/tasks/{row['id']}")).json()
                                for approval in detail["approvals"]:
                                    if approval["status"] == "PENDING":
                                        await client.post(
                                            f"/v1/tasks/{row['id']}/approvals/{approval['id']}",
                                            json={"decision": "approve"})
                        ended = [r for r in rows
                                 if r["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")]
                        if len(ids) == TASKS and len(ended) == TASKS:
                            break
                        # A task whose worker agents are out: delegated, not all back yet.
                        held = {w.pid: w for w in workers if w.returncode is None}
                        # At most two kills a task: its messages stay clear of the DLQ.
                        out = [(r, held[pid]) for r in rows
                               if r["status"] == "RUNNING" and r["delegated"] > 0
                               and sum(1 for k in kills if r["id"] in k) < 2
                               and r["returned"] < PARTS and r["lease_owner"]
                               and (pid := int(r["lease_owner"].rsplit(":", 1)[1])) in held]
                        # Kills alternate between a task with some of its effects done (its
                        # worker agents still to return) and one with none yet, and go to both
                        # users' tasks. A kill waits for a task of the kind its turn wants:
                        # taking the other kind when none was at hand let a fast machine kill
                        # only before the effects (a task's window after them is one worker
                        # model call, 2 s), and the test fail one run in a few.
                        after_effects = sum(1 for k in kills if "after" in k) <= len(kills) // 2
                        chosen = sorted(
                            (c for c in out if (receiver.effects_of(c[0]["id"]) > 0) == after_effects),
                            key=lambda c: sum(1 for k in kills if f"({owner[c[0]['id']]})" in k))
                        # The last replacement is up first: at least two workers always serve.
                        if chosen and len(kills) < MAX_KILLS and now - last_kill >= 1.5 \
                                and all([await alive(w) for w in workers]):
                            row, victim = chosen[0]
                            victim.send_signal(signal.SIGKILL)
                            await victim.wait()
                            workers[workers.index(victim)] = await spawn()
                            effects = receiver.effects_of(row["id"])
                            kills.append(f"task {row['id']} ({owner[row['id']]}): "
                                         f"{'after' if effects else 'before'} effects "
                                         f"({effects} of {PARTS}), {row['returned']} returned")
                            last_kill = loop.time()
                            print(f"{last_kill - started:.1f}s: killed worker {victim.pid}: "
                                  f"{kills[-1]}")
                        await asyncio.sleep(0.1)

                final = {i: (await http[owner[i]].get(f"/v1/tasks/{i}")).json() for i in ids}
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
            await asyncio.gather(*(w.wait() for w in workers))
        ledger = await deps.db.fetch(
            "SELECT task_id::text AS task_id, idempotency_key, status FROM tool_calls "
            "WHERE tool_name = 'record_effect'")

    print(f"\n{len(kills)} workers killed:\n  " + "\n  ".join(kills)
          + f"\nreceiver got {receiver.requests} requests for {len(receiver.applied)} effects; "
          f"the model {model.calls} calls")
    assert model.surprises == []
    assert len(kills) >= 3 and any("after" in k for k in kills), kills
    assert {t["status"] for t in final.values()} == {"SUCCEEDED"}, \
        [(i, t["status"], t["error"]) for i, t in final.items() if t["status"] != "SUCCEEDED"]

    # At the receiving end: one key per worker agent of each task, each key with its own
    # label, each label under one key (an effect done twice would be a second key).
    assert len(receiver.applied) == TASKS * PARTS, sorted(receiver.applied)
    assert set(receiver.applied.values()) == {1}
    by_task = Counter(key.split(":", 1)[0] for key in receiver.applied)
    assert by_task == {i: PARTS for i in ids}, by_task
    for task_id in ids:
        paths = {key.split(":")[1] for key in receiver.applied if key.startswith(task_id)}
        assert paths == PATHS, (task_id, paths)
    labels = Counter(label for sent in receiver.labels.values() for label in sent)
    assert all(len(sent) == 1 for sent in receiver.labels.values()), receiver.labels
    number = {i: n for n, i in enumerate(ids)}
    assert labels == {f"team-{number[i]}/part-{k}": 1 for i in ids for k in range(1, PARTS + 1)}
    # The ledger agrees: one finished call per key, the receiver's keys.
    assert all(r["status"] == "SUCCEEDED" for r in ledger)
    assert sorted(r["idempotency_key"] for r in ledger) == sorted(receiver.applied)

    for task_id, task in final.items():
        steps = task["steps"]
        returned = [s for s in steps if s["kind"] == "agent_returned"]
        assert sorted(s["to"] for s in returned) == sorted(PATHS), (task_id, returned)
        assert all(s["ok"] for s in returned), returned
        ran = [s["agent"] for s in steps if s["kind"] == "tool_ran" and s["tool"] == "record_effect"]
        assert sorted(ran) == sorted(PATHS), (task_id, ran)
        if owner[task_id] == "analyst":
            approvals = task["approvals"]
            asked = [a["agent"] for a in approvals]
            assert all(a["tool_call_id"].startswith(a["agent"] + ":") for a in approvals)
            assert sorted(asked) == sorted(PATHS), (task_id, approvals)
            assert {a["status"] for a in approvals} == {"APPROVED"}, approvals
        else:
            assert task["approvals"] == [], (task_id, task["approvals"])
