"""Live event streams (Server-Sent Events) served by ONE `cadre api` process, on the embedded
services. Tasks are rows inserted straight into Postgres (status RUNNING); this process plays
the worker and publishes their events with `EventLog.publish`, so no worker or model runs.

For each N followers, two layouts: every follower on one task, and followers spread over
tasks (`--per-task` each). Each task first gets a `status` RUNNING event (the "ready" event:
a follower that has it is registered with the hub); when every follower has it, `--events`
`token` events are published per task, one every 20 ms (`--pace-ms`), the time each was sent
kept by its event id, then the terminal `status` SUCCEEDED. Per layout it prints:
connections that failed (not 200, e.g. a 503) or were dropped before the terminal event, how
many followers got exactly the task's `EventLog.history` (every event once, in order),
publish-to-receipt latency and events received per second, `GET /v1/tasks/{id}` latency with
no stream open and while the N streams receive (sampled by a separate process, so this
process's own load does not count), Redis `connected_clients` (all of them, and those the
API process holds), the API's RSS and CPU, and this process's CPU and event-loop lag (how
late the receiving side itself was: it shares the machine with the API).

Then, in the same run, the design the hub replaced: one blocking `XREAD` per follower on its
own Redis connection (redis-py asyncio, default pool of 100 connections, no HTTP); followers
past the pool fail with MaxConnectionsError and are counted.

The followers are raw asyncio sockets (HTTP/1.1, chunked SSE parsed by hand) by default.
Measured with 1,000 followers on 2 cores, httpx (`--client httpx`, one AsyncClient with
unlimited connections) took 44% of a core where the raw client takes 12-18%, and its event
loop lagged 120-150 ms (raw: under 15 ms): time counted as the API's latency, taken from the
API's share of the machine.

    .venv/bin/python bench/streams.py [--followers 100,500,1000,2000] [--events 50]
                                      [--per-task 10] [--pace-ms 20] [--quick]
                                      [--client raw|httpx]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import redis.asyncio as aioredis
from redis.exceptions import MaxConnectionsError, RedisError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.deps import Deps, open_deps  # noqa: E402
from app.events import EventLog, StatusData, TokenData, decode_event, stream_key  # noqa: E402
from app.keys import create_key  # noqa: E402
from app.queue import ensure_queues, sqs_client  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.stack.ephemeral import ephemeral_services  # noqa: E402
from app.stack.ports import free_port  # noqa: E402
from app.stack.sqs import LOCAL_CREDENTIALS  # noqa: E402
from graph.status import TERMINAL, TaskStatus  # noqa: E402

# GET /v1/tasks/{id} is timed once every SAMPLE_INTERVAL unless SAMPLE_IN_FLIGHT requests
# still wait for their answer; with no stream open, for IDLE_SECONDS.
SAMPLE_INTERVAL = 0.02
SAMPLE_IN_FLIGHT = 4
IDLE_SECONDS = 1.0
READY_TIMEOUT = 180.0
DRAIN_TIMEOUT = 60.0  # after the terminal event, for every follower to have it
GOAL = ("goal: 1,000 followers of one task on one API process, none dropped, p99 under 250 ms, "
        "other endpoints unaffected")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(eq=False)
class _Follower:
    task_id: str
    ids: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    status: int | None = None  # the HTTP status; None when there was no answer
    error: str | None = None
    finished: bool = False  # got the terminal event
    arrived: bool = False

    def take(self, event_id: str, kind: str, data: str, now: float) -> None:
        self.ids.append(event_id)
        self.times.append(now)
        if kind == "status" and json.loads(data).get("status") in TERMINAL:
            self.finished = True


class _Gate:
    """Opens when every follower has its first event or has given up."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.open = asyncio.Event()

    def arrive(self, follower: _Follower) -> None:
        if not follower.arrived:
            follower.arrived = True
            self.count += 1
            if self.count >= self.total:
                self.open.set()


