"""Crash resume on `cadre up`: how long a task stands still after the worker running it dies.

Starts `cadre up --workers 3` in a temporary directory against a fake OpenAI-compatible model
served by this process (every call answers after `--latency` seconds, default 2 s; each task is
plan -> answer -> verify, three calls). For each of `--kills` tasks, one at a time: submit it
through the API, follow its live stream (SSE) as a user's browser does, and SIGKILL the worker
running it at a random moment inside one of its model calls (the supervisor of `cadre up`
sees the exit, deletes the worker's liveness key and starts a new worker). Then `--pauses`
tasks whose worker is SIGSTOPped instead (a hung or cut-off worker nobody notices: its
liveness key expires after three heartbeats), and SIGCONTed once the task ended. Per task:

- signal -> next event: until the stream shows the task `running` on another worker;
- signal -> end: until the stream's terminal event (the task must end SUCCEEDED).

Then the heartbeat's cost, measured in two quiet windows of `--window` seconds: no task
running, and `--idle-tasks` tasks each waiting on a slow model call (nothing but heartbeats
touches the database then). It prints the statements the stack's processes sent PostgreSQL
(counted in its log with log_statement = 'all' for the window: lease renewals, sweeps, the
rest), `tasks` rows updated/s (pg_stat_user_tables) and Redis commands/s (INFO) in both
windows, and the difference per running task; SQS visibility extensions follow from the
settings (one call per task every CADRE_VISIBILITY_SECONDS / 3).

With `--baseline-pauses N` (default 3) it then pauses N workers with the settings before fast
takeover (CADRE_LEASE_SECONDS=60, CADRE_HEARTBEAT_SECONDS=20): the figure this replaced, in
the same run. Asserts nothing; exits non-zero only if a task did not succeed.

    .venv/bin/python bench/resume.py [--kills 20] [--pauses 10] [--latency 2.0]
                                     [--baseline-pauses 3] [--idle-tasks 6] [--window 10]
                                     [--lease 4] [--heartbeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.stack.ports import free_port  # noqa: E402
from graph.testing import FakeOpenAIServer, FakeResponse, completion  # noqa: E402

LABEL = re.compile(r"(resume-\d+-\d+|idle-\d+)")
SERVICE_ENV = ("DATABASE_URL", "REDIS_URL", "SQS_QUEUE_URL", "AWS_ENDPOINT_URL_SQS",
               "AWS_ENDPOINT_URL", "CADRE_HOME", "OPENAI_API_KEY")


@dataclass
class Model:
    """Every call answers after `latency`; a task whose input starts with "idle" waits
    `idle_latency` on its first call. Records when each task's calls arrive."""

    latency: float
    idle_latency: float = 600.0
    calls: dict[str, list[float]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, body: dict[str, Any]) -> FakeResponse:
        found = LABEL.search(json.dumps(body["messages"]))
        key = found.group(0) if found else ""
        self.calls.setdefault(key, []).append(time.monotonic())
        self.arrived.set()
        delay = self.idle_latency if key.startswith("idle") else self.latency
        choice = body.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else None
        if name == "submit_plan":
            return FakeResponse(body=completion(tool_calls=[
                ("submit_plan", '{"steps": ["Answer"]}')]), delay=delay)
        if name == "submit_verdict":
            return FakeResponse(body=completion(tool_calls=[
                ("submit_verdict", '{"goal_met": true, "reason": "ok"}')]), delay=delay)
        return FakeResponse(body=completion("Done."), delay=delay)


class Stack:
    """`cadre up` in a directory of its own."""

    def __init__(self, home: Path, env: dict[str, str], workers: int) -> None:
        self.home, self.env, self.workers = home, env, workers
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.key = ""
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "up", "--workers", str(self.workers),
            env=self.env, cwd=self.home, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read())
        async with asyncio.timeout(300):
            while not any("Press Ctrl-C to stop everything." in line for line in self.lines):
                if self.proc.returncode is not None:
                    raise SystemExit("cadre up exited:\n" + "\n".join(self.lines))
                await asyncio.sleep(0.2)
        self.key = next(line.strip() for line in self.lines if line.strip().startswith("cadre_"))
        self.info = json.loads((self.home / ".cadre" / "stack.json").read_text())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 120)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@dataclass
