"""Task throughput of the whole service on this machine: the real API, queue, Postgres, Redis
and N `cadre worker` processes, against a fake OpenAI-compatible model that answers after a
set latency (default 1 s, like a real model). Each task is plan -> answer -> verify (three
model calls). Prints tasks/s, time to first event (queued -> a worker's RUNNING event) and
task duration per configuration, and what that means per day; after each worker count, the
same rounds through the anchor, LangGraph's prebuilt agent in as many processes with three
model calls a task (bench/anchor.py; `--no-anchor` skips it). Asserts nothing.

    .venv/bin/python bench/throughput.py [--workers 1,2,4] [--tasks 10,100] [--latency 1.0]
                                         [--concurrency 32] [--rate 5] [--tokens 0]
                                         [--no-anchor]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.api import create_app  # noqa: E402
from app.deps import open_deps, require_database_url  # noqa: E402
from app.events import EventLog, StatusData  # noqa: E402
from app.keys import create_key  # noqa: E402
from app.queue import ensure_queues, sqs_client  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.stack.ephemeral import ephemeral_services  # noqa: E402
from app.stack.sqs import LOCAL_CREDENTIALS  # noqa: E402
from bench.anchor import Anchor, add_anchor_option, anchor_answer  # noqa: E402
from graph.status import TaskStatus  # noqa: E402
from graph.testing import FakeOpenAIServer, FakeResponse, completion, serving  # noqa: E402

# The load generator's connections to the API (and its requests in flight). With 200, its
# httpx pool took about two thirds of the benchmark process's CPU (docs/performance.md).
CLIENT_CONNECTIONS = 16


def add_tokens_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=0,
                        help="each answer about this many tokens, streamed a chunk each, as a "
                             "real model sends them (0: short answers in one chunk)")


def calls_line(latency: float, tokens: int) -> str:
    """How the fake model answers, for the first line a benchmark prints."""
    return (f"model latency {latency:g}s per call, 3 calls per task"
            + (f" of about {tokens} tokens each, streamed a chunk a token" if tokens else ""))


def _model(latency: float, tokens: int = 0) -> Any:
    """The fake model's answers: a one-step plan, "Done." and a verdict; with `tokens`, each
    about that many words long and streamed in that many pieces, as a real model sends them."""
    words = " ".join(f"word{i}" for i in range(tokens))
    steps = json.dumps({"steps": [f"Answer the question: {words}".strip()]})
    verdict = json.dumps({"goal_met": True, "reason": f"ok {words}".strip()})
    answer = f"Done. {words}".strip()
    pieces = max(1, tokens)

    def respond(body: dict[str, Any]) -> FakeResponse:
        anchored = anchor_answer(body, latency, pieces, answer)
        if anchored is not None:
            return anchored
        choice = body.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else None
        if name == "submit_plan":
            return FakeResponse(body=completion(tool_calls=[("submit_plan", steps)]),
                                delay=latency, pieces=pieces)
        if name == "submit_verdict":
            return FakeResponse(body=completion(tool_calls=[("submit_verdict", verdict)]),
                                delay=latency, pieces=pieces)
        return FakeResponse(body=completion(answer), delay=latency, pieces=pieces)
    return respond


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def submit_and_wait(http: httpx.AsyncClient, deps: Any, count: int,
                          label: str = "task", rate: float | None = None,
                          ) -> tuple[dict[str, float], float, float]:
    """Submit `count` tasks ("{label} 0", "{label} 1", ...) at once, or `rate` a second
    evenly spaced, and wait until every one has ended; returns the submit time of each task
    id, and when the round began and ended."""
    submitted: dict[str, float] = {}
    # As many requests in flight as the client has connections: more only queue inside
    # httpx, whose pool scans all its connections for every request and response.
    connections = asyncio.Semaphore(CLIENT_CONNECTIONS)

    async def submit(n: int) -> None:
        if rate:
            await asyncio.sleep(max(0.0, began + n / rate - time.time()))
        async with connections:
            sent = time.time()
            response = await http.post("/v1/tasks", json={"input": f"{label} {n}"})
        response.raise_for_status()
        submitted[response.json()["id"]] = sent

    began = time.time()
    await asyncio.gather(*(submit(n) for n in range(count)))
    while True:
        done = await deps.db.fetchval(
            "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) AND status IN "
            "('SUCCEEDED', 'FAILED', 'CANCELLED')", list(submitted))
        if done == count:
            break
        await asyncio.sleep(0.25)
    return submitted, began, time.time()


async def summarise(deps: Any, submitted: dict[str, float], began: float,
                    ended: float) -> dict[str, float]:
    """tasks/s, time to first event and task duration of a round `submit_and_wait` ran."""
    count = len(submitted)
    rows = await deps.db.fetch("SELECT id, status, started_at, finished_at FROM tasks "
                               "WHERE id = ANY($1::uuid[])", list(submitted))
    failed = sum(1 for r in rows if r["status"] != "SUCCEEDED")
    events = EventLog(deps.redis)
    first_event, duration = [], []
    for row in rows:
        task_id = str(row["id"])
        history = await events.history(task_id)
        running = next(e for e in history if isinstance(e.data, StatusData)
                       and e.data.status == TaskStatus.RUNNING)
        first_event.append(int(running.id.split("-")[0]) / 1000 - submitted[task_id])
        duration.append((row["finished_at"] - row["started_at"]).total_seconds())
    return {"tasks_per_s": count / (ended - began), "ttfe_p50": _pct(first_event, 0.5),
            "ttfe_p99": _pct(first_event, 0.99), "duration_p50": statistics.median(duration),
            "failed": failed}


_ROUNDS = itertools.count(1)


async def _round(http: httpx.AsyncClient, deps: Any, count: int,
                 rate: float | None = None) -> dict[str, float]:
    # New words each round: the model-call cache (on by default) would answer a text asked
    # in an earlier round without the model, and the figures would be the cache's.
    label = f"round {next(_ROUNDS)} task"
    return await summarise(deps, *await submit_and_wait(http, deps, count, label, rate))


def worker_env(env: dict[str, str], model_url: str) -> dict[str, str]:
    return {**env, "OPENAI_BASE_URL": model_url, "CADRE_MODEL": "fake",
            "CADRE_LOG_LEVEL": "WARNING"}


async def start_workers(deps: Any, env: dict[str, str],
                        count: int) -> list[asyncio.subprocess.Process]:
    """Start `count` `cadre worker` processes and wait until each has registered."""
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "worker", env=env, cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL) for _ in range(count)]
    while len([k async for k in deps.redis.scan_iter("cadre:workers:*")]) < count:
        await asyncio.sleep(0.2)
    return procs


async def stop_workers(deps: Any, procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*(p.wait() for p in procs))
    while [k async for k in deps.redis.scan_iter("cadre:workers:*")]:
        await asyncio.sleep(0.2)


@asynccontextmanager
async def api_client(deps: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The real API served in this process, and an HTTP client for it with an analyst's key."""
    key = (await create_key(deps.db, email="bench@example.com", role="analyst")).secret
    async with serving(create_app(deps=deps)) as port, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=120,
            headers={"Authorization": f"Bearer {key}"},
            limits=httpx.Limits(max_connections=CLIENT_CONNECTIONS)) as http:
        yield http