def _sse_block(follower: _Follower, gate: _Gate, block: str, now: float) -> None:
    event_id, kind, data = None, "", ""
    for line in block.split("\n"):
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
    if event_id is None:  # `retry:` or a keep-alive comment
        return
    follower.take(event_id, kind, data, now)
    gate.arrive(follower)


async def _follow_raw(port: int, key: str, follower: _Follower, gate: _Gate) -> None:
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /v1/tasks/{follower.task_id}/stream HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
                     f"Accept: text/event-stream\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        follower.status = int(head[0].split()[1])
        if follower.status != 200:
            return
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        if headers.get("transfer-encoding") != "chunked":
            follower.error = f"unexpected framing: {headers}"
            return
        pending = ""
        while not follower.finished:
            size_line = await reader.readline()
            if not size_line:
                follower.error = "connection closed"
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return  # the server ended the response
            pending += (await reader.readexactly(size + 2))[:-2].decode()
            now = time.time()
            while (end := pending.find("\n\n")) >= 0:
                _sse_block(follower, gate, pending[:end], now)
                pending = pending[end + 2:]
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        follower.error = f"{type(exc).__name__}: {exc}"
    finally:
        gate.arrive(follower)
        if writer is not None:
            writer.close()


async def _follow_httpx(http: httpx.AsyncClient, key: str, follower: _Follower,
                        gate: _Gate) -> None:
    try:
        async with http.stream("GET", f"/v1/tasks/{follower.task_id}/stream",
                               headers={"Authorization": f"Bearer {key}"}) as response:
            follower.status = response.status_code
            if response.status_code != 200:
                return
            lines: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    lines.append(line)
                    continue
                _sse_block(follower, gate, "\n".join(lines), time.time())
                lines.clear()
                if follower.finished:
                    return
    except httpx.HTTPError as exc:
        follower.error = f"{type(exc).__name__}: {exc}"
    finally:
        gate.arrive(follower)


def _sampler_main(pipe: Connection, base: str, key: str) -> None:
    asyncio.run(_sample_on_request(pipe, base, key))


async def _timed_get(http: httpx.AsyncClient, task_id: str, out: list[tuple[float, int]]) -> None:
    began = time.perf_counter()
    try:
        status = (await http.get(f"/v1/tasks/{task_id}")).status_code
    except httpx.HTTPError:
        status = 0
    out.append(((time.perf_counter() - began) * 1000, status))


async def _sample_on_request(pipe: Connection, base: str, key: str) -> None:
    """A separate process timing `GET /v1/tasks/{id}` between a task id and a stop ("") sent
    down the pipe: taken in the benchmark's own event loop, a sample would include the time
    that loop spends reading streams. A request starts every SAMPLE_INTERVAL, not after the
    previous answer, so a slow API yields slow samples all along rather than few samples."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[str | None] = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: inbox.put_nowait(pipe.recv()))
    async with httpx.AsyncClient(base_url=base, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        while task_id := await inbox.get():
            out: list[tuple[float, int]] = []
            in_flight: set[asyncio.Task[None]] = set()
            stop = asyncio.ensure_future(inbox.get())
            while not stop.done():
                if len(in_flight) < SAMPLE_IN_FLIGHT:
                    request = asyncio.create_task(_timed_get(http, task_id, out))
                    in_flight.add(request)
                    request.add_done_callback(in_flight.discard)
                await asyncio.wait([stop], timeout=SAMPLE_INTERVAL)
            await asyncio.gather(*in_flight)
            pipe.send(out)
            if stop.result() is None:
                return


class _Sampler:
    def __init__(self, base: str, key: str) -> None:
        self._pipe, child = multiprocessing.get_context("spawn").Pipe()
        self._proc = multiprocessing.get_context("spawn").Process(
            target=_sampler_main, args=(child, base, key), daemon=True)
        self._proc.start()

    def start(self, task_id: str) -> None:
        self._pipe.send(task_id)

    async def stop(self) -> list[tuple[float, int]]:
        """(milliseconds, HTTP status or 0 for no answer) of each GET since `start`."""
        self._pipe.send("")
        answer: list[tuple[float, int]] = await asyncio.to_thread(self._pipe.recv)
        return answer

    async def sample(self, task_id: str, seconds: float) -> list[tuple[float, int]]:
        self.start(task_id)
        await asyncio.sleep(seconds)
        return await self.stop()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._pipe.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()


class _Lag:
    """How late this process's event loop wakes up: time the receiving side was not reading."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(0.005)
            self.samples.append((loop.time() - began - 0.005) * 1000)

    def __enter__(self) -> _Lag:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()


