"""The queue worker. In this foundation it connects, long-polls SQS and reports what arrives;
running the agent graph on a message comes with the task service.

A received message is deliberately left on the queue (not deleted): it becomes visible again
after the visibility timeout and, after `CADRE_MAX_RECEIVE_COUNT` receives, moves to the
dead-letter queue — so nothing submitted before task execution exists is silently lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from app.deps import Deps, open_deps
from app.errors import ConfigError
from app.models import model_config
from app.queue import TaskMessage
from app.settings import Settings

log = logging.getLogger("cadre.worker")

HEARTBEAT_TTL_SECONDS = 60


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Serve the queue until `stop` is set (SIGTERM and SIGINT set it when run from the CLI)."""
    stop = stop or asyncio.Event()
    async with open_deps(settings) as deps:
        me = worker_id()
        log.info("worker %s connected: postgres, redis, queue %s", me, deps.queue.url)
        try:
            log.info("model: %s", model_config(settings).describe())
        except ConfigError as exc:
            log.warning("%s", exc)
        heartbeat = asyncio.create_task(_heartbeat(deps, me, stop))
        try:
            while not stop.is_set():
                poll = asyncio.create_task(
                    deps.queue.receive(wait_seconds=settings.sqs_wait_seconds)
                )
                stopped = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if poll not in done:
                    # The long poll runs in a thread; its message (if any) simply stays queued.
                    poll.cancel()
                    break
                for message in poll.result():
                    _report(message.body, message.message_id, message.receive_count)
        finally:
            stop.set()
            await heartbeat
            await deps.redis.delete(f"cadre:workers:{me}")
        log.info("worker %s stopped", me)


def _report(body: str, message_id: str, receive_count: int) -> None:
    try:
        task = TaskMessage.model_validate_json(body)
    except ValueError:
        log.warning("message %s is not a task message; it will reach the DLQ: %.200s",
                    message_id, body)
        return
    log.info(
        "received task %s (message %s, delivery %d); task execution is not available in this "
        "build, the message stays queued", task.task_id, message_id, receive_count,
    )


async def _heartbeat(deps: Deps, me: str, stop: asyncio.Event) -> None:
    # A key per live worker, so `cadre doctor` and `/healthz` can count workers.
    while not stop.is_set():
        await deps.redis.set(f"cadre:workers:{me}", "1", ex=HEARTBEAT_TTL_SECONDS)
        try:
            await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_TTL_SECONDS / 3)
        except TimeoutError:
            pass


def serve(settings: Settings) -> None:
    """Entry point of `cadre worker`: run until SIGTERM or Ctrl-C."""

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop=stop)

    asyncio.run(_main())