class Follow:
    """One task's stream as it arrives: (arrival time, type, data)."""

    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def running_on(self) -> str | None:
        for _, kind, data in reversed(self.events):
            if kind == "status" and data.get("status") == "RUNNING":
                return str(data.get("worker"))
        return None


async def follow(http: httpx.AsyncClient, task_id: str, into: Follow) -> None:
    async with http.stream("GET", f"/v1/tasks/{task_id}/stream",
                           headers={"Accept": "text/event-stream"}) as response:
        response.raise_for_status()
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                into.events.append((time.monotonic(), kind, data))
                if kind == "status" and data.get("status") in ("SUCCEEDED", "FAILED",
                                                               "CANCELLED"):
                    into.ended.set()
                    return


async def kill_one(http: httpx.AsyncClient, model: Model, n: int, rng: random.Random,
                   latency: float, sig: signal.Signals) -> tuple[float, float, str]:
    """Run one task, send its worker `sig` (SIGKILL, or SIGSTOP and SIGCONT once the task
    ended) inside one of its model calls; returns (signal -> next event, signal -> end, the
    task's status)."""
    label = f"resume-{n}-{rng.randrange(10**9)}"
    created = await http.post("/v1/tasks", json={"input": f"{label} answer briefly."})
    created.raise_for_status()
    task_id = created.json()["id"]
    stream = Follow()
    reader = asyncio.create_task(follow(http, task_id, stream))
    which = rng.randrange(3)  # inside the plan, answer or verify call
    try:
        async with asyncio.timeout(120):
            while len(model.calls.get(label, [])) <= which or stream.running_on() is None:
                if stream.ended.is_set():
                    raise SystemExit(f"task {task_id} ended before the kill: {stream.events}")
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise SystemExit(f"task {task_id} made no model call {which + 1} in 120 s; its "
                         f"events: {stream.events}; model calls: {list(model.calls)}") from None
    await asyncio.sleep(rng.uniform(0.1, latency * 0.9))
    victim = stream.running_on()
    assert victim is not None
    pid = int(victim.rsplit(":", 1)[1])
    os.kill(pid, sig)
    killed = time.monotonic()
    try:
        await asyncio.wait_for(stream.ended.wait(), 300)
        await reader
    finally:
        if sig == signal.SIGSTOP:
            os.kill(pid, signal.SIGCONT)  # it finds its lease gone and writes nothing more
    after = next(t for t, kind, data in stream.events if t > killed and kind == "status"
                 and data.get("status") == "RUNNING" and data.get("worker") != victim)
    end_at, _, end = stream.events[-1]
    return after - killed, end_at - killed, str(end.get("status"))


STATEMENT = re.compile(r"\[(\d+)\] LOG:  (?:statement|execute [^:]*): (.*)", re.DOTALL)
LOG_LINE = re.compile(r"\n(?=\d{4}-\d{2}-\d{2} )")  # where the next log entry starts


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def _kind(sql: str) -> str:
    if "unnest($2::uuid[], $4::bigint[])" in sql:
        return "renew"
    if "delivery = delivery + 1" in sql or "bool_or(lease_expires_at < now())" in sql:
        return "sweep"
    if "webhook_deliveries" in sql:
        return "webhooks"
    return "other"