async def _bench(settings: Settings, env: dict[str, str], workers_list: list[int],
                 tasks_list: list[int], latency: float, rate: float | None,
                 tokens: int = 0, anchor: bool = True) -> None:
    async with FakeOpenAIServer() as model, open_deps(settings) as deps, api_client(deps) as http:
        model.responder = _model(latency, tokens)
        arrivals = f"{rate:g} submitted a second" if rate else "each round submitted at once"
        print(f"{calls_line(latency, tokens)}, {env['CADRE_WORKER_CONCURRENCY']} tasks at once "
              f"per worker, {arrivals}")
        print(f"{'workers':>7} {'tasks':>6} {'tasks/s':>8} {'TTFE p50':>9} {'TTFE p99':>9} "
              f"{'task p50':>9} {'per day':>10} {'failed':>6}")
        for n_workers in workers_list:
            procs = await start_workers(deps, worker_env(env, model.base_url), n_workers)
            await _round(http, deps, 10)  # warm-up, not shown: first imports, pools, plans
            for count in tasks_list:
                r = await _round(http, deps, count, rate)
                print(f"{n_workers:>7} {count:>6} {r['tasks_per_s']:>8.2f} "
                      f"{r['ttfe_p50']:>8.2f}s {r['ttfe_p99']:>8.2f}s {r['duration_p50']:>8.2f}s "
                      f"{r['tasks_per_s'] * 86400:>10,.0f} {int(r['failed']):>6}")
            await stop_workers(deps, procs)
            if anchor and not rate:
                for count in tasks_list:
                    a = await _anchor_round(settings, model.base_url, n_workers, count,
                                            int(env["CADRE_WORKER_CONCURRENCY"]))
                    if isinstance(a, str):
                        print(f"{n_workers:>7} {count:>6}  the anchor failed: {a}")
                        continue
                    print(f"{n_workers:>7} {count:>6} {a['tasks_per_s']:>8.2f} {'-':>9} "
                          f"{'-':>9} {a['duration_p50']:>8.2f}s {a['tasks_per_s'] * 86400:>10,.0f} "
                          f"{'-':>6}  anchor: create_react_agent, {n_workers} "
                          f"process{'es' if n_workers > 1 else ''}")
    print("target: 10,000 tasks/day (0.12 tasks/s)")
    if anchor and rate:
        print("(no anchor rows: the anchor submits each round at once, not at a rate)")


