"""The queue worker: long-polls SQS and runs up to `CADRE_WORKER_CONCURRENCY` tasks at once.

On SIGTERM it stops taking messages, lets each running task finish its current step (which is
checkpointed), releases the lease and makes the message visible again, so another worker
continues the task from there.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from functools import partial

from langchain_core.language_models import BaseChatModel

from app import task_cache
from app.deps import Deps, open_deps, require_database_url
from app.errors import ConfigError
from app.events import EventLog
from app.executor import Executor
from app.liveness import forget, gone, mark_alive, worker_id
from app.models import model_config
from app.scheduler import Scheduler
from app.service import TaskService
from app.settings import Settings
from app.store import TaskStore
from app.telemetry import configure_tracing, graph_tracing, shutdown_tracing
from app.tooling import (
    open_tool_deps,
    worker_agents,
    worker_policy,
    worker_screen,
    worker_team,
    worker_toolset,
)
from app.webhooks import Deliverer
from graph import compile_graph, make_chat_model, postgres_checkpointer
from graph.llm import ModelConfig
from guardrails.limits import UserQuotas
from tools import Toolset

log = logging.getLogger("cadre.worker")

SHUTDOWN_GRACE_SECONDS = 60
# Taken by one worker per heartbeat: that one sweeps for lapsed leases.
SWEEPER_KEY = "cadre:sweeper"
# Taken by one worker per second: that one looks for webhook deliveries that are due.
WEBHOOKS_KEY = "cadre:webhooks"
SCHEDULER_KEY = "cadre:scheduler"
CACHE_SWEEP_LOCK = "cadre:cache_sweep:lock"
CACHE_SWEEP_KEY = "cadre:cache_sweep"  # set for CACHE_SWEEP_SECONDS after each sweep
CACHE_SWEEP_SECONDS = 600
# A received message is hidden this long, until the worker that took the task's lease hides
# it for CADRE_VISIBILITY_SECONDS. A message a dead worker's long poll still received (the
# server answers a poll whose client is gone) is back this soon instead.
HANDOFF_SECONDS = 5


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
    config: ModelConfig | None = None
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
    # Checked now, so a mistake stops the worker at start, naming the line.
    agents = await asyncio.to_thread(worker_agents, settings, toolset)
    team = await asyncio.to_thread(worker_team, agents, config)
    async with open_deps(settings) as deps, postgres_checkpointer(
        require_database_url(settings), pool_size=settings.checkpoint_pool_size,
        idle_transaction_seconds=settings.db_idle_transaction_seconds
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
            tracing=graph_tracing(settings, model_url), team=team,
        )
        log.info("worker %s ready: queue %s, %d tools, up to %d tasks at once; policy %s; "
                 "agent profiles %s (%d); injection screening: %s", me, deps.queue.url,
                 len(toolset), settings.worker_concurrency, policy.source, agents.source,
                 len(agents), executor.screen.name)
        # Alive before the first lease: a sweeper frees the tasks of a worker with no key.
        await mark_alive(deps.redis, me, _alive_for(settings))
        heartbeat = asyncio.create_task(_heartbeat(deps, executor, stop))
        webhooks = asyncio.create_task(_deliver_webhooks(deps, me, stop))
        schedules = asyncio.create_task(_fire_schedules(deps, executor, me, stop))
        caches = asyncio.create_task(_sweep_caches(deps, me, stop))
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
            await webhooks
            await schedules
            await caches
            await forget(deps.redis, me)
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
                max_messages=min(10, limit - len(running)),
                hide_seconds=HANDOFF_SECONDS))
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


async def _heartbeat(deps: Deps, executor: Executor, stop: asyncio.Event) -> None:
    """Every CADRE_HEARTBEAT_SECONDS: renew this worker's leases (one statement for all its
    tasks), mark it alive (the key the sweeper checks, and `cadre doctor` and `/metrics`
    count), and, if this worker is the one that sweeps this time, send every task whose
    lease lapsed or whose worker's key is gone to the queue again."""
    settings = deps.settings
    every = settings.heartbeat_seconds
    alive_for = _alive_for(settings)
    sweeper = TaskService(db=deps.db, queue=deps.queue, events=executor.events)
    while not stop.is_set():
        try:
            assert executor.leases is not None
            await executor.leases.renew()
            await mark_alive(deps.redis, executor.worker_id, alive_for)
            if await deps.redis.set(SWEEPER_KEY, executor.worker_id, nx=True,
                                    px=int(every * 1000)):
                for resent in await sweeper.resend_lapsed(
                        resend_after=settings.visibility_seconds,
                        gone=partial(gone, deps.redis, ttl_seconds=alive_for)):
                    log.warning("task %s: %s; sent to the queue again (delivery %d)",
                                resent.task_id, resent.why, resent.delivery)
        except Exception:  # a database or Redis hiccup must not stop the heartbeat
            log.exception("worker %s: heartbeat failed; retrying", executor.worker_id)
        await _pause(stop, every)


