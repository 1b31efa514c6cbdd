"""Checkpoint writes from many tasks at once in one process, as a worker makes them: C writers
(tasks), each writing S steps of a checkpoint (`aput`, a ~2 KB message list as a blob) and a
node's writes (`aput_writes`), on one saver over a psycopg pool of P connections. Three
savers, each opened once, interleaved round by round (each first in turn) against the same
Postgres:

- LangGraph's `AsyncPostgresSaver` on the pool (the anchor, unfenced);
- Cadre's `FencedPostgresSaver` unfenced (`cadre run`, tests);
- Cadre's saver under a lease per task (a worker): every write locks its task's row.

Prints writes per second and the latency of one write (p50 / p99) for each. No model, no
graph: only the saver and Postgres. Asserts nothing.

    .venv/bin/python bench/checkpoint_writes.py [--writers 64] [--steps 20] [--pool 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.lease import Lease  # noqa: E402
from app.stack.ephemeral import ephemeral_services  # noqa: E402
from app.store import TaskStore  # noqa: E402
from graph import fence  # noqa: E402
from graph.builder import postgres_checkpointer  # noqa: E402

WORKER = "bench:1"
MESSAGES = [{"role": "user" if n % 2 else "assistant", "content": "x" * 200} for n in range(10)]


@asynccontextmanager
async def _langgraph_saver(url: str, pool_size: int) -> Any:
    async with AsyncConnectionPool(url, min_size=pool_size, max_size=pool_size, open=False,
                                   kwargs={"autocommit": True, "prepare_threshold": 0,
                                           "row_factory": dict_row}) as pool:
        yield AsyncPostgresSaver(pool)  # type: ignore[arg-type]


async def _tasks(db: asyncpg.Pool, count: int) -> list[tuple[str, str]]:
    """`count` running tasks leased to WORKER: (task id, its conversation = thread)."""
    user = await db.fetchval(
        "INSERT INTO users (email, role) VALUES ('bench@example.com', 'operator') "
        "ON CONFLICT (email) DO UPDATE SET role = EXCLUDED.role RETURNING id")
    store, made = TaskStore(db), []
    for _ in range(count):
        conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id",
                                 user)
        task = await db.fetchval(
            "INSERT INTO tasks (user_id, conversation_id, input, status, dispatched_at) "
            "VALUES ($1, $2, 'bench', 'QUEUED', now()) RETURNING id", user, conv)
        assert await store.take_lease(str(task), WORKER, 3600, None) is not None
        made.append((str(task), str(conv)))
    return made


async def _writer(saver: Any, thread: str, steps: int, fenced: Lease | None,
                  times: list[float]) -> None:
    token = fence.CURRENT.set(fenced) if fenced is not None else None
    try:
        config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        for step in range(steps):
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = {"messages": MESSAGES, "step": step}
            version = saver.get_next_version(None if step == 0 else str(step), None)
            checkpoint["channel_versions"] = {"messages": version, "step": version}
            began = time.perf_counter()
            config = await saver.aput(config, checkpoint, {"step": step},
                                      {"messages": version, "step": version})
            times.append(time.perf_counter() - began)
            began = time.perf_counter()
            await saver.aput_writes(config, [("messages", MESSAGES[:1]), ("step", step + 1)],
                                    f"node-{step}")
            times.append(time.perf_counter() - began)
    finally:
        if token is not None:
            fence.CURRENT.reset(token)


async def _round(saver: Any, tasks: list[tuple[str, str]], steps: int,
                 leases: list[Lease] | None) -> tuple[float, list[float]]:
    times: list[float] = []
    began = time.perf_counter()
    await asyncio.gather(*(
        _writer(saver, f"{thread}-{time.monotonic_ns()}", steps,
                leases[n] if leases else None, times)
        for n, (_, thread) in enumerate(tasks)))
    return len(times) / (time.perf_counter() - began), times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _bench(url: str, writers: int, steps: int, pool_size: int, rounds: int) -> None:
    db = await asyncpg.create_pool(url, min_size=1, max_size=4)
    tasks = await _tasks(db, writers)
    store = TaskStore(db)
    loop = asyncio.get_running_loop()
    leases = []
    for task, _ in tasks:
        lease = Lease(store=store, task_id=task, worker=WORKER, epoch=1, seconds=3600)
        lease.renewed(loop.time() + 3600)
        leases.append(lease)
    sides: list[tuple[str, Callable[[], AbstractAsyncContextManager[Any]], bool]] = [
        ("LangGraph AsyncPostgresSaver", lambda: _langgraph_saver(url, pool_size), False),
        ("Cadre saver, unfenced", lambda: postgres_checkpointer(url, pool_size=pool_size), False),
        ("Cadre saver, under a lease", lambda: postgres_checkpointer(url, pool_size=pool_size),
         True),
    ]
    rates: dict[str, list[float]] = {name: [] for name, _, _ in sides}
    latencies: dict[str, list[float]] = {name: [] for name, _, _ in sides}
    print(f"{writers} tasks at once x {steps} steps (an aput and an aput_writes each), "
          f"pool of {pool_size} connections, {rounds} rounds (+1 warm-up) interleaved")
    async with AsyncExitStack() as stack:
        # Each saver's pool is opened once: the warm-up round fills it.
        savers = [(name, await stack.enter_async_context(opened()), fenced)
                  for name, opened, fenced in sides]
        for number in range(rounds + 1):
            order = savers[number % len(savers):] + savers[:number % len(savers)]
            for name, saver, fenced in order:
                rate, times = await _round(saver, tasks, steps, leases if fenced else None)
                if number:
                    rates[name].append(rate)
                    latencies[name].extend(times)
    for name, _, _ in sides:
        ms = [t * 1000 for t in latencies[name]]
        print(f"  {name:<30} {statistics.median(rates[name]):8.0f} writes/s   "
              f"one write p50 {_pct(ms, 0.5):6.2f} ms  p99 {_pct(ms, 0.99):6.2f} ms")
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, default=64, help="tasks writing at once")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pool", type=int, default=5,
                        help="checkpoint pool size (CADRE_CHECKPOINT_POOL_SIZE's default)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp, \
            ephemeral_services(Path(tmp), sqs=False) as running:
        migrate.upgrade(running.postgres.url)
        asyncio.run(_bench(running.postgres.url, args.writers, args.steps, args.pool, args.rounds))


if __name__ == "__main__":
    main()
