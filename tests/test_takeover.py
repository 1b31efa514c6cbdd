"""Fast takeover of a dead or paused worker's task, and fencing of the old run.

Real worker processes (`cadre worker`) against the test's PostgreSQL, Redis and SQS: one is
SIGKILLed, or SIGSTOPped and later resumed, while it waits on a model call; another continues
the task from its checkpoint. Takeover is checked by events and records, never by timing."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from langgraph.checkpoint.base import empty_checkpoint
from starlette.applications import Starlette
from starlette.routing import Route

from app import liveness
from app.api import create_app
from app.deps import Deps, open_deps
from app.events import EventLog, PlanData, StatusData, step_events
from app.keys import create_key
from app.lease import Lease
from app.queue import TaskMessage
from app.service import TaskService
from app.settings import Settings
from app.store import StepStore, TaskStore
from app.store.steps import task_steps
from graph import fence
from graph.builder import postgres_checkpointer
from graph.status import TaskStatus
from graph.steps import MAIN_AGENT, PlanItem, PlanMade
from graph.testing import FakeOpenAIServer, FakeResponse, completion, serving
from tests.test_crash_resume import Receiver
from tools import Ledger, ToolContext
from tools.contract import ToolOutcome

ROOT = Path(__file__).resolve().parent.parent


# -- in one process: every write of a run that lost its lease is refused -----------------------

async def _running_task(db: asyncpg.Pool) -> tuple[str, str]:
    user = await db.fetchval(
        "INSERT INTO users (email, role) VALUES ('fence@example.com', 'operator') "
        "ON CONFLICT (email) DO UPDATE SET role = EXCLUDED.role RETURNING id")
    conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
    task_id = await db.fetchval(
        "INSERT INTO tasks (user_id, conversation_id, input, status, dispatched_at) "
        "VALUES ($1, $2, 'fenced', 'QUEUED', now()) RETURNING id", user, conv)
    return str(task_id), str(conv)


async def _take_over(store: TaskStore, task_id: str, worker: str) -> int:
    """Let the current lease lapse and take the task as `worker`; returns the new epoch."""
    await store.db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second' "
                           "WHERE id = $1::uuid", task_id)
    taken = await store.take_lease(task_id, worker, 30, None)
    assert taken is not None
    return int(taken["epoch"])


async def _backend_pid(saver: Any) -> int:
    async with saver.conn.connection() as conn:
        row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
        return int(row["pid"])


async def _leased(store: TaskStore, task_id: str) -> Lease:
    """The task leased to worker a:1 (epoch 1), with a lease fresh by its own clock."""
    assert await store.take_lease(task_id, "a:1", 30, None) is not None
    lease = Lease(store=store, task_id=task_id, worker="a:1", epoch=1, seconds=30)
    lease.renewed(asyncio.get_running_loop().time() + 3600)
    return lease


def _plan(number: int) -> PlanMade:
    return PlanMade(number=number, steps=[PlanItem(number=1, description="x", status="pending")])


async def test_every_write_of_a_run_that_lost_its_lease_is_refused(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async with open_deps(settings) as deps:
        store, events = TaskStore(deps.db), EventLog(deps.redis)
        task_id, conv = await _running_task(deps.db)
        taken = await store.take_lease(task_id, "a:1", 30, None)
        assert taken is not None and taken["epoch"] == 1
        # Worker a was paused: by its own clock its lease is still fresh, so only the writes'
        # own conditions can stop it.
        old = Lease(store=store, task_id=task_id, worker="a:1", epoch=1, seconds=30)
        old.renewed(asyncio.get_running_loop().time() + 3600)
        await events.claim(task_id, 1)
        assert await StepStore(deps.db, lease=("a:1", 1)).record(task_id, _plan(1))

        new_epoch = await _take_over(store, task_id, "b:2")
        assert new_epoch == 2
        await events.claim(task_id, new_epoch)

        with pytest.raises(fence.LeaseLost):  # a step record
            await StepStore(deps.db, lease=("a:1", 1)).record(task_id, _plan(2))
        with pytest.raises(fence.LeaseLost):  # steps recorded together
            await StepStore(deps.db, lease=("a:1", 1)).record_all(task_id, [_plan(2), _plan(3)])
        ran = []

        async def effect() -> ToolOutcome:
            ran.append(1)
            return ToolOutcome(ok=True, content="done")

        ctx: ToolContext[Any] = ToolContext(task_id=task_id, tool_call_id="call-1")
        with pytest.raises(fence.LeaseLost):  # a tool call's ledger row: the call never starts
            await Ledger(deps.db, lease=("a:1", 1)).run_once(
                ctx, tool_name="effect", arguments={}, call=effect)
        assert ran == []
        with pytest.raises(fence.LeaseLost):  # an event
            await events.publish(task_id, PlanData(plan=[], step=2, agent=MAIN_AGENT), epoch=1)
        with pytest.raises(fence.LeaseLost):  # an older run cannot claim the events back
            await events.claim(task_id, 1)
        # One connection: the refused writes must leave it fit for the next statement.
        async with postgres_checkpointer(str(settings.database_url), pool_size=1) as saver:
            config: Any = {"configurable": {"thread_id": conv, "checkpoint_ns": ""}}
            before = await _backend_pid(saver)
            token = fence.CURRENT.set(old)
            try:
                with pytest.raises(fence.LeaseLost):  # a checkpoint
                    await saver.aput(config, empty_checkpoint(), {}, {})
                with pytest.raises(fence.LeaseLost):  # a node's writes
                    await saver.aput_writes({"configurable": {**config["configurable"],
                                                              "checkpoint_id": "c"}},
                                            [("messages", "x")], "node-task")
            finally:
                fence.CURRENT.reset(token)
            assert await saver.aget_tuple(config) is None
            assert not await deps.db.fetchval(
                "SELECT count(*) FROM checkpoint_writes WHERE thread_id = $1", conv)
            # The same session, back in the pool idle (not rolled back or replaced by it).
            assert await _backend_pid(saver) == before
            assert not [r for r in caplog.records if r.name.startswith("psycopg")]
        async with deps.db.acquire() as conn:  # the task's end
            assert not await store.finish(conn, task_id, TaskStatus.SUCCEEDED, output="old",
                                          error=None, usage=None, lease=("a:1", 1))
        assert await store.hold(task_id, tool_call_id="c", tool="t", arguments={}, reason="",
                                risk="side_effect", usage={}, lease=("a:1", 1)) is None
        assert await store.renew_leases("a:1", [(task_id, 1)], 30) == set()
        old.renewed(asyncio.get_running_loop().time() - 3600)  # its clock catches up
        with pytest.raises(fence.LeaseLost):
            await old.check()

        # The new owner writes every one of them.
        new = Lease(store=store, task_id=task_id, worker="b:2", epoch=2, seconds=30)
        new.renewed(asyncio.get_running_loop().time())
        assert await StepStore(deps.db, lease=("b:2", 2)).record(task_id, _plan(2))
        outcome, replayed = await Ledger(deps.db, lease=("b:2", 2)).run_once(
            ctx, tool_name="effect", arguments={}, call=effect)
        assert outcome.ok and not replayed and ran == [1]
        await events.publish(task_id, PlanData(plan=[], step=2, agent=MAIN_AGENT), epoch=2)
        async with postgres_checkpointer(str(settings.database_url)) as saver:
            token = fence.CURRENT.set(new)
            try:
                await saver.aput(config, empty_checkpoint(), {}, {})
            finally:
                fence.CURRENT.reset(token)
            assert await saver.aget_tuple(config) is not None
        async with deps.db.acquire() as conn:
            assert await store.finish(conn, task_id, TaskStatus.SUCCEEDED, output="new",
                                      error=None, usage=None, lease=("b:2", 2))
        steps = [s.number for s in (await task_steps(deps.db, [task_id]))[task_id]]
        assert steps == [1, 2]


async def test_a_checkpoint_write_waiting_on_its_lease_holds_up_no_other_read_or_write(
        settings: Settings) -> None:
    """The saver takes a connection of its pool per call, with no lock around them all: one
    write waiting for its task's row leaves the other tasks' checkpoints free (LangGraph's
    saver serialised every call of a process behind one lock)."""
    async with open_deps(settings) as deps:
        store = TaskStore(deps.db)
        task_id, conv = await _running_task(deps.db)
        lease = await _leased(store, task_id)
        other_task, other_conv = await _running_task(deps.db)
        other_lease = await _leased(store, other_task)
        other: Any = {"configurable": {"thread_id": other_conv, "checkpoint_ns": ""}}
        config: Any = {"configurable": {"thread_id": conv, "checkpoint_ns": ""}}
        async with postgres_checkpointer(str(settings.database_url), pool_size=2) as saver, \
                deps.db.acquire() as blocker:
            transaction = blocker.transaction()
            await transaction.start()
            # The blocker's session must outlast the test: on its 15 s idle timeout the server
            # would end it and free the row.
            await blocker.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            await blocker.execute("SELECT 1 FROM tasks WHERE id = $1::uuid FOR UPDATE", task_id)

            async def fenced_write(held: Lease, on: Any) -> None:
                token = fence.CURRENT.set(held)
                try:
                    await saver.aput(on, empty_checkpoint(), {}, {})
                finally:
                    fence.CURRENT.reset(token)

            write = asyncio.create_task(fenced_write(lease, config))
            async with asyncio.timeout(20):  # until the write waits on the row's lock
                while not await deps.db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%idle_in_transaction_session_timeout%'"):
                    await asyncio.sleep(0.02)
            async with asyncio.timeout(20):  # another task's write and read go on meanwhile
                await fenced_write(other_lease, other)
                assert await saver.aget_tuple(other) is not None
            assert not write.done()
            await transaction.commit()
            await asyncio.wait_for(write, 20)
            assert await saver.aget_tuple(config) is not None


async def test_a_takeover_waits_for_a_write_already_under_way(settings: Settings) -> None:
    """The write's lock on the task's row orders it before the takeover, never after."""
    async with open_deps(settings) as deps:
        store = TaskStore(deps.db)
        task_id, _ = await _running_task(deps.db)
        assert await store.take_lease(task_id, "a:1", 30, None) is not None
        await deps.db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second' "
                              "WHERE id = $1::uuid", task_id)
        async with deps.db.acquire() as writer:
            transaction = writer.transaction()
            await transaction.start()
            assert await writer.fetchval("SELECT " + fence.HELD_SQL.format(
                task="$1", worker="$2", epoch="$3"), task_id, "a:1", 1)
            takeover = asyncio.create_task(store.take_lease(task_id, "b:2", 30, None))
            async with asyncio.timeout(20):  # until the takeover waits on the writer's lock
                while not await deps.db.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%UPDATE tasks SET lease_owner%'"):
                    assert not takeover.done()
                    await asyncio.sleep(0.02)
            await writer.execute("INSERT INTO agent_logs (task_id, step_number, node) "
                                 "VALUES ($1::uuid, 1, 'plan')", task_id)
            await transaction.commit()
            taken = await asyncio.wait_for(takeover, 20)
        assert taken is not None and taken["epoch"] == 2


async def test_sweepers_running_at_once_send_each_lapsed_task_once(settings: Settings) -> None:
    async with open_deps(settings) as deps, AsyncExitStack() as stack:
        ids = []
        for _ in range(12):
            task_id, _ = await _running_task(deps.db)
            await deps.db.execute(
                "UPDATE tasks SET status = 'RUNNING', lease_owner = 'dead:1', epoch = 1, "
                "lease_expires_at = now() - interval '1 second' WHERE id = $1::uuid", task_id)
            ids.append(task_id)
        # Three workers' sweepers, each on its own connections, at the same moment.
        sweepers = []
        for _ in range(3):
            pool = await asyncpg.create_pool(str(settings.database_url), min_size=1, max_size=2)
            stack.push_async_callback(pool.close)
            sweepers.append(TaskService(db=pool, queue=deps.queue, events=EventLog(deps.redis)))
        rounds = await asyncio.gather(*(s.resend_lapsed() for s in sweepers))
        again = await asyncio.gather(*(s.resend_lapsed() for s in sweepers))
        sent = Counter(resent.task_id for batch in rounds for resent in batch)
        assert {resent.why for batch in rounds for resent in batch} == {
            "worker dead:1's lease lapsed"}
        assert sent == Counter({task_id: 1 for task_id in ids})
        assert [batch for batch in again if batch] == []
        received: Counter[str] = Counter()
        async with asyncio.timeout(30):
            while sum(received.values()) < len(ids):
                for message in await deps.queue.receive(wait_seconds=1, max_messages=10):
                    body = TaskMessage.model_validate_json(message.body)
                    assert body.delivery == 1
                    received[body.task_id] += 1
                    await deps.queue.delete(message)
        assert received == sent
        rows = await deps.db.fetch("SELECT delivery, lease_owner FROM tasks WHERE id = ANY($1::uuid[])",
                                   ids)
        assert {(r["delivery"], r["lease_owner"]) for r in rows} == {(1, None)}
        # A task no worker took before its claim ran out (its new message was lost) is
        # claimed and sent once more, under the next delivery.
        await deps.db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second' "
                              "WHERE id = $1::uuid", ids[0])
        third = await asyncio.gather(*(s.resend_lapsed() for s in sweepers))
        assert [(r.task_id, r.delivery, r.why) for batch in third for r in batch] == [
            (ids[0], 2, "no worker took it since it was last sent")]


async def test_the_tasks_of_a_worker_whose_liveness_key_is_gone_are_sent_before_their_lease_lapses(
    settings: Settings,
) -> None:
    async with open_deps(settings) as deps:
        owners = {"ghost:1": None, "alive:2": None}
        for owner in owners:
            task_id, _ = await _running_task(deps.db)
            await deps.db.execute(
                "UPDATE tasks SET status = 'RUNNING', lease_owner = $2, epoch = 1, "
                "lease_expires_at = now() + interval '10 minutes' WHERE id = $1::uuid",
                task_id, owner)
            owners[owner] = task_id
        await liveness.mark_alive(deps.redis, "alive:2", 600)
        sweeper = TaskService(db=deps.db, queue=deps.queue, events=EventLog(deps.redis))
        check = partial(liveness.gone, deps.redis, ttl_seconds=600)
        # Redis just lost its data (or is new): no key's absence counts until the live
        # workers have had time to write theirs again.
        await deps.redis.delete(liveness.STARTED_KEY, liveness.SETTLING_KEY)
        assert await sweeper.resend_lapsed(gone=check) == []
        assert 0 < await deps.redis.pttl(liveness.SETTLING_KEY) <= 600_000
        assert await sweeper.resend_lapsed(gone=check) == []
        await deps.redis.delete(liveness.SETTLING_KEY)  # settled
        sent = await sweeper.resend_lapsed(gone=check)
        assert [(r.task_id, r.delivery, r.why) for r in sent] == [
            (owners["ghost:1"], 1, "worker ghost:1's liveness key is gone")]
        assert await sweeper.resend_lapsed(gone=check) == []
        rows = {r["id"]: (r["lease_owner"], r["delivery"]) for r in await deps.db.fetch(
            "SELECT id::text, lease_owner, delivery FROM tasks WHERE id = ANY($1::uuid[])",
            list(owners.values()))}
        assert rows == {owners["ghost:1"]: (None, 1), owners["alive:2"]: ("alive:2", 0)}
        async with asyncio.timeout(30):
            while not (messages := await deps.queue.receive(wait_seconds=1)):
                pass
        assert [TaskMessage.model_validate_json(m.body).task_id for m in messages] == [
            owners["ghost:1"]]


# -- real worker processes -----------------------------------------------------------------

@dataclass
class Model:
    """Plan, call the effect, answer, confirm. The first answer is slow (3 s), so the test
    can act on the worker while it waits on the model; later ones are quick."""

    answer_asked: asyncio.Event = field(default_factory=asyncio.Event)
    answers: int = 0

    def __call__(self, body: dict[str, Any]) -> FakeResponse:
        choice = body.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else None
        if name == "submit_plan":
            return FakeResponse(body=completion(tool_calls=[
                ("submit_plan", '{"steps": ["Record the effect"]}')]))
        if name == "submit_verdict":
            return FakeResponse(body=completion(tool_calls=[
                ("submit_verdict", '{"goal_met": true, "reason": "recorded"}')]))
        if body["messages"][-1]["role"] == "tool":
            self.answers += 1
            self.answer_asked.set()
            return FakeResponse(body=completion("Recorded."),
                                delay=3.0 if self.answers == 1 else 0.05)
        return FakeResponse(body=completion(tool_calls=[
            ("record_effect", json.dumps({"label": "once"}))]))


@dataclass
class Cluster:
    deps: Deps
    http: httpx.AsyncClient
    events: EventLog
    model: Model
    receiver: Receiver
    logs: Path
    env: dict[str, str]
    workers: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)

    async def spawn(self) -> None:
        log = (self.logs / f"worker-{len(self.workers) + 1}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "worker", env=self.env, cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
        self.workers[proc.pid] = proc

    def log_text(self, pid: int | None = None) -> str:
        if pid is not None:
            index = list(self.workers).index(pid) + 1
            return (self.logs / f"worker-{index}.log").read_text(errors="replace")
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    async def submit_and_approve(self) -> str:
        """Submit the task, approve its effect, and wait until the slow answer is asked for;
        returns the task's id."""
        response = await self.http.post("/v1/tasks", json={"input": "Record the effect once."})
        assert response.status_code == 202, response.text
        task_id: str = response.json()["id"]
        async with asyncio.timeout(60):
            while not self.model.answer_asked.is_set():
                detail = (await self.http.get(f"/v1/tasks/{task_id}")).json()
                for approval in detail["approvals"]:
                    if approval["status"] == "PENDING":
                        decided = await self.http.post(
                            f"/v1/tasks/{task_id}/approvals/{approval['id']}",
                            json={"decision": "approve"})
                        assert decided.status_code == 200, decided.text
                await asyncio.sleep(0.1)
        return task_id

    async def runner(self, task_id: str) -> int:
        """The pid of the worker that now runs the task (from its last `running` event)."""
        history = await self.events.history(task_id)
        running = [e.data for e in history if isinstance(e.data, StatusData)
                   and e.data.status == TaskStatus.RUNNING]
        assert running and running[-1].worker
        pid = int(running[-1].worker.rsplit(":", 1)[1])
        assert pid in self.workers
        return pid

    async def wait_status(self, task_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                task: dict[str, Any] = (await self.http.get(f"/v1/tasks/{task_id}")).json()
                if task["status"] == status:
                    return task
                await asyncio.sleep(0.1)

    async def wait_log(self, pattern: str, pid: int | None = None, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not re.search(pattern, self.log_text(pid)):
                await asyncio.sleep(0.1)


@asynccontextmanager
async def cluster(settings: Settings, service_env: dict[str, str], tmp_path: Path,
                  workers: int, **more_env: str) -> AsyncIterator[Cluster]:
    receiver, model = Receiver(), Model()
    async with serving(Starlette(routes=[Route("/effect", receiver.effect, methods=["POST"])])) \
            as r_port, FakeOpenAIServer() as fake, open_deps(settings) as deps, \
            AsyncExitStack() as stack:
        fake.responder = model
        key = (await create_key(deps.db, email="ops@example.com", role="operator")).secret
        app = create_app(deps=deps)
        stack.push_async_callback(app.state.streams.aclose)
        a_port = await stack.enter_async_context(serving(app))
        env = {**service_env, "OPENAI_BASE_URL": fake.base_url, "CADRE_MODEL": "fake",
               "CADRE_TOOLS": "tests.plugins:toolset",
               "CADRE_TEST_RECEIVER": f"http://127.0.0.1:{r_port}",
               "CADRE_SQS_WAIT_SECONDS": "1", "CADRE_VISIBILITY_SECONDS": "10",
               "CADRE_LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT), **more_env}
        logs = tmp_path / "workers"
        logs.mkdir()
        http = await stack.enter_async_context(httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{a_port}", timeout=30,
            headers={"Authorization": f"Bearer {key}"}))
        running = Cluster(deps=deps, http=http, events=EventLog(deps.redis), model=model,
                          receiver=receiver, logs=logs, env=env)
        for _ in range(workers):
            await running.spawn()
        try:
            yield running
        finally:
            for proc in running.workers.values():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGCONT)
                    proc.send_signal(signal.SIGTERM)
            await asyncio.gather(*(p.wait() for p in running.workers.values()))


async def _check_record(c: Cluster, task_id: str, killed: int) -> None:
    """Another worker continued; the effect happened once; no event missing or repeated."""
    history = await c.events.history(task_id)
    assert len({e.id for e in history}) == len(history)
    statuses = [e.data for e in history if isinstance(e.data, StatusData)]
    assert statuses[0].status == TaskStatus.QUEUED and statuses[-1].status == TaskStatus.SUCCEEDED
    assert [s.status for s in statuses].count(TaskStatus.SUCCEEDED) == 1
    running = [s.worker for s in statuses if s.status == TaskStatus.RUNNING]
    assert (running[-2] or "").endswith(f":{killed}"), running
    assert running[-1] != running[-2], "the task went on on another worker"
    assert [e.type for e in history].count("final") == 1
    shown = Counter((n, e.type) for e in history
                    if (n := getattr(e.data, "step", None)) is not None)
    assert max(shown.values()) == 1, shown
    steps = (await task_steps(c.deps.db, [task_id]))[task_id]
    recorded = {s.number for s in steps if step_events(s)}
    assert {n for n, _ in shown} == recorded
    assert [s.number for s in steps] == list(range(1, len(steps) + 1))
    tokens = "".join(getattr(e.data, "text", "") for e in history if e.type == "token")
    assert tokens == "Recorded."  # the answer streamed once, by the new owner
    # The effect: once at the receiving end, one ledger row.
    assert c.receiver.requests == 1 and sum(c.receiver.applied.values()) == 1
    ledger = await c.deps.db.fetch("SELECT status FROM tool_calls WHERE task_id = $1::uuid",
                                   task_id)
    assert [r["status"] for r in ledger] == ["SUCCEEDED"]
    # One sweeper re-sent the task once.
    assert len(re.findall(rf"task {task_id}: .*; sent to the queue again", c.log_text())) == 1


async def test_a_killed_worker_s_task_goes_on_elsewhere_once_and_completely(
    settings: Settings, service_env: dict[str, str], tmp_path: Path
) -> None:
    async with cluster(settings, service_env, tmp_path, workers=3) as c:
        task_id = await c.submit_and_approve()
        victim = await c.runner(task_id)
        c.workers[victim].send_signal(signal.SIGKILL)  # mid model call
        await c.workers[victim].wait()
        done = await c.wait_status(task_id, "SUCCEEDED")
        assert done["final_output"] == "Recorded."
        await _check_record(c, task_id, victim)
        assert c.model.answers == 2
        # The dead worker's message comes back after its visibility timeout and is dropped.
        shown = [e.id for e in await c.events.history(task_id)]
        await c.wait_log(rf"task {task_id}: message \S+ \(delivery \d+\) came for a task that "
                         rf"is SUCCEEDED; dropped|task {task_id}: message \S+ is stale")
        assert [e.id for e in await c.events.history(task_id)] == shown


async def test_a_dead_worker_s_task_is_taken_over_by_its_liveness_key_before_the_lease_lapses(
    settings: Settings, service_env: dict[str, str], tmp_path: Path
) -> None:
    async with cluster(settings, service_env, tmp_path, workers=2,
                       CADRE_LEASE_SECONDS="120") as c:
        task_id = await c.submit_and_approve()
        victim = await c.runner(task_id)
        lease_ends = await c.deps.db.fetchval(
            "SELECT lease_expires_at FROM tasks WHERE id = $1::uuid", task_id)
        c.workers[victim].send_signal(signal.SIGKILL)  # its key expires after three beats
        await c.workers[victim].wait()
        await c.wait_status(task_id, "SUCCEEDED", timeout=110)
        assert await c.deps.db.fetchval("SELECT now() < $1", lease_ends), \
            "taken over only when the lease lapsed"
        await _check_record(c, task_id, victim)
        assert re.search(rf"task {task_id}: worker \S+:{victim}'s liveness key is gone; sent to "
                         rf"the queue again \(delivery 1\)", c.log_text())


async def test_a_paused_worker_that_wakes_after_a_takeover_writes_nothing(
    settings: Settings, service_env: dict[str, str], tmp_path: Path
) -> None:
    async with cluster(settings, service_env, tmp_path, workers=2) as c:
        task_id = await c.submit_and_approve()
        paused = await c.runner(task_id)
        c.workers[paused].send_signal(signal.SIGSTOP)  # mid model call
        await c.wait_status(task_id, "SUCCEEDED")
        before = await _snapshot(c, task_id)
        c.workers[paused].send_signal(signal.SIGCONT)
        await c.wait_log(rf"task {task_id}: .*; this run stops and writes nothing more",
                         pid=paused)
        c.workers[paused].send_signal(signal.SIGTERM)  # whatever it would still write, it has
        assert await asyncio.wait_for(c.workers[paused].wait(), 60) == 0
        assert await _snapshot(c, task_id) == before
        await _check_record(c, task_id, paused)


async def _snapshot(c: Cluster, task_id: str) -> dict[str, Any]:
    """Everything a run writes for a task."""
    db = c.deps.db
    task = dict(await db.fetchrow("SELECT * FROM tasks WHERE id = $1::uuid", task_id))
    thread = str(task["conversation_id"])
    return {
        "task": task,
        "events": [(e.id, e.type) for e in await c.events.history(task_id)],
        "steps": [tuple(r) for r in await db.fetch(
            "SELECT id, step_number, kind FROM agent_logs WHERE task_id = $1::uuid ORDER BY id",
            task_id)],
        "ledger": [tuple(r) for r in await db.fetch(
            "SELECT idempotency_key, status, completed_at FROM tool_calls "
            "WHERE task_id = $1::uuid", task_id)],
        "checkpoints": await db.fetchval(
            "SELECT count(*) FROM checkpoints WHERE thread_id = $1", thread),
        "writes": await db.fetchval(
            "SELECT count(*) FROM checkpoint_writes WHERE thread_id = $1", thread),
        "approvals": [tuple(r) for r in await db.fetch(
            "SELECT id, status FROM approvals WHERE task_id = $1::uuid ORDER BY id", task_id)],
    }