async def heartbeat_cost(http: httpx.AsyncClient, model: Model, database_url: str,
                         redis_url: str, pg_log: Path, idle_tasks: int,
                         window: float) -> dict[str, dict[str, float]]:
    """Statements the services' processes send PostgreSQL (counted in its log, with
    log_statement = 'all' for the window), `tasks` rows updated and Redis commands, per second:
    with no task running, then with `idle_tasks` tasks waiting on a model call."""
    db = await asyncpg.connect(database_url)
    rds = aioredis.Redis.from_url(redis_url)
    me = str(await db.fetchval("SELECT pg_backend_pid()"))

    async def measure() -> dict[str, float]:
        await db.execute("SELECT pg_stat_clear_snapshot()")
        u0 = await db.fetchval("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'tasks'")
        c0 = int((await rds.info("stats"))["total_commands_processed"])
        start = await asyncio.to_thread(os.path.getsize, pg_log)
        await db.execute("ALTER SYSTEM SET log_statement = 'all'")
        await db.execute("SELECT pg_reload_conf()")
        t0 = time.monotonic()
        await asyncio.sleep(window)
        await db.execute("ALTER SYSTEM RESET log_statement")
        await db.execute("SELECT pg_reload_conf()")
        seconds = time.monotonic() - t0
        c1 = int((await rds.info("stats"))["total_commands_processed"])
        await asyncio.sleep(1.5)  # statistics are flushed at most once a second
        await db.execute("SELECT pg_stat_clear_snapshot()")
        u1 = await db.fetchval("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'tasks'")
        logged = await asyncio.to_thread(_read_from, pg_log, start)
        counts: dict[str, float] = {"renew": 0, "sweep": 0, "webhooks": 0, "other": 0}
        for entry in LOG_LINE.split(logged):
            found = STATEMENT.search(entry)
            if found and found.group(1) != me:
                counts[_kind(found.group(2))] += 1
        rates = {k: v / seconds for k, v in counts.items()}
        rates["statements"] = sum(counts.values()) / seconds
        rates["rows"] = (int(u1) - int(u0)) / seconds
        rates["redis"] = (c1 - c0 - 1) / seconds
        return rates

    try:
        await asyncio.sleep(3)  # the last kill's task and its worker's restart settle
        quiet = await measure()
        ids = []
        for n in range(idle_tasks):
            created = await http.post("/v1/tasks", json={"input": f"idle-{n} wait."})
            created.raise_for_status()
            ids.append(created.json()["id"])
        async with asyncio.timeout(120):
            while sum(1 for k in model.calls if k.startswith("idle")) < idle_tasks:
                await asyncio.sleep(0.05)
        busy = await measure()
        for task_id in ids:
            await http.post(f"/v1/tasks/{task_id}/cancel")
    finally:
        await db.close()
        await rds.aclose()
    return {"quiet": quiet, "busy": busy}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace, lease: float, heartbeat: float, kills: int,
              pauses: int, measure_cost: bool) -> dict[str, Any]:
    # Idle tasks wait out both quiet windows, then end soon after their cancellation.
    model = Model(latency=args.latency, idle_latency=args.window + 8)
    rng = random.Random(args.seed)
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeOpenAIServer())
        fake.responder = model
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cadre-bench-resume-")))
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
        env.update({
            "OPENAI_BASE_URL": fake.base_url, "CADRE_MODEL": "fake",
            "CADRE_LEASE_SECONDS": str(lease), "CADRE_HEARTBEAT_SECONDS": str(heartbeat),
            "CADRE_SQS_WAIT_SECONDS": "1", "CADRE_RATE_LIMIT": "100000/minute",
            "CADRE_MAX_CONCURRENT_TASKS": "1000",
            **{name: str(free_port()) for name in (
                "CADRE_API_PORT", "CADRE_PG_PORT", "CADRE_REDIS_PORT", "CADRE_SQS_PORT",
                "CADRE_LLM_PORT", "CADRE_SMTP_PORT", "CADRE_TRACES_PORT",
                "CADRE_TRACES_GRPC_PORT")}})
        up = Stack(home, env, workers=3)
        stack.push_async_callback(up.stop)
        await up.start()
        http = await stack.enter_async_context(httpx.AsyncClient(
            base_url=up.info["api_url"], timeout=httpx.Timeout(30, read=None),
            headers={"Authorization": f"Bearer {up.key}"}))
        results: dict[str, Any] = {}
        failed = 0
        for sig, times in ((signal.SIGKILL, kills), (signal.SIGSTOP, pauses)):
            to_next, to_end = [], []
            for n in range(times):
                next_s, end_s, status = await kill_one(http, model, n, rng, args.latency, sig)
                to_next.append(next_s)
                to_end.append(end_s)
                failed += status != "SUCCEEDED"
                print(f"  {sig.name} {n + 1:2d}: next event from another worker after "
                      f"{next_s:5.2f} s, task ended ({status}) {end_s:5.2f} s after it",
                      flush=True)
            results[sig.name] = {"next": to_next, "end": to_end}
        cost = None
        if measure_cost:
            cost = await heartbeat_cost(http, model, up.info["env"]["DATABASE_URL"],
                                        up.info["env"]["REDIS_URL"],
                                        home / ".cadre" / "logs" / "postgres.log",
                                        args.idle_tasks, args.window)
    return {**results, "failed": failed, "cost": cost}


