"""Crash test: 3 worker processes, 30 tasks with a side-effect tool each, a random worker
SIGKILLed every few seconds. Every task succeeds, every effect happens exactly once at the
receiving end, and every task's event stream is complete."""

from __future__ import annotations

import asyncio
import json
import random
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
from app.events import EventLog, StatusData
from app.keys import create_key
from app.settings import Settings
from graph.status import TaskStatus
from graph.testing import FakeOpenAIServer, FakeResponse, completion, serving

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TASKS = 30
WORKERS = 3


class Receiver:
    """The receiving end: applies each idempotency key once, counts every request."""

    def __init__(self) -> None:
        self.requests = 0
        self.applied: Counter[str] = Counter()

    async def effect(self, request: Request) -> JSONResponse:
        self.requests += 1
        key = request.headers["idempotency-key"]
        if key not in self.applied:
            self.applied[key] += 1
        return JSONResponse({"ok": True})


def _agent_policy(body: dict[str, Any]) -> FakeResponse:
    """A deterministic model: plan, call the effect tool once, answer, confirm."""
    choice = body.get("tool_choice")
    name = choice["function"]["name"] if isinstance(choice, dict) else None
    if name == "submit_plan":
        return FakeResponse(body=completion(tool_calls=[
            ("submit_plan", '{"steps": ["Record the effect"]}')]), delay=0.05)
    if name == "submit_verdict":
        return FakeResponse(body=completion(tool_calls=[
            ("submit_verdict", '{"goal_met": true, "reason": "recorded"}')]), delay=0.05)
    messages = body["messages"]
    if messages[-1]["role"] == "tool":
        return FakeResponse(body=completion("Recorded."), delay=0.3)
    label = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return FakeResponse(body=completion(tool_calls=[("record_effect", json.dumps({"label": label}))]),
                        delay=0.3)


async def test_workers_killed_at_random_lose_nothing_and_repeat_nothing(
    settings: Settings, service_env: dict[str, str], tmp_path: Path
) -> None:
    receiver = Receiver()
    async with serving(Starlette(routes=[Route("/effect", receiver.effect, methods=["POST"])])) \
            as r_port, FakeOpenAIServer() as model, \
            open_deps(settings.model_copy(update={"max_concurrent_tasks": TASKS})) as deps, \
            AsyncExitStack() as stack:
        model.responder = _agent_policy
        # Messages of a killed worker come back after 10 s (its heartbeat would have kept them).
        await asyncio.to_thread(deps.queue._client.set_queue_attributes, QueueUrl=deps.queue.url,
                                Attributes={"VisibilityTimeout": "10"})
        key = (await create_key(deps.db, email="ops@example.com", role="operator")).secret
        app = create_app(deps=deps)
        stack.push_async_callback(app.state.streams.aclose)
        a_port = await stack.enter_async_context(serving(app))
        env = {**service_env, "OPENAI_BASE_URL": model.base_url, "CADRE_MODEL": "fake",
               "CADRE_TOOLS": "tests.plugins:toolset",
               "CADRE_TEST_RECEIVER": f"http://127.0.0.1:{r_port}",
               "CADRE_LEASE_SECONDS": "10", "CADRE_SQS_WAIT_SECONDS": "1",
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

        events = EventLog(deps.redis)

        async def streams_ended(ids: list[str]) -> bool:
            """A worker killed between recording a task's end and announcing it leaves the
            announcement to the message's next delivery (`_repair_end`, after the visibility
            timeout): the stream is complete only then, not when Postgres says the task ended."""
            for task_id in ids:
                if await events.terminal(task_id) is None:
                    return False
            return True

        workers = [await spawn() for _ in range(WORKERS)]
        kills = 0
        headers = {"Authorization": f"Bearer {key}"}
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a_port}", headers=headers,
                                         timeout=30) as http:
                ids = []
                for n in range(TASKS):
                    response = await http.post("/v1/tasks", json={"input": f"effect-{n}"})
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["id"])

                rng = random.Random(7)
                next_kill = asyncio.get_running_loop().time() + 1.5
                async with asyncio.timeout(300):
                    while True:
                        listing = (await http.get("/v1/tasks?limit=100")).json()["items"]
                        statuses = Counter(t["status"] for t in listing)
                        for task in listing:
                            if task["status"] == "PENDING_APPROVAL":
                                detail = (await http.get(f"/v1/tasks/{task['id']}")).json()
                                for approval in detail["approvals"]:
                                    if approval["status"] == "PENDING":
                                        await http.post(
                                            f"/v1/tasks/{task['id']}/approvals/{approval['id']}",
                                            json={"decision": "approve"})
                        if statuses["SUCCEEDED"] + statuses["FAILED"] + statuses["CANCELLED"] \
                                == TASKS and await streams_ended(ids):
                            break
                        now = asyncio.get_running_loop().time()
                        if now >= next_kill and kills < 12:
                            victim = rng.randrange(WORKERS)
                            workers[victim].send_signal(signal.SIGKILL)
                            await workers[victim].wait()
                            workers[victim] = await spawn()
                            kills += 1
                            next_kill = now + rng.uniform(1.0, 2.5)
                        await asyncio.sleep(0.2)

                final = {t["id"]: t for t in (await http.get("/v1/tasks?limit=100")).json()["items"]}
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
            await asyncio.gather(*(w.wait() for w in workers))
        histories = {task_id: await events.history(task_id) for task_id in ids}
        ledger = await deps.db.fetch(
            "SELECT task_id, count(*) AS n, min(status) AS status FROM tool_calls "
            "WHERE tool_name = 'record_effect' GROUP BY task_id")

    print(f"\n{kills} workers killed; receiver got {receiver.requests} requests for "
          f"{len(receiver.applied)} effects")
    assert kills >= 4, "the test must actually kill workers"
    assert {final[i]["status"] for i in ids} == {"SUCCEEDED"}, \
        [(i, final[i]["status"], final[i]["error"]) for i in ids if final[i]["status"] != "SUCCEEDED"]
    # Exactly once per task at the receiving end, under the task's own idempotency key.
    assert len(receiver.applied) == TASKS
    assert sorted(k.split(":")[0] for k in receiver.applied) == sorted(ids)
    assert all(r["n"] == 1 and r["status"] == "SUCCEEDED" for r in ledger) and len(ledger) == TASKS
    for task_id, history in histories.items():
        types = [e.type for e in history]
        assert types[0] == "status" and history[0].data == StatusData(status=TaskStatus.QUEUED)
        assert history[-1].data == StatusData(status=TaskStatus.SUCCEEDED) and types[-2] == "final"
        for needed in ("plan", "tool_call", "approval_required", "tool_result"):
            assert needed in types, f"{task_id} has no {needed} event: {types}"
        assert len({e.id for e in history}) == len(history)
