"""The task queue: Amazon SQS through boto3, or any endpoint that speaks its API (moto locally).

boto3 is synchronous, so the async `TaskQueue` runs each call in a thread; a long poll
therefore never blocks the event loop. Sends, deletes and visibility changes go out in SQS's
batch calls (`_Batcher`): one waits only while a call of its kind is in flight, so a lone
message costs one call as before, and many at once cost one call per ten.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from app.errors import ConfigError
from app.settings import Settings
from graph.approvals import ApprovalDecision

DLQ_SUFFIX = "-dlq"
# SQS takes at most ten entries per batch call, and at most 256 KiB of message bodies in one
# SendMessageBatch.
BATCH_ENTRIES = 10
BATCH_BYTES = 256 * 1024

T = TypeVar("T")


def sqs_client(
    *,
    region: str,
    endpoint_url: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> Any:
    """A boto3 SQS client; unset credentials fall back to AWS's usual chain (env, role, profile)."""
    return boto3.session.Session().client(
        "sqs",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        # Long polls hold a connection for up to 20 s: the read timeout must exceed that.
        config=Config(connect_timeout=5, read_timeout=30, retries={"mode": "standard"}),
    )


def client_from_settings(settings: Settings) -> Any:
    return sqs_client(
        region=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url_sqs,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=(
            settings.aws_secret_access_key.get_secret_value()
            if settings.aws_secret_access_key
            else None
        ),
    )


@dataclass(frozen=True, kw_only=True)
class QueueUrls:
    url: str
    dlq_url: str


def ensure_queues(client: Any, name: str, *, max_receive_count: int) -> QueueUrls:
    """Create `name` and `name-dlq` (idempotent); after `max_receive_count` receives a
    message moves to the dead-letter queue."""
    dlq_url = client.create_queue(QueueName=name + DLQ_SUFFIX)["QueueUrl"]
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})
    url = client.create_queue(
        QueueName=name,
        Attributes={"RedrivePolicy": redrive, "VisibilityTimeout": "60"},
    )["QueueUrl"]
    return QueueUrls(url=url, dlq_url=dlq_url)


# W3C trace context headers, carried as message attributes.
TRACE_ATTRIBUTES = ("traceparent", "tracestate")


class TaskMessage(BaseModel):
    """What travels on the queue: a task id, and for a resume the human's decision. The
    task's trace context rides in the message's attributes (`traceparent`, `tracestate`),
    not in its body."""

    task_id: str
    resume: ApprovalDecision | None = None
    # The task's delivery count when this message was sent: a message older than the task's
    # newest is a stale duplicate and is dropped. None: from before deliveries were counted.
    delivery: int | None = None
    trace: dict[str, str] = Field(default_factory=dict, exclude=True)