async def _anchor_round(settings: Settings, model_url: str, processes: int, count: int,
                        concurrency: int) -> dict[str, float] | str:
    """The same count of three-call tasks through LangGraph's prebuilt agent (bench/anchor.py)
    in as many processes as there were workers, each as many tasks at once; or why it failed."""
    try:
        async with Anchor.running(require_database_url(settings), model_url, processes, count,
                                  concurrency, f"round {next(_ROUNDS)} anchor") as anchor:
            return await anchor.run()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@contextmanager
def bench_stack(tmp: Path, concurrency: int) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Postgres, Redis and the SQS endpoint (no embedding model) under `tmp`, migrated, with a
    queue; yields the API's settings and the environment for `cadre worker` processes."""
    with ephemeral_services(tmp) as running:
        root, pg = tmp, running.postgres
        assert running.sqs_endpoint is not None
        client = sqs_client(region="us-east-1", endpoint_url=running.sqs_endpoint,
                            access_key_id="cadre-local", secret_access_key="cadre-local")
        queue = ensure_queues(client, "bench", max_receive_count=5)
        migrate.upgrade(pg.url)
        env = {**os.environ, "DATABASE_URL": pg.url, "REDIS_URL": running.redis_url,
               "SQS_QUEUE_URL": queue.url, "AWS_ENDPOINT_URL_SQS": running.sqs_endpoint,
               "AWS_REGION": "us-east-1", **LOCAL_CREDENTIALS,
               "CADRE_WORKER_CONCURRENCY": str(concurrency),
               "CADRE_SQS_WAIT_SECONDS": "1", "CADRE_HOME": str(root / ".cadre")}
        settings = Settings.of(database_url=pg.url, redis_url=running.redis_url,
                               sqs_queue_url=queue.url, aws_endpoint_url_sqs=running.sqs_endpoint,
                               aws_access_key_id="cadre-local",
                               aws_secret_access_key="cadre-local", db_pool_size=20,
                               # One user submits every round at once; measure, don't limit.
                               rate_limit="1000000/minute", max_concurrent_tasks=1_000_000)
        yield settings, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--tasks", default="10,100")
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int,
                        default=Settings.model_fields["worker_concurrency"].default,
                        help="tasks at once per worker (default: CADRE_WORKER_CONCURRENCY's)")
    parser.add_argument("--rate", type=float, default=None,
                        help="submit this many tasks a second, evenly spaced, instead of each "
                             "round at once (a load below saturation)")
    add_tokens_option(parser)
    add_anchor_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp, \
            bench_stack(Path(tmp), args.concurrency) as (settings, env):
        asyncio.run(_bench(settings, env, [int(w) for w in args.workers.split(",")],
                           [int(t) for t in args.tasks.split(",")], args.latency, args.rate,
                           args.tokens, args.anchor))

if __name__ == "__main__":
    main()
