"""The SQS queue: messages round-trip, and after the receive limit they land in the DLQ."""

from __future__ import annotations

import asyncio

from app.queue import QueueUrls, TaskMessage, TaskQueue, client_from_settings, ensure_queues
from app.settings import Settings


async def test_send_receive_delete(settings: Settings) -> None:
    queue = await TaskQueue.connect(settings)
    await queue.send(TaskMessage(task_id="t-1"))
    [message] = await queue.receive(wait_seconds=1)
    assert TaskMessage.model_validate_json(message.body).task_id == "t-1"
    assert message.receive_count == 1
    await queue.delete(message)
    await asyncio.sleep(0)
    assert await queue.receive(wait_seconds=0) == []


async def test_dead_letter_after_max_receives(settings: Settings, queue: QueueUrls) -> None:
    client = await asyncio.to_thread(client_from_settings, settings)
    urls = await asyncio.to_thread(ensure_queues, client, queue.url.rsplit("/", 1)[1],
                                   max_receive_count=5)
    assert urls == queue, "ensure_queues is idempotent"
    tasks = TaskQueue(client, queue.url)
    await tasks.send(TaskMessage(task_id="poison"))
    for delivery in range(1, 6):
        [message] = await tasks.receive(wait_seconds=1)
        assert message.receive_count == delivery
        await asyncio.to_thread(client.change_message_visibility, QueueUrl=queue.url,
                                ReceiptHandle=message.receipt_handle, VisibilityTimeout=0)
    assert await tasks.receive(wait_seconds=1) == []
    [dead] = await TaskQueue(client, queue.dlq_url).receive(wait_seconds=1)
    assert TaskMessage.model_validate_json(dead.body).task_id == "poison"
