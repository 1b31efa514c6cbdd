"""The worker process's own behaviour: heartbeats, odd messages, leases, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import redis.asyncio as aioredis

from app.queue import TaskMessage, TaskQueue
from app.settings import Settings
from app.worker import run_worker
from graph.testing import ScriptedModel
from tests.service import Service


async def test_worker_heartbeat_and_prompt_stop(settings: Settings) -> None:
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop, model=ScriptedModel()))
    client = aioredis.Redis.from_url(str(settings.redis_url))
    try:
        for _ in range(100):
            if [k async for k in client.scan_iter("cadre:workers:*")]:
                break
            await asyncio.sleep(0.05)
        assert [k async for k in client.scan_iter("cadre:workers:*")], "heartbeat key while running"
        stop.set()
        await asyncio.wait_for(worker, timeout=10)
        assert [k async for k in client.scan_iter("cadre:workers:*")] == []
    finally:
        await client.aclose()


async def test_unreadable_and_unknown_messages(settings: Settings,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cadre.worker")
    queue = await TaskQueue.connect(settings)
    await asyncio.to_thread(queue._client.send_message, QueueUrl=queue.url, MessageBody="garbage")
    await queue.send(TaskMessage(task_id=str(uuid.uuid4())))
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop, model=ScriptedModel()))
    async with asyncio.timeout(20):
        while True:
            attributes = await queue.attributes()
            if "not a task message" in caplog.text and \
                    attributes["ApproximateNumberOfMessages"] == "0" and \
                    attributes["ApproximateNumberOfMessagesNotVisible"] == "1":
                break
            await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(worker, timeout=10)
    # The unknown task's message was deleted; the garbage one waits for redelivery, then the DLQ.


async def test_duplicate_delivery_of_a_finished_task_is_dropped(service: Service) -> None:
    from graph.testing import plan, reply, verdict

    service.model.add(plan("Answer"), reply("done"), verdict(True))
    created = await service.submit("Anything.")
    await service.wait_status(created["id"], "SUCCEEDED")
    # A duplicate delivery of a finished task is simply dropped.
    await service.deps.queue.send(TaskMessage(task_id=created["id"]))
    async with asyncio.timeout(10):
        while (await service.deps.queue.attributes())["ApproximateNumberOfMessages"] != "0" or \
                (await service.deps.queue.attributes())["ApproximateNumberOfMessagesNotVisible"] != "0":
            await asyncio.sleep(0.1)
    assert (await service.task(created["id"]))["status"] == "SUCCEEDED"


async def test_live_lease_defers_and_expired_lease_is_taken_over(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    from graph.testing import plan, reply, verdict

    caplog.set_level(logging.INFO, logger="cadre.worker")
    db = service.deps.db
    user = await db.fetchval("SELECT id FROM users WHERE email = 'ana@example.com'")
    conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
    task_id = str(await db.fetchval(
        "INSERT INTO tasks (user_id, conversation_id, input, status, dispatched_at, lease_owner, "
        "lease_expires_at) VALUES ($1, $2, 'hello', 'RUNNING', now(), 'ghost:1', "
        "now() + interval '30 seconds') RETURNING id", user, conv))
    await service.deps.queue.send(TaskMessage(task_id=task_id))
    async with asyncio.timeout(10):
        while f"task {task_id} is leased by another worker" not in caplog.text:
            await asyncio.sleep(0.1)
    assert (await service.task(task_id))["status"] == "RUNNING"

    # The other worker died: its lease runs out and the next delivery takes the task over.
    service.model.add(plan("Greet"), reply("Hello!"), verdict(True))
    await db.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second' "
                     "WHERE id = $1::uuid", task_id)
    # (The deferred delivery comes back in ~35 s; a second delivery stands in for it.)
    await service.deps.queue.send(TaskMessage(task_id=task_id))
    done = await service.wait_status(task_id, "SUCCEEDED", timeout=60)
    assert done["final_output"] == "Hello!"


async def test_orphaned_tasks_are_sent_again(service: Service) -> None:
    from app.events import EventLog
    from app.service import TaskService
    from graph.testing import plan, reply, verdict

    db = service.deps.db
    user = await db.fetchval("SELECT id FROM users WHERE email = 'ana@example.com'")
    conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
    task_id = str(await db.fetchval(
        "INSERT INTO tasks (user_id, conversation_id, input, status, dispatched_at) "
        "VALUES ($1, $2, 'lost message', 'QUEUED', now()) RETURNING id", user, conv))
    service.model.add(plan("Answer"), reply("found"), verdict(True))
    requeued = await TaskService(db=db, queue=service.deps.queue,
                                 events=EventLog(service.deps.redis)).requeue_orphans()
    assert requeued == 1
    assert (await service.wait_status(task_id, "SUCCEEDED"))["final_output"] == "found"


async def test_sigterm_finishes_the_step_releases_the_lease_and_another_worker_continues(
    settings: Settings,
) -> None:
    from app.deps import open_deps
    from app.events import EventLog
    from app.keys import create_key
    from app.service import TaskService
    from graph.testing import call, plan, reply, verdict
    from tests.agent import Outbox, make_toolset

    outbox = Outbox()
    model = ScriptedModel().add(plan("Wait"), call("wait_a_while", {"seconds": 1}))
    stop = asyncio.Event()
    async with open_deps(settings) as deps:
        await create_key(deps.db, email="w@example.com", role="analyst")
        from app.auth import Principal

        user = await deps.db.fetchrow("SELECT id, email, role FROM users")
        who = Principal(user_id=str(user["id"]), email=user["email"], role=user["role"], key_id="")
        service = TaskService(db=deps.db, queue=deps.queue, events=EventLog(deps.redis))
        first = asyncio.create_task(run_worker(settings, stop=stop, model=model,
                                               toolset=make_toolset(outbox)))
        # Not started ahead while the model streams: SIGTERM must find it in `execute`.
        task = await service.submit(who, "Wait, then answer.", speculation=False)
        await asyncio.wait_for(outbox.slow.wait(), timeout=20)
        stop.set()  # SIGTERM arrives while the tool runs
        await asyncio.wait_for(first, timeout=30)
        row = await deps.db.fetchrow("SELECT status, lease_owner FROM tasks WHERE id = $1::uuid",
                                     task["id"])
        assert (row["status"], row["lease_owner"]) == ("RUNNING", None)
        steps = [r["kind"] for r in await deps.db.fetch(
            "SELECT kind FROM agent_logs WHERE task_id = $1::uuid ORDER BY id", task["id"])]
        assert steps == ["model_called", "plan_made", "model_called", "tool_proposed",
                         "tool_ran"], "the step in flight was finished, and no stop recorded"

        model.add(reply("Waited."), verdict(True))
        stop2 = asyncio.Event()
        second = asyncio.create_task(run_worker(settings, stop=stop2, model=model,
                                                toolset=make_toolset(outbox)))
        async with asyncio.timeout(30):
            while await deps.db.fetchval("SELECT status FROM tasks WHERE id = $1::uuid",
                                         task["id"]) != "SUCCEEDED":
                await asyncio.sleep(0.1)
        stop2.set()
        await asyncio.wait_for(second, timeout=30)
        model.assert_done()


async def test_a_redelivery_repairs_what_a_worker_died_before_announcing(service: Service) -> None:
    """Killed after recording SUCCEEDED but before announcing it and sending the next task."""
    from app.events import EventLog, FinalData, StatusData
    from graph.status import TaskStatus
    from graph.testing import plan, reply, verdict

    db = service.deps.db
    user = await db.fetchval("SELECT id FROM users WHERE email = 'ana@example.com'")
    conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
    done_id = str(await db.fetchval(
        "INSERT INTO tasks (user_id, conversation_id, input, status, final_output, usage, "
        "dispatched_at, finished_at) VALUES ($1, $2, 'first', 'SUCCEEDED', 'the answer', "
        "'{\"model_calls\": 3}', now(), now()) RETURNING id", user, conv))
    next_id = str(await db.fetchval(
        "INSERT INTO tasks (user_id, conversation_id, input, status, dispatched_at) "
        "VALUES ($1, $2, 'second', 'QUEUED', now()) RETURNING id", user, conv))
    events = EventLog(service.deps.redis)
    await events.publish(done_id, StatusData(status=TaskStatus.RUNNING))

    service.model.add(plan("Answer"), reply("second answer"), verdict(True))
    await service.deps.queue.send(TaskMessage(task_id=done_id))
    assert (await service.wait_status(next_id, "SUCCEEDED"))["final_output"] == "second answer"
    history = await events.history(done_id)
    assert [e.type for e in history] == ["status", "final", "status"]
    assert history[1].data == FinalData(output="the answer", usage={"model_calls": 3})
    assert history[-1].data == StatusData(status=TaskStatus.SUCCEEDED)
