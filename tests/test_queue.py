"""The SQS queue: messages round-trip, and after the receive limit they land in the DLQ."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

from app.queue import (
    QueueUrls,
    ReceivedMessage,
    TaskMessage,
    TaskQueue,
    client_from_settings,
    ensure_queues,
)
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


def _count_calls(queue: TaskQueue) -> dict[str, int]:
    """Every call the queue's boto3 client makes, by operation name."""
    calls: dict[str, int] = {}

    def count(model: Any, **_: Any) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    queue._client.meta.events.register("before-call.sqs", count)
    return calls


async def test_messages_sent_deleted_and_hidden_together_go_ten_to_a_call(
        settings: Settings) -> None:
    queue = await TaskQueue.connect(settings)
    calls = _count_calls(queue)
    sent = await asyncio.gather(*(queue.send(TaskMessage(task_id=f"t-{n}", trace={
        "traceparent": f"00-{n:032x}-{n:016x}-01"})) for n in range(25)))
    assert len(set(sent)) == 25, "each message has its own id"
    # All 25 were waiting when the first call went: ten, ten and five.
    assert calls == {"SendMessageBatch": 3}

    received: list[ReceivedMessage] = []
    while len(received) < 25:
        received += await queue.receive(wait_seconds=1, max_messages=10, hide_seconds=2)
    assert sorted(TaskMessage.model_validate_json(m.body).task_id for m in received) == sorted(
        f"t-{n}" for n in range(25))
    assert {m.attributes["traceparent"] for m in received} == {
        f"00-{n:032x}-{n:016x}-01" for n in range(25)}, "attributes travel with each entry"

    # Hidden for longer than the receive hid them: still hidden after it would have ended.
    await asyncio.gather(*(queue.change_visibility(m, 30) for m in received))
    assert calls["ChangeMessageVisibilityBatch"] == 3
    await asyncio.sleep(2.5)
    assert await queue.receive(wait_seconds=0, max_messages=10) == []

    await asyncio.gather(*(queue.delete(m) for m in received))
    assert calls["DeleteMessageBatch"] == 3
    assert int((await queue.attributes())["ApproximateNumberOfMessagesNotVisible"]) == 0


async def test_an_entry_the_batch_refuses_fails_alone(settings: Settings) -> None:
    queue = await TaskQueue.connect(settings)
    await queue.send(TaskMessage(task_id="kept"))
    [message] = await queue.receive(wait_seconds=1)
    bogus = ReceivedMessage(message_id="m", receipt_handle="not-a-receipt-handle", body="",
                            receive_count=1)
    results = await asyncio.gather(queue.delete(message), queue.delete(bogus),
                                   return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], ClientError)
    assert results[1].response["Error"]["Code"] == "ReceiptHandleIsInvalid"
    assert int((await queue.attributes())["ApproximateNumberOfMessagesNotVisible"]) == 0


async def test_a_send_whose_caller_went_away_is_still_sent(settings: Settings) -> None:
    queue = await TaskQueue.connect(settings)
    sending = asyncio.create_task(queue.send(TaskMessage(task_id="orphan")))
    await asyncio.sleep(0)
    sending.cancel()
    [message] = await queue.receive(wait_seconds=2)
    assert TaskMessage.model_validate_json(message.body).task_id == "orphan"


async def test_an_entry_that_comes_while_a_call_is_in_flight_goes_in_the_next(
        settings: Settings) -> None:
    queue = await TaskQueue.connect(settings)
    in_flight, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def hold_the_first(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params["Entries"]))
        if len(sizes) == 1:
            in_flight.set()
            release.wait(10)

    queue._client.meta.events.register("provide-client-params.sqs.SendMessageBatch",
                                       hold_the_first)
    first = asyncio.create_task(queue.send(TaskMessage(task_id="first")))
    assert await asyncio.to_thread(in_flight.wait, 10)
    later = [asyncio.create_task(queue.send(TaskMessage(task_id=f"t-{n}"))) for n in range(3)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in later), "they wait for the call in flight"
    release.set()
    await asyncio.gather(first, *later)
    assert sizes == [1, 3]


async def test_the_embedded_endpoint_counts_messages_when_asked(
        settings: Settings, queue: QueueUrls) -> None:
    """The embedded endpoint works a queue's attributes out when they are read
    (`app/stack/sqs_server.py`): the counts are those of the moment they are asked for."""
    tasks = await TaskQueue.connect(settings)
    await asyncio.gather(*(tasks.send(TaskMessage(task_id=f"t-{n}")) for n in range(5)))
    taken = await tasks.receive(wait_seconds=1, max_messages=2, hide_seconds=30)
    attributes = await tasks.attributes()
    assert (attributes["ApproximateNumberOfMessages"],
            attributes["ApproximateNumberOfMessagesNotVisible"],
            attributes["ApproximateNumberOfMessagesDelayed"]) == ("3", str(len(taken)), "0")
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 5
    assert attributes["VisibilityTimeout"] == "60"
    await asyncio.gather(*(tasks.delete(m) for m in taken))
    assert (await tasks.attributes())["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_a_queue_s_attributes_are_the_same_and_counted_only_when_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.sqs.models import Queue

    from app.stack.sqs_server import install

    queue = Queue("q", region="us-east-1", account_id="123456789012",  # type: ignore[abstract]
                  VisibilityTimeout="60")
    before = dict(queue.attributes)
    monkeypatch.setattr(Queue, "attributes", Queue.attributes)  # restored after the test
    install()
    assert dict(queue.attributes) == before, "the same names and values"

    counted: list[str] = []

    def count(_: Queue) -> int:
        counted.append("visible")
        return 0

    monkeypatch.setattr(Queue, "approximate_number_of_messages", property(count))
    assert queue.attributes.get("MessageRetentionPeriod") == before["MessageRetentionPeriod"]
    assert "ContentBasedDeduplication" not in queue.attributes
    assert counted == [], "reading one attribute counts no messages"
    assert queue.attributes["ApproximateNumberOfMessages"] == 0
    assert counted == ["visible"]