@dataclass
class _Context:
    deps: Deps
    events: EventLog
    user_id: str
    key: str
    port: int
    redis_url: str
    api: psutil.Process
    sampler: _Sampler
    client: str
    http: httpx.AsyncClient | None
    pace: float


async def _new_tasks(ctx: _Context, count: int) -> list[str]:
    rows = await ctx.deps.db.fetch(
        "WITH c AS (INSERT INTO conversations (user_id, title) "
        "SELECT $1::uuid, 'stream bench' FROM generate_series(1, $2) RETURNING id) "
        "INSERT INTO tasks (user_id, conversation_id, status, input) "
        "SELECT $1::uuid, id, 'RUNNING', 'stream bench' FROM c RETURNING id",
        ctx.user_id, count)
    return [str(row["id"]) for row in rows]


async def _publish(events: EventLog, task_ids: list[str], count: int, pace: float
                   ) -> dict[tuple[str, str], float]:
    """`count` token events per task, one every `pace` seconds on a fixed schedule, then the
    terminal status: (task id, event id) -> when it was sent."""
    sent: dict[tuple[str, str], float] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(task_id: str, k: int) -> None:
        at = time.time()
        if k < count:
            event_id = await events.publish(task_id, TokenData(text=f"token {k}"))
        else:
            event_id = await events.publish(task_id, StatusData(status=TaskStatus.SUCCEEDED))
        sent[(task_id, event_id)] = at

    for k in range(count + 1):
        await asyncio.sleep(max(0.0, start + k * pace - loop.time()))
        await asyncio.gather(*(one(t, k) for t in task_ids))
    return sent


def _latencies(followers: list[_Follower], sent: dict[tuple[str, str], float]) -> list[float]:
    out = []
    for f in followers:
        for event_id, received in zip(f.ids, f.times, strict=True):
            at = sent.get((f.task_id, event_id))
            if at is not None:
                out.append((received - at) * 1000)
    return out


def _rate(followers: list[_Follower], sent: dict[tuple[str, str], float]) -> float:
    """Published events received per second, from the first publish to the last receipt."""
    times = [t for f in followers for i, t in zip(f.ids, f.times, strict=True)
             if (f.task_id, i) in sent]
    span = max(times, default=0.0) - min(sent.values(), default=0.0)
    return len(times) / span if times and span > 0 else float("nan")


def _api_redis_connections(api: psutil.Process, redis_port: int) -> int:
    return sum(1 for c in api.net_connections(kind="tcp")
               if c.raddr and c.raddr.port == redis_port and c.status == psutil.CONN_ESTABLISHED)