async def _deliver_webhooks(deps: Deps, me: str, stop: asyncio.Event) -> None:
    """Every second, one worker sends the webhook deliveries that are due
    (`app/webhooks.py`): one query a second across all workers. A worker still sending a
    slow batch does not stop the next one from claiming others."""
    settings = deps.settings
    deliverer = Deliverer(deps.db, allow_private=settings.webhook_allow_private,
                          timeout=settings.webhook_timeout,
                          max_attempts=settings.webhook_max_attempts)

    async def deliver() -> None:
        while await deliverer.deliver_due() and not stop.is_set():
            pass  # some were due: look again at once

    await _each_second_by_one(deps, WEBHOOKS_KEY, me, stop, deliver, "webhook deliveries")


async def _fire_schedules(deps: Deps, executor: Executor, me: str, stop: asyncio.Event) -> None:
    """Every second, one worker fires the schedules that are due (`app/scheduler.py`); the
    claim in Postgres is what makes each occurrence fire once, the lock only spares the
    others the query."""
    scheduler = Scheduler(db=deps.db, service=TaskService.of(deps, executor.events))

    async def fire() -> None:
        await scheduler.tick()

    await _each_second_by_one(deps, SCHEDULER_KEY, me, stop, fire, "firing schedules")


async def _sweep_caches(deps: Deps, me: str, stop: asyncio.Event) -> None:
    """Every ten minutes, one worker deletes the caches' expired entries."""
    settings = deps.settings

    async def swept() -> None:
        if await deps.redis.set(CACHE_SWEEP_KEY, me, nx=True, ex=CACHE_SWEEP_SECONDS):
            gone = await task_cache.sweep(
                deps.db, model_cache_ttl=settings.model_cache_ttl_seconds,
                task_cache_ttl=max(settings.cache_ttl_seconds, settings.cache_live_ttl_seconds))
            if gone:
                log.info("deleted %d expired cache entries", gone)

    await _each_second_by_one(deps, CACHE_SWEEP_LOCK, me, stop, swept, "sweeping the caches")


async def _each_second_by_one(deps: Deps, key: str, me: str, stop: asyncio.Event,
                              work: Callable[[], Awaitable[None]], what: str) -> None:
    """Run `work` once a second in whichever worker takes `key` first (`SET NX PX` 1 s),
    until `stop`. A database or Redis hiccup is logged and the loop goes on."""
    while not stop.is_set():
        try:
            if await deps.redis.set(key, me, nx=True, px=1000):
                await work()
        except Exception:
            log.exception("%s failed; retrying", what)
        await _pause(stop, 1.0)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less if `stop` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


def _alive_for(settings: Settings) -> float:
    """The liveness key's time to live: three beats. Shorter than the lease by default, so
    a dead worker's key is gone before its leases lapse."""
    return 3 * settings.heartbeat_seconds


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
