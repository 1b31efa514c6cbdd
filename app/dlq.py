"""`cadre dlq`: look into the dead-letter queue and send messages back for another try."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from app.deps import connect_db
from app.errors import ConfigError
from app.queue import DLQ_SUFFIX, client_from_settings
from app.settings import Settings
from app.store import TaskStore


def _dlq_url(client: Any, settings: Settings) -> str:
    if not settings.sqs_queue_url:
        raise ConfigError("SQS_QUEUE_URL is not set; set it, or run next to `cadre up`")
    attributes = client.get_queue_attributes(QueueUrl=settings.sqs_queue_url,
                                             AttributeNames=["RedrivePolicy"])["Attributes"]
    if "RedrivePolicy" in attributes:
        arn = json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"]
        return str(client.get_queue_url(QueueName=arn.rsplit(":", 1)[1])["QueueUrl"])
    return settings.sqs_queue_url + DLQ_SUFFIX


def peek(settings: Settings, limit: int = 10) -> list[dict[str, Any]]:
    """Up to `limit` dead messages (they stay in the DLQ)."""
    client = client_from_settings(settings)
    url = _dlq_url(client, settings)
    response = client.receive_message(QueueUrl=url, MaxNumberOfMessages=min(limit, 10),
                                      VisibilityTimeout=0, WaitTimeSeconds=1,
                                      MessageSystemAttributeNames=["ApproximateReceiveCount"])
    return [{"message_id": m["MessageId"], "body": m["Body"],
             "receives": m.get("Attributes", {}).get("ApproximateReceiveCount")}
            for m in response.get("Messages", [])]


def redrive(settings: Settings) -> tuple[int, list[str]]:
    """Move every dead message back to the task queue; returns (moved, task ids)."""
    client = client_from_settings(settings)
    url = _dlq_url(client, settings)
    moved, task_ids = 0, list[str]()
    while True:
        batch = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                       VisibilityTimeout=30).get("Messages", [])
        if not batch:
            return moved, task_ids
        for message in batch:
            client.send_message(QueueUrl=settings.sqs_queue_url, MessageBody=message["Body"])
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1
            try:
                task_ids.append(str(uuid.UUID(str(json.loads(message["Body"])["task_id"]))))
            except (ValueError, KeyError, TypeError):
                pass  # not a task message: moved back as it is


async def reopen(settings: Settings, task_ids: list[str]) -> int:
    """Tasks that failed for lack of deliveries become QUEUED again, to run on redrive."""
    if not task_ids:
        return 0
    db = await connect_db(settings)
    try:
        return await TaskStore(db).reopen_undelivered(task_ids)
    finally:
        await db.close()


def redrive_and_reopen(settings: Settings) -> tuple[int, int]:
    moved, task_ids = redrive(settings)
    return moved, asyncio.run(reopen(settings, task_ids))
