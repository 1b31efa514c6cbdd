"""The queue worker: long-polls SQS and runs up to `CADRE_WORKER_CONCURRENCY` tasks at once.

On SIGTERM it stops taking messages, lets each running task finish its current step (which is
checkpointed), releases the lease and makes the message visible again, so another worker
continues the task from there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from langchain_core.language_models import BaseChatModel

from app.deps import Deps, open_deps, require_database_url
from app.errors import ConfigError
from app.events import EventLog
from app.executor import Executor
from app.models import model_config
from app.service import TaskService
from app.settings import Settings
from app.store import TaskStore
from app.telemetry import configure_tracing, graph_tracing, shutdown_tracing
from app.tooling import open_tool_deps, worker_policy, worker_screen, worker_toolset
from graph import compile_graph, make_chat_model, postgres_checkpointer
from guardrails.limits import UserQuotas
from tools import Toolset

log = logging.getLogger("cadre.worker")

HEARTBEAT_TTL_SECONDS = 60
SHUTDOWN_GRACE_SECONDS = 60


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def run_worker(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    model: BaseChatModel | None = None,
    toolset: Toolset | None = None,
) -> None:
    """Serve the queue until `stop` is set. `model` and `toolset` default to the configured ones."""
    stop = stop or asyncio.Event()
    problem = ""
    model_url: str | None = None
    if model is None:
        try:
            config = model_config(settings)
            log.info("model: %s", config.describe())
            model = await asyncio.to_thread(make_chat_model, config)
            model_url = config.base_url or "https://api.openai.com/v1"
        except ConfigError as exc:
            problem = str(exc)
            log.warning("%s -- tasks will fail until a model is configured", exc)
    if toolset is None:
        toolset = await worker_toolset(settings)
    policy = await asyncio.to_thread(worker_policy, settings, toolset)
    async with open_deps(settings) as deps, postgres_checkpointer(
        require_database_url(settings), pool_size=settings.checkpoint_pool_size
    ) as saver, open_tool_deps(settings, db=deps.db) as tool_deps:
        me = worker_id()
        events = EventLog(deps.redis)
        executor = Executor(
            deps=deps,
            service=TaskService(db=deps.db, queue=deps.queue, events=events),
            events=events, graph=compile_graph(saver), model=model, model_problem=problem,
            toolset=toolset, policy=policy, worker_id=me, tool_deps=tool_deps,
            screen=worker_screen(settings),
            quotas=UserQuotas(max_concurrent_tasks=settings.max_concurrent_tasks,
                              daily_tokens=settings.daily_token_quota,
                              counts=TaskStore(deps.db)),
            tracing=graph_tracing(settings, model_url),
        )
        log.info("worker %s ready: queue %s, %d tools, up to %d tasks at once; policy %s; "
                 "injection screening: %s", me, deps.queue.url, len(toolset),
                 settings.worker_concurrency, policy.source, executor.screen.name)
        heartbeat = asyncio.create_task(_heartbeat(deps, me, stop))
        running: set[asyncio.Task[None]] = set()
        try:
            await _serve(deps, executor, running, stop)
        finally:
            executor.stopping.set()
            if running:
                log.info("worker %s stopping: waiting for %d task(s) to reach a step boundary",
                         me, len(running))
                await asyncio.wait(running, timeout=SHUTDOWN_GRACE_SECONDS)
            stop.set()
            await heartbeat
            await deps.redis.delete(f"cadre:workers:{me}")
        log.info("worker %s stopped", me)


async def _serve(deps: Deps, executor: Executor, running: set[asyncio.Task[None]],
                 stop: asyncio.Event) -> None:
    limit = deps.settings.worker_concurrency
    stopped = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            if len(running) >= limit:
                await asyncio.wait({*running, stopped}, return_when=asyncio.FIRST_COMPLETED)
                continue
            poll = asyncio.create_task(deps.queue.receive(
                wait_seconds=deps.settings.sqs_wait_seconds,
                max_messages=min(10, limit - len(running))))
            done, _ = await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if poll not in done:
                # The long poll runs in a daemon thread; a message it may still receive stays
                # invisible for the visibility timeout, then returns to the queue.
                poll.cancel()
                break
            for message in poll.result():
                task = asyncio.create_task(executor.handle(message))
                running.add(task)
                task.add_done_callback(running.discard)
    finally:
        stopped.cancel()


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

    provider = configure_tracing("cadre-worker")
    try:
        asyncio.run(_main())
    finally:
        shutdown_tracing(provider)