async def _hub_round(ctx: _Context, n: int, per_task: int, events: int) -> dict[str, Any]:
    n_tasks = max(1, -(-n // per_task))
    task_ids = await _new_tasks(ctx, n_tasks)
    for task_id in task_ids:
        await ctx.events.publish(task_id, StatusData(status=TaskStatus.RUNNING))
    idle = await ctx.sampler.sample(task_ids[0], IDLE_SECONDS)

    followers = [_Follower(task_id=task_ids[i % n_tasks]) for i in range(n)]
    gate = _Gate(n)

    async def follow(f: _Follower) -> None:
        if ctx.http is not None:
            await _follow_httpx(ctx.http, ctx.key, f, gate)
        else:
            await _follow_raw(ctx.port, ctx.key, f, gate)

    began = time.monotonic()
    runners = {asyncio.create_task(follow(f)): f for f in followers}
    try:
        await asyncio.wait_for(gate.open.wait(), READY_TIMEOUT)
    except TimeoutError:
        pass
    open_seconds = time.monotonic() - began
    not_ready = sum(1 for f in followers if not f.ids and f.status == 200)
    clients = int((await ctx.deps.redis.info("clients"))["connected_clients"])
    api_clients = _api_redis_connections(ctx.api, int(urlsplit(ctx.redis_url).port or 6379))
    rss = ctx.api.memory_info().rss

    api_cpu, own_cpu = sum(ctx.api.cpu_times()[:2]), time.process_time()
    window = time.monotonic()
    with _Lag() as lag:
        ctx.sampler.start(task_ids[0])
        sent = await _publish(ctx.events, task_ids, events, ctx.pace)
        published = time.monotonic() - window
        _, stalled = await asyncio.wait(runners, timeout=DRAIN_TIMEOUT)
        for runner in stalled:
            runner.cancel()
            runners[runner].error = "stalled: no terminal event within the drain timeout"
        await asyncio.gather(*stalled, return_exceptions=True)
        live = await ctx.sampler.stop()
    wall = time.monotonic() - window
    api_cpu = (sum(ctx.api.cpu_times()[:2]) - api_cpu) / wall * 100
    own_cpu = (time.process_time() - own_cpu) / wall * 100

    history = {t: [e.id for e in await ctx.events.history(t)] for t in task_ids}
    failed = [f for f in followers if f.status != 200]
    dropped = [f for f in followers if f.status == 200 and not f.finished]
    exact = sum(1 for f in followers if f.ids == history[f.task_id])
    errors: dict[str, int] = {}
    for f in failed + dropped:
        reason = f.error or f"HTTP {f.status}"
        errors[reason] = errors.get(reason, 0) + 1
    lat = _latencies(followers, sent)
    return {"followers": n, "tasks": n_tasks, "rate": _rate(followers, sent),
            "open_s": open_seconds, "not_ready": not_ready, "failed": len(failed),
            "dropped": len(dropped), "exact": exact,
            "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99), "max": max(lat, default=float("nan")),
            "idle": [ms for ms, _ in idle], "live": [ms for ms, _ in live],
            "get_errors": sum(1 for _, s in idle + live if s != 200),
            "clients": clients, "api_clients": api_clients, "rss_mb": rss / 2**20,
            "api_cpu": api_cpu, "own_cpu": own_cpu, "lag_p99": _pct(lag.samples, 0.99),
            "publish_s": published, "errors": errors}


async def _old_round(ctx: _Context, n: int, per_task: int, events: int) -> dict[str, Any]:
    """The design the hub replaced: one blocking XREAD per follower, each on its own
    connection of one shared redis-py client (its default pool: 100 connections)."""
    n_tasks = max(1, -(-n // per_task))
    task_ids = [str(uuid.uuid4()) for _ in range(n_tasks)]  # no HTTP: no Postgres rows needed
    after = {t: await ctx.events.publish(t, StatusData(status=TaskStatus.RUNNING))
             for t in task_ids}
    name = f"bench-old-{uuid.uuid4().hex[:8]}"
    redis = aioredis.Redis.from_url(ctx.redis_url, client_name=name)
    followers = [_Follower(task_id=task_ids[i % n_tasks]) for i in range(n)]

    async def follow(f: _Follower) -> None:
        last = after[f.task_id]
        try:
            while not f.finished:
                batch: Any = await redis.xread({stream_key(f.task_id): last}, block=5000)
                now = time.time()
                for _key, entries in batch or []:
                    for entry_id, fields in entries:
                        event = decode_event(entry_id, fields)
                        f.ids.append(event.id)
                        f.times.append(now)
                        last = event.id
                        f.finished = f.finished or event.ends_stream
        except MaxConnectionsError:
            f.error = "MaxConnectionsError"
        except RedisError as exc:
            f.error = f"{type(exc).__name__}: {exc}"

    try:
        runners = {asyncio.create_task(follow(f)): f for f in followers}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        # Ready once each follower either failed or is blocked in its XREAD.
        while loop.time() < deadline:
            clients = await ctx.deps.redis.client_list()
            blocked = sum(1 for c in clients if c.get("name") == name and "b" in c.get("flags", ""))
            if blocked + sum(1 for f in followers if f.error) >= n:
                break
            await asyncio.sleep(0.05)
        connected = int((await ctx.deps.redis.info("clients"))["connected_clients"])
        with _Lag() as lag:
            sent = await _publish(ctx.events, task_ids, events, ctx.pace)
            _, stalled = await asyncio.wait(runners, timeout=DRAIN_TIMEOUT)
            for runner in stalled:
                runner.cancel()
                runners[runner].error = "stalled"
            await asyncio.gather(*stalled, return_exceptions=True)
    finally:
        await redis.aclose()
    history = {t: [e.id for e in await ctx.events.history(t)][1:] for t in task_ids}
    failed = [f for f in followers if f.error]
    lat = _latencies(followers, sent)
    return {"followers": n, "tasks": n_tasks, "rate": _rate(followers, sent),
            "served": sum(1 for f in followers if f.finished),
            "max_conn": sum(1 for f in followers if f.error == "MaxConnectionsError"),
            "failed": len(failed),
            "exact": sum(1 for f in followers if f.ids == history[f.task_id]),
            "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99), "max": max(lat, default=float("nan")),
            "clients": connected, "lag_p99": _pct(lag.samples, 0.99)}


def _layout(r: dict[str, Any]) -> str:
    return "one task" if r["tasks"] == 1 else "spread"


def _pair(values: list[float]) -> str:
    return f"{_pct(values, 0.5):.1f}/{_pct(values, 0.99):.1f}"


async def _start_api(env: dict[str, str], port: int, log_path: Path, cwd: Path
                     ) -> asyncio.subprocess.Process:
    log = log_path.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "api", cwd=cwd, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
    log.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            if proc.returncode is not None or loop.time() > deadline:
                if proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
                raise SystemExit(f"cadre api did not become healthy; see {log_path}")
            await asyncio.sleep(0.2)


async def _bench(settings: Settings, env: dict[str, str], redis_url: str, cwd: Path,
                 followers_list: list[int], events: int, per_task: int, pace: float,
                 client: str, log_path: Path) -> None:
    async with open_deps(settings) as deps, AsyncExitStack() as stack:
        issued = await create_key(deps.db, email="bench@example.com", role="analyst")
        port = free_port()
        proc = await _start_api({**env, "CADRE_API_PORT": str(port)}, port, log_path, cwd)
        sampler: _Sampler | None = None
        try:
            sampler = _Sampler(f"http://127.0.0.1:{port}", issued.secret)
            http = None
            if client == "httpx":
                http = await stack.enter_async_context(httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}",
                    timeout=httpx.Timeout(60, read=None),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=None)))
            api = psutil.Process(proc.pid)
            ctx = _Context(deps=deps, events=EventLog(deps.redis), user_id=issued.user_id,
                           key=issued.secret, port=port, redis_url=redis_url, api=api,
                           sampler=sampler, client=client, http=http, pace=pace)
            warm = await _new_tasks(ctx, 1)
            await ctx.sampler.sample(warm[0], 0.5)
            base_clients = int((await deps.redis.info("clients"))["connected_clients"])
            print(f"one cadre api process (pid {proc.pid}), {os.cpu_count()} CPUs; {events} events "
                  f"per task every {ctx.pace * 1000:.0f} ms, then the terminal status; "
                  f"followers: {'raw asyncio sockets' if client == 'raw' else 'httpx'}")
            print(f"before any stream: API RSS {api.memory_info().rss / 2**20:.0f} MB, "
                  f"Redis connected_clients {base_clients}")
            print()
            print("new design: StreamHub, SSE through one cadre api process")
            print("  p50/p99/max = publish-to-receipt ms; ev/s = events received per second by "
                  "all followers together")
            print(f"  GET = GET /v1/tasks/{{id}} p50/p99 ms, one started every "
                  f"{SAMPLE_INTERVAL * 1000:.0f} ms (at most {SAMPLE_IN_FLIGHT} in flight): idle = "
                  f"{IDLE_SECONDS:g} s with no stream open, live = from the first event until every "
                  f"follower has the last (n requests)")
            print("  redis = connected_clients (all / the API process's); own CPU and lag = this "
                  "process's (the followers') CPU and event-loop lag p99 ms")
            print(f"  {'layout':<8} {'follow':>6} {'tasks':>5} {'open s':>6} {'failed':>6} "
                  f"{'dropped':>7} {'exact':>11} {'p50':>7} {'p99':>7} {'max':>6} {'ev/s':>6} "
                  f"{'GET idle':>10} {'GET live':>13} {'n':>4} {'redis':>7} {'RSS MB':>6} "
                  f"{'API CPU':>7} {'own CPU':>7} {'lag':>5}")
            hub: list[dict[str, Any]] = []
            for n in followers_list:
                for layout in (n, per_task):
                    r = await _hub_round(ctx, n, layout, events)
                    hub.append(r)
                    print(f"  {_layout(r):<8} {n:>6} {r['tasks']:>5} {r['open_s']:>6.1f} "
                          f"{r['failed']:>6} {r['dropped']:>7} {r['exact']:>5}/{n:<5} "
                          f"{r['p50']:>7.1f} {r['p99']:>7.1f} {r['max']:>6.0f} {r['rate']:>6.0f} "
                          f"{_pair(r['idle']):>10} {_pair(r['live']):>13} {len(r['live']):>4} "
                          f"{r['clients']:>3}/{r['api_clients']:<3} {r['rss_mb']:>6.0f} "
                          f"{r['api_cpu']:>6.0f}% {r['own_cpu']:>6.0f}% {r['lag_p99']:>5.0f}", flush=True)
                    notes = []
                    if r["errors"]:
                        notes.append("failures: " + ", ".join(f"{k} x{v}" for k, v in
                                                              r["errors"].items()))
                    if r["get_errors"]:
                        notes.append(f"{r['get_errors']} GET answers were not 200")
                    planned = events * ctx.pace
                    if r["publish_s"] > planned * 1.5 + 0.1:
                        notes.append(f"publishing took {r['publish_s']:.1f} s (planned "
                                     f"{planned:.1f} s): this process could not keep the pace")
                    if r["not_ready"]:
                        notes.append(f"{r['not_ready']} followers had no ready event after "
                                     f"{READY_TIMEOUT:.0f} s")
                    for note in notes:
                        print(f"    {note}")
            print()
            print("old design: one Redis connection per follower (no HTTP); redis-py asyncio, "
                  "default pool (100 connections), one blocking XREAD per follower")
            print(f"  {'layout':<8} {'follow':>6} {'tasks':>5} {'served':>6} "
                  f"{'failed':>6} {'MaxConn':>7} {'exact':>11} {'p50':>6} {'p99':>6} "
                  f"{'max':>6} {'ev/s':>6} {'redis':>5} {'lag':>5}")
            old: list[dict[str, Any]] = []
            for n in followers_list:
                for layout in (n, per_task):
                    r = await _old_round(ctx, n, layout, events)
                    old.append(r)
                    print(f"  {_layout(r):<8} {n:>6} {r['tasks']:>5} {r['served']:>6} "
                          f"{r['failed']:>6} {r['max_conn']:>7} {r['exact']:>5}/{n:<5} "
                          f"{r['p50']:>6.1f} {r['p99']:>6.1f} {r['max']:>6.0f} {r['rate']:>6.0f} "
                          f"{r['clients']:>5} {r['lag_p99']:>5.0f}", flush=True)
            print()
            print("side by side: followers without every event (failed + dropped) and "
                  "delivery p50/p99 ms")
            print(f"  {'layout':<8} {'follow':>6}   {'hub: lost':>9} {'p50/p99':>17}   "
                  f"{'old: lost':>9} {'p50/p99':>17}")
            for h, o in zip(hub, old, strict=True):
                hub_ms, old_ms = f"{h['p50']:.1f}/{h['p99']:.1f}", f"{o['p50']:.1f}/{o['p99']:.1f}"
                print(f"  {_layout(h):<8} {h['followers']:>6}   {h['failed'] + h['dropped']:>9} "
                      f"{hub_ms:>17}   {o['failed']:>9} {old_ms:>17}")
            print()
            print(GOAL)
            for r in hub:
                if r["tasks"] == 1 and r["followers"] == 1000:
                    print(f"measured: {r['failed']} failed, {r['dropped']} dropped, "
                          f"{r['exact']}/1000 exact, p99 {r['p99']:.0f} ms, GET p99 "
                          f"{_pct(r['live'], 0.99):.1f} ms while streaming vs "
                          f"{_pct(r['idle'], 0.99):.1f} ms idle")
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            if sampler is not None:
                sampler.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", default="100,500,1000,2000")
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--per-task", type=int, default=10)
    parser.add_argument("--pace-ms", type=float, default=20.0,
                        help="milliseconds between two events of a task")
    parser.add_argument("--quick", action="store_true", help="100 and 500 followers only")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    args = parser.parse_args()
    followers = [100, 500] if args.quick else [int(n) for n in args.followers.split(",")]
    _raise_nofile()
    log_fd, log_name = tempfile.mkstemp(prefix="cadre-bench-streams-api-", suffix=".log")
    os.close(log_fd)
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp, \
            ephemeral_services(Path(tmp)) as running:
        root, pg = Path(tmp), running.postgres
        if running.sqs_endpoint is None:
            raise SystemExit("the embedded SQS endpoint did not start")
        client = sqs_client(region="us-east-1", endpoint_url=running.sqs_endpoint,
                            access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        queue = ensure_queues(client, "bench", max_receive_count=5)
        migrate.upgrade(pg.url)
        env = {**os.environ, "DATABASE_URL": pg.url, "REDIS_URL": running.redis_url,
               "SQS_QUEUE_URL": queue.url, "AWS_ENDPOINT_URL_SQS": running.sqs_endpoint,
               "AWS_REGION": "us-east-1", **LOCAL_CREDENTIALS, "CADRE_HOME": str(root / ".cadre"),
               "CADRE_UI": "false", "CADRE_RATE_LIMIT": "1000000/minute",
               "CADRE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
        settings = Settings.of(database_url=pg.url, redis_url=running.redis_url,
                               sqs_queue_url=queue.url, aws_endpoint_url_sqs=running.sqs_endpoint,
                               aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                               home=root / ".cadre-bench")
        asyncio.run(_bench(settings, env, running.redis_url, root, followers, args.events,
                           args.per_task, args.pace_ms / 1000, args.client, Path(log_name)))
    lines = Path(log_name).read_text(errors="replace").splitlines()
    bad = sum(1 for line in lines if "ERROR" in line or "Traceback" in line)
    print(f"API log: {log_name} ({len(lines)} lines, {bad} with ERROR or a traceback)")


if __name__ == "__main__":
    main()
