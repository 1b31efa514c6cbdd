"""The worker connects, long-polls, reports what it receives, and stops promptly."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from app.queue import TaskMessage, TaskQueue
from app.settings import Settings
from app.worker import run_worker


async def test_worker_receives_and_keeps_messages(settings: Settings,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cadre.worker")
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    queue = await TaskQueue.connect(settings)
    await queue.send(TaskMessage(task_id="task-42"))

    for _ in range(100):
        if "received task task-42" in caplog.text:
            break
        await asyncio.sleep(0.1)
    assert "received task task-42" in caplog.text
    client = aioredis.Redis.from_url(str(settings.redis_url))
    assert [k async for k in client.scan_iter("cadre:workers:*")], "heartbeat key while running"

    attributes = await queue.attributes()
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1", "not deleted"

    stop.set()
    await asyncio.wait_for(worker, timeout=5)
    assert "stopped" in caplog.text
    assert [k async for k in client.scan_iter("cadre:workers:*")] == []
    await client.aclose()


async def test_worker_reports_unreadable_message(settings: Settings,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cadre.worker")
    queue = await TaskQueue.connect(settings)
    await asyncio.to_thread(queue._client.send_message, QueueUrl=queue.url, MessageBody="garbage")
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    for _ in range(100):
        if "not a task message" in caplog.text:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(worker, timeout=5)
    assert "not a task message" in caplog.text