WHAT = {"SIGKILL": "SIGKILL (the worker dies; cadre up's supervisor sees it exit and deletes "
                   "its liveness key)",
        "SIGSTOP": "SIGSTOP (the worker hangs; nobody notices until its liveness key expires)"}


def _report(title: str, result: dict[str, Any]) -> None:
    print(f"\n{title}: {result['failed']} tasks not SUCCEEDED")
    for name, what in WHAT.items():
        nxt, end = result[name]["next"], result[name]["end"]
        if not nxt:
            continue
        print(f"  {what}, {len(nxt)} times:")
        print(f"    -> next event from another worker: p50 {statistics.median(nxt):5.2f} s  "
              f"p90 {_pct(nxt, 0.9):5.2f} s  max {max(nxt):5.2f} s")
        print(f"    -> task end:                       p50 {statistics.median(end):5.2f} s  "
              f"p90 {_pct(end, 0.9):5.2f} s  max {max(end):5.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--pauses", type=int, default=10)
    parser.add_argument("--baseline-pauses", type=int, default=3)
    parser.add_argument("--idle-tasks", type=int, default=6)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--lease", type=float, default=4.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    print(f"cadre up --workers 3, model latency {args.latency:g} s per call, "
          f"CADRE_LEASE_SECONDS={args.lease:g} CADRE_HEARTBEAT_SECONDS={args.heartbeat:g}")
    fast = asyncio.run(run(args, args.lease, args.heartbeat, args.kills, args.pauses,
                           measure_cost=True))
    _report(f"Fast takeover (lease {args.lease:g} s, heartbeat {args.heartbeat:g} s)", fast)
    quiet, busy = fast["cost"]["quiet"], fast["cost"]["busy"]
    print(f"\nHeartbeat cost, {args.window:g} s windows, 3 workers (idle: no task running; "
          f"busy: {args.idle_tasks} tasks waiting on the model, nothing else touching the "
          "database):")
    rows = [("PostgreSQL statements/s", "statements"), ("  lease renewals/s", "renew"),
            ("  sweeps/s", "sweep"), ("  webhook polls/s", "webhooks"),
            ("  anything else/s", "other"),
            ("tasks rows updated/s", "rows"), ("Redis commands/s", "redis")]
    for title, key in rows:
        per_task = (busy[key] - quiet[key]) / args.idle_tasks
        print(f"  {title:25s} idle {quiet[key]:6.2f}  busy {busy[key]:6.2f}  "
              f"per running task {per_task:5.2f}")
    print("  SQS ChangeMessageVisibility: 1 when a worker takes a task, then 1 per running "
          "task every 10 s (CADRE_VISIBILITY_SECONDS=30 / 3)")
    failed = fast["failed"]
    if args.baseline_pauses:
        print("\nBaseline, the settings before fast takeover (lease 60 s, heartbeat 20 s), "
              "workers paused:", flush=True)
        base = asyncio.run(run(args, 60.0, 20.0, 0, args.baseline_pauses, measure_cost=False))
        _report("Baseline (lease 60 s, heartbeat 20 s)", base)
        failed += base["failed"]
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