@dataclass(frozen=True, kw_only=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    # String message attributes (the trace context).
    attributes: dict[str, str] = field(default_factory=dict)


class TaskQueue:
    """Async access to one SQS queue."""

    def __init__(self, client: Any, url: str) -> None:
        self._client = client
        self.url = url
        self._sends = _Batcher(partial(client.send_message_batch, QueueUrl=url),
                               "SendMessage", size=lambda entry: len(entry["MessageBody"]))
        self._deletes = _Batcher(partial(client.delete_message_batch, QueueUrl=url),
                                 "DeleteMessage")
        self._hides = _Batcher(partial(client.change_message_visibility_batch, QueueUrl=url),
                               "ChangeMessageVisibility")

    @classmethod
    async def connect(cls, settings: Settings) -> TaskQueue:
        """The configured queue. Building a boto3 client reads its service model from disk,
        so it happens off the event loop."""
        if not settings.sqs_queue_url:
            raise ConfigError(
                "SQS_QUEUE_URL is not set; set it (and AWS_REGION / AWS_ENDPOINT_URL_SQS), "
                "or start the local stack with `cadre up`"
            )
        client = await asyncio.to_thread(client_from_settings, settings)
        return cls(client, settings.sqs_queue_url)

    async def send(self, message: TaskMessage) -> str:
        attributes = {k: {"DataType": "String", "StringValue": v}
                      for k, v in message.trace.items() if k in TRACE_ATTRIBUTES and v}
        entry: dict[str, Any] = {"MessageBody": message.model_dump_json()}
        if attributes:
            entry["MessageAttributes"] = attributes
        return str((await self._sends.put(entry))["MessageId"])

    async def receive(self, *, wait_seconds: int, max_messages: int = 1,
                      hide_seconds: int | None = None) -> list[ReceivedMessage]:
        """Long-poll for messages; each is hidden from other receivers for `hide_seconds`
        (default: the queue's visibility timeout)."""
        hide = {} if hide_seconds is None else {"VisibilityTimeout": hide_seconds}
        response = await _in_daemon_thread(
            self._client.receive_message,
            QueueUrl=self.url,
            WaitTimeSeconds=wait_seconds,
            MaxNumberOfMessages=max_messages,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=list(TRACE_ATTRIBUTES),
            **hide,
        )
        return [
            ReceivedMessage(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m["Body"],
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                attributes={k: str(v.get("StringValue", ""))
                            for k, v in m.get("MessageAttributes", {}).items()},
            )
            for m in response.get("Messages", [])
        ]

    async def delete(self, message: ReceivedMessage) -> None:
        await self._deletes.put({"ReceiptHandle": message.receipt_handle})

    async def change_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        await self._hides.put({"ReceiptHandle": message.receipt_handle,
                               "VisibilityTimeout": seconds})

    async def attributes(self) -> dict[str, str]:
        response = await asyncio.to_thread(
            self._client.get_queue_attributes, QueueUrl=self.url, AttributeNames=["All"]
        )
        return dict(response.get("Attributes", {}))


class _Batcher:
    """One SQS batch action (SendMessageBatch, DeleteMessageBatch,
    ChangeMessageVisibilityBatch) behind a call per entry. An entry goes out at once if no
    call of this action is in flight; otherwise it waits for that call and goes in the next
    one with the others that came meanwhile (up to `BATCH_ENTRIES` and `BATCH_BYTES` a call).
    So a lone entry waits for nothing, and under load a worker ending or taking many tasks at
    once makes a call per ten instead of one each. An entry the batch refused raises the
    `ClientError` its single call would have raised (the same code and message); a failed
    call raises its error in every entry's caller. An entry whose caller was cancelled is
    still sent: a message is not lost because the request that sent it went away."""

    def __init__(self, call: Callable[..., Any], action: str, *,
                 size: Callable[[dict[str, Any]], int] = lambda entry: 0) -> None:
        self._call = call
        self._action = action
        self._size = size
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def put(self, entry: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        # A caller cancelled meanwhile no longer reads the outcome: mark it read.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._waiting.append((entry, future))
        if (self._sending is None or self._sending.done()
                or self._sending.get_loop() is not loop):
            self._sending = loop.create_task(self._send_all())
        return await asyncio.shield(future)

    def _next_batch(self) -> list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]]:
        batch: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        total = 0
        while self._waiting and len(batch) < BATCH_ENTRIES:
            size = self._size(self._waiting[0][0])
            if batch and total + size > BATCH_BYTES:
                break
            batch.append(self._waiting.pop(0))
            total += size
        return batch

    async def _send_all(self) -> None:
        while self._waiting:
            batch = self._next_batch()
            entries = [{**entry, "Id": str(n)} for n, (entry, _) in enumerate(batch)]
            try:
                response = await asyncio.to_thread(self._call, Entries=entries)
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            done = {item["Id"]: item for item in response.get("Successful", [])}
            failed = {item["Id"]: item for item in response.get("Failed", [])}
            for n, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if str(n) in done:
                    future.set_result(done[str(n)])
                else:
                    why = failed.get(str(n), {"Code": "InternalError",
                                              "Message": "the batch call left this entry out"})
                    future.set_exception(ClientError(
                        {"Error": {"Code": why.get("Code", ""), "Message": why.get("Message", "")}},
                        self._action))


async def _in_daemon_thread(fn: Callable[..., T], **kwargs: Any) -> T:
    """Run `fn` in a daemon thread. Unlike `asyncio.to_thread`, a 20-second long poll still in
    flight does not hold up the process when the worker shuts down."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def _settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def _run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn(**kwargs)
        except BaseException as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(_settle, result, error)
        except RuntimeError:
            pass  # the loop closed while we polled: nobody is waiting any more

    threading.Thread(target=_run, name="sqs-receive", daemon=True).start()
    return await future
