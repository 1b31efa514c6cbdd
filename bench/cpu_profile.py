"""Where the CPU goes under `bench/throughput.py`'s workload: the same stack (the real API in
this process, N `cadre worker` processes, Postgres, Redis and the embedded SQS endpoint, no
embedding model) and the same tasks (plan -> answer -> verify, three calls to a fake model that
answers after `--latency` s), with the fake model in its own subprocess so its CPU is counted
apart. For each round it reads every process's CPU time (user + system, from psutil) before and
after, and prints per component the CPU seconds used, CPU ms per task and share of the total;
Postgres is the postmaster and all its backends, each worker its whole process tree. A short
idle window first (workers up, no tasks) gives each component's background cost.

With py-spy (on PATH or `--py-spy PATH`) it then runs one more round at the first task count
with every worker and this process (API + load generator) sampled (`--gil`: the
thread holding the GIL, i.e. Python's own CPU, not C code that released it), and prints the
hottest functions by self and inclusive time and the share of samples per package. The
psutil rounds run without py-spy, so its own cost (also printed) does not skew them.

Last, the anchor (bench/anchor.py; `--no-anchor` skips it): the first round's count of tasks,
three model calls each, through LangGraph's prebuilt `create_react_agent` in as many processes
as there are workers, as many at once in each, on the same Postgres, checkpointer and fake
model, with the same accounting (and, with py-spy, a round with its processes sampled).
Asserts nothing.

    .venv/bin/python bench/cpu_profile.py [--workers 2] [--tasks 200,30] [--concurrency 64]
                                          [--latency 1.0] [--tokens 0] [--warmup 20] [--idle 5]
                                          [--py-spy PATH | --no-py-spy] [--keep DIR]
                                          [--no-anchor]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.deps import open_deps, require_database_url  # noqa: E402
from bench.anchor import Anchor, add_anchor_option  # noqa: E402
from bench.throughput import (  # noqa: E402
    _model,
    add_tokens_option,
    api_client,
    bench_stack,
    calls_line,
    start_workers,
    stop_workers,
    submit_and_wait,
    summarise,
    worker_env,
)
from graph.testing import FakeOpenAIServer  # noqa: E402

# -- CPU time per component (psutil) ------------------------------------------------------------


def _cpu(proc: psutil.Process, *, reaped: bool = True) -> float:
    """User + system seconds of a process, and of its children it has reaped (which include
    theirs): a Postgres backend that exits during a round is still counted, by its parent."""
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    own = t.user + t.system
    return float(own) + float(t.children_user + t.children_system if reaped else 0.0)


def _label(proc: psutil.Process, named: dict[int, str]) -> str:
    if proc.pid in named:
        return named[proc.pid]
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return "other"
    head = Path(argv[0]).name if argv else proc.name()
    if head == "postgres":
        return "postgres (postmaster + backends)"
    if head.startswith("redis-server"):
        return "redis"
    if "app.stack.sqs_server" in argv or "moto.server" in argv:
        return "sqs endpoint (moto)"
    if head == "py-spy":
        return "py-spy (profiler)"
    return f"other ({head})"


def sample(named: dict[int, str]) -> dict[str, dict[int, float]]:
    """CPU seconds so far of every process in the stack, by component and pid. This process
    counts only its own threads (its children are components of their own)."""
    me = psutil.Process()
    out: dict[str, dict[int, float]] = {"bench process (API + load generator)": {me.pid: _cpu(
        me, reaped=False)}}
    for child in me.children():
        label = _label(child, named)
        tree = out.setdefault(label, {})
        try:
            members = [child, *child.children(recursive=True)]
        except psutil.Error:
            members = [child]
        for proc in members:
            tree[proc.pid] = _cpu(proc)
    return out


def delta(before: dict[str, dict[int, float]],
          after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds each component used between two samples (a process new since `before`
    counts from zero)."""
    return {label: sum(cpu - before.get(label, {}).get(pid, 0.0) for pid, cpu in procs.items())
            for label, procs in after.items()}


def _order(label: str) -> tuple[int, str]:
    for rank, prefix in enumerate(("bench", "fake model", "worker", "anchor", "postgres", "redis",
                                   "sqs", "py-spy")):
        if label.startswith(prefix):
            return rank, label
    return 99, label


def print_cpu(used: dict[str, float], tasks: int, wall: float,
              idle: dict[str, float] | None) -> None:
    total = sum(used.values())
    idle_col = idle is not None
    print(f"  {'component':<38} {'CPU s':>7} {'ms/task':>8} {'share':>6}"
          + (f" {'idle ms/s':>9} {'ms/task net of idle':>19}" if idle_col else ""))
    for label in sorted(used, key=_order):
        line = (f"  {label:<38} {used[label]:>7.2f} {used[label] / tasks * 1000:>8.1f} "
                f"{used[label] / total:>6.1%}")
        if idle is not None:
            rate = idle.get(label, 0.0)
            net = (used[label] - rate * wall) / tasks * 1000
            line += f" {rate * 1000:>9.1f} {net:>19.1f}"
        print(line)
    for kind in ("worker", "anchor"):
        procs = [v for k, v in used.items() if k.startswith(f"{kind} ")]
        if len(procs) > 1:
            print(f"  {f'(all {kind}s)':<38} {sum(procs):>7.2f} {sum(procs) / tasks * 1000:>8.1f} "
                  f"{sum(procs) / total:>6.1%}")
    cores = psutil.cpu_count() or 1
    print(f"  {'total':<38} {total:>7.2f} {total / tasks * 1000:>8.1f} {1:>6.0%}")
    print(f"  {total:.1f} CPU s in {wall:.1f} s wall = {total / wall:.2f} of {cores} cores busy "
          f"with the stack; machine load over the round {_load_note()}")


_cpu_times_at: list[Any] = []


def _mark_machine() -> None:
    _cpu_times_at[:] = [psutil.cpu_times()]


def _load_note() -> str:
    """Machine-wide busy share since `_mark_machine` (anything else running shows here)."""
    if not _cpu_times_at:
        return "?"
    a, b = _cpu_times_at[0], psutil.cpu_times()
    busy = sum(getattr(b, f) - getattr(a, f) for f in ("user", "system", "nice", "irq", "softirq",
                                                        "steal") if hasattr(b, f))
    whole = busy + (b.idle - a.idle) + (getattr(b, "iowait", 0.0) - getattr(a, "iowait", 0.0))
    return f"{busy / whole:.0%} of all cores" if whole > 0 else "?"


# -- py-spy ------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
_STDLIB = Path(sys.base_prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}")
_GROUPS = {"boto3": "botocore/boto3", "botocore": "botocore/boto3", "s3transfer": "botocore/boto3",
           "pydantic": "pydantic", "pydantic_core": "pydantic", "httpx": "httpx/httpcore",
           "httpcore": "httpx/httpcore", "httpx2": "httpx2/httpcore2 (openai's)",
           "httpcore2": "httpx2/httpcore2 (openai's)", "h11": "h11", "psycopg": "psycopg",
           "psycopg_pool": "psycopg", "langchain_core": "langchain_core",
           "langchain_openai": "langchain_openai", "redis": "redis", "asyncpg": "asyncpg",
           "openai": "openai", "ormsgpack": "ormsgpack", "uvicorn": "uvicorn",
           "starlette": "starlette", "fastapi": "fastapi", "anyio": "anyio"}
_ROOTS = {"Handle._run", "_worker", "Thread.run", "Thread._bootstrap_inner"}
# Frames every sample of an asyncio program passes through: left out of the inclusive list.
_PLUMBING = ("asyncio", "threading", "runpy", "concurrent", "selectors", "contextvars")


@dataclass(frozen=True)
class Frame:
    name: str
    file: str
    line: str

    @property
    def package(self) -> str:
        f = self.file
        if "/site-packages/" in f:
            rest = f.split("/site-packages/", 1)[1].split("/")
            top = rest[0].removesuffix(".py").split(".")[0]
            if top == "langgraph":
                return "langgraph.checkpoint" if rest[1:2] == ["checkpoint"] else "langgraph"
            return _GROUPS.get(top, top)
        if f.startswith(str(ROOT) + "/"):
            top = f[len(str(ROOT)) + 1:].split("/")[0]
            return f"cadre {top}/" if top in ("app", "graph", "tools", "guardrails") else top
        if f.startswith(str(_STDLIB) + "/"):
            return "stdlib " + f[len(str(_STDLIB)) + 1:].split("/")[0].removesuffix(".py")
        if f.startswith("<frozen"):
            return "stdlib (frozen)"
        return "other"

    @property
    def short(self) -> str:
        f = self.file
        for base in ("/site-packages/", str(ROOT) + "/", str(_STDLIB) + "/"):
            if base in f:
                f = f.split(base, 1)[1]
                break
        return f"{self.name} ({f}:{self.line})" if self.line else f"{self.name} ({f})"


def _root_depth(frames: tuple[Frame, ...]) -> int:
    """Where the work begins in a stack: below the last event-loop callback or thread-pool
    frame (`main`, typer, `asyncio.run`, ... above it are in every sample of their thread)."""
    depth = 0
    for i, frame in enumerate(frames):
        if frame.name in _ROOTS and frame.package.startswith("stdlib "):
            depth = i + 1
    return depth


def parse_raw(path: Path) -> list[tuple[tuple[Frame, ...], int]]:
    """py-spy's raw (collapsed) output: one stack per line, outermost frame first, then a count."""
    stacks = []
    for text in path.read_text(errors="replace").splitlines():
        head, _, count = text.rpartition(" ")
        if not head or not count.isdigit():
            continue
        frames = []
        for part in head.split(";"):
            m = _FRAME.match(part)
            frames.append(Frame(m["name"], m["file"], m["line"] or "") if m else Frame(part, "", ""))
        stacks.append((tuple(frames), int(count)))
    return stacks


def print_profile(title: str, stacks: list[tuple[tuple[Frame, ...], int]], top: int,
                  rate: int, cpu_s: float | None) -> None:
    total = sum(n for _, n in stacks)
    if not total:
        print(f"\n{title}: no samples")
        return
    self_f: Counter[Frame] = Counter()
    incl_f: Counter[Frame] = Counter()
    self_p: Counter[str] = Counter()
    incl_p: Counter[str] = Counter()
    for frames, n in stacks:
        self_f[frames[-1]] += n
        self_p[frames[-1].package] += n
        for frame in set(frames[_root_depth(frames):]):
            incl_f[frame] += n
        for package in {f.package for f in frames}:
            incl_p[package] += n
    note = f", psutil CPU {cpu_s:.1f} s" if cpu_s is not None else ""
    print(f"\n{title}: {total} samples at {rate}/s = {total / rate:.1f} s on CPU{note}")
    print(f"  top {top} by self time")
    for frame, n in self_f.most_common(top):
        print(f"    {n / total:>6.1%}  {frame.short}")
    print(f"  top {top} by inclusive time (below the event loop or thread pool; asyncio left out)")
    shown = 0
    for frame, n in incl_f.most_common():
        if frame.package.startswith("stdlib ") and frame.package[7:] in _PLUMBING:
            continue
        print(f"    {n / total:>6.1%}  {frame.short}")
        shown += 1
        if shown == top:
            break
    print(f"  by package: {'self':>6} {'inclusive':>9}")
    for package, n in sorted(self_p.items(), key=lambda kv: -kv[1]):
        if n / total < 0.005 and incl_p[package] / total < 0.02:
            continue
        print(f"    {package:<26} {n / total:>6.1%} {incl_p[package] / total:>9.1%}")


_LOAD = {"submit_and_wait", "submit_and_wait.<locals>.submit", "summarise", "_round",
         "sample", "delta"}


def split_bench(stacks: list[tuple[tuple[Frame, ...], int]]) -> None:
    """This process runs the API and the load generator on one event loop: a sample whose stack
    passes through the load generator's coroutines (its HTTP client and DB polling) is its."""
    total = sum(n for _, n in stacks) or 1
    load = sum(n for frames, n in stacks if any(
        f.package == "bench" and f.name in _LOAD for f in frames))
    print(f"  of which the load generator (stack through bench/): {load / total:.1%}; "
          f"the rest is the API server and the event loop's own work")


# -- the run -----------------------------------------------------------------------------------


async def _serve_model(latency: float, tokens: int) -> None:
    """`--serve-model`: the fake model in this subprocess; prints its port, serves until stdin
    closes."""
    async with FakeOpenAIServer() as model:
        model.responder = _model(latency, tokens)
        print(model.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# Every round's task texts differ: the model-call cache (on by default) would answer a text
# seen in an earlier round without calling the model.
_rounds: list[int] = []


async def _round(http: Any, deps: Any, count: int, named: dict[int, str], workers: int,
                 concurrency: int, idle: dict[str, float] | None) -> dict[str, float]:
    _mark_machine()
    before = sample(named)
    _rounds.append(count)
    submitted, began, ended = await submit_and_wait(http, deps, count, f"round {len(_rounds)} task")
    used = delta(before, sample(named))
    r = await summarise(deps, submitted, began, ended)
    wall = ended - began
    print(f"\n{count} tasks, {workers} workers x {concurrency} at once: {r['tasks_per_s']:.2f} "
          f"tasks/s, wall {wall:.1f} s, task p50 {r['duration_p50']:.2f} s, "
          f"TTFE p50 / p99 {r['ttfe_p50']:.2f} / {r['ttfe_p99']:.2f} s, failed {int(r['failed'])}")
    print_cpu(used, count, wall, idle)
    return {**r, **used, "wall": wall}


async def _bench(args: argparse.Namespace, settings: Any, env: dict[str, str],
                 py_spy: str | None, out_dir: Path) -> None:
    model = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-model", "--latency", str(args.latency),
        "--tokens", str(args.tokens),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    assert model.stdout is not None and model.stdin is not None
    port = int(await model.stdout.readline())
    named = {model.pid: "fake model (subprocess)"}
    counts = [int(t) for t in args.tasks.split(",")]
    try:
        async with open_deps(settings) as deps, api_client(deps) as http:
            procs = await start_workers(deps, worker_env(env, f"http://127.0.0.1:{port}/v1"),
                                        args.workers)
            named.update({p.pid: f"worker {i + 1}" for i, p in enumerate(procs)})
            print(f"{calls_line(args.latency, args.tokens)}, {args.workers} workers x "
                  f"{args.concurrency} tasks at once, {psutil.cpu_count()} cores")
            if args.warmup:
                await submit_and_wait(http, deps, args.warmup, "warm-up task")
                print(f"warm-up: {args.warmup} tasks (not counted)")
            idle = None
            if args.idle > 0:
                before = sample(named)
                began = time.monotonic()
                await asyncio.sleep(args.idle)
                seconds = time.monotonic() - began
                idle = {k: v / seconds for k, v in delta(before, sample(named)).items()}
                print(f"idle {seconds:.1f} s (workers up, no tasks), CPU ms/s: " + ", ".join(
                    f"{k} {v * 1000:.1f}" for k, v in sorted(idle.items(), key=lambda kv: _order(
                        kv[0]))))
            for count in counts:
                await _round(http, deps, count, named, args.workers, args.concurrency, idle)
            if py_spy:
                await _profiled_round(http, deps, counts[0], named, procs, args, py_spy, out_dir)
            await stop_workers(deps, procs)
            if args.anchor:
                await _anchor_round(require_database_url(settings), f"http://127.0.0.1:{port}/v1",
                                    counts[0], named, args, py_spy, out_dir)
    finally:
        model.stdin.close()
        await model.wait()


async def _anchor_round(database_url: str, model_url: str, count: int, named: dict[int, str],
                        args: argparse.Namespace, py_spy: str | None, out_dir: Path) -> None:
    """The same count of tasks, three model calls each, through LangGraph's prebuilt agent in
    as many processes as there were workers (bench/anchor.py), on the same Postgres; with
    py-spy, once more with the anchor's processes sampled. (No column net of idle: the idle
    window was measured with the workers up, polling the queue.)"""
    print("\n== anchor: LangGraph's create_react_agent, the same model, Postgres and "
          "checkpointer (bench/anchor.py), nothing of Cadre ==")
    for profiled in (False, True) if py_spy else (False,):
        try:
            async with Anchor.running(database_url, model_url, args.workers, count,
                                      args.concurrency, f"anchor round {int(profiled)}") as anchor:
                named.update({pid: f"anchor {i + 1}" for i, pid in enumerate(anchor.pids)})
                spies = {}
                if profiled:
                    assert py_spy is not None
                    spies = await _start_spies({f"anchor{i + 1}": pid for i, pid in enumerate(
                        anchor.pids)}, args, py_spy, out_dir)
                    print(f"\nprofiled: {_spy_flags(args)} on each anchor process")
                try:
                    _mark_machine()
                    before = sample(named)
                    r = await anchor.run()
                    used = delta(before, sample(named))
                finally:
                    await _stop_spies(spies, out_dir)
        except Exception as exc:
            print(f"\nthe anchor failed: {type(exc).__name__}: {exc}")
            return
        print(f"\n{count} tasks, {args.workers} processes x {args.concurrency} at once: "
              f"{r['tasks_per_s']:.2f} tasks/s, wall {r['wall']:.1f} s, "
              f"task p50 {r['duration_p50']:.2f} s")
        print_cpu(used, count, r["wall"], None)
        if profiled:
            print_profile(f"anchor processes ({args.workers}, merged)",
                          _stacks(out_dir, "anchor", args.workers), args.top, args.rate,
                          sum(v for k, v in used.items() if k.startswith("anchor ")))


def _stacks(out_dir: Path, name: str, count: int) -> list[tuple[tuple[Frame, ...], int]]:
    """The stacks py-spy wrote for `name`1 to `name``count`, merged."""
    return [s for i in range(count) if (out_dir / f"{name}{i + 1}.txt").exists()
            for s in parse_raw(out_dir / f"{name}{i + 1}.txt")]


def _spy_flags(args: argparse.Namespace) -> str:
    return (f"py-spy {'--nonblocking ' if args.nonblocking else ''}"
            f"{'' if args.all_threads else '--gil '}at {args.rate}/s")


async def _start_spies(targets: dict[str, int], args: argparse.Namespace, py_spy: str,
                       out_dir: Path) -> dict[str, Any]:
    """py-spy recording each of `targets` (name: pid) into `out_dir`/name.txt."""
    flags = ["--format", "raw", "--function", "--full-filenames", "--rate", str(args.rate)]
    if args.nonblocking:
        flags.append("--nonblocking")
    if not args.all_threads:
        flags.append("--gil")
    spies = {name: await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "-o", str(out_dir / f"{name}.txt"), *flags,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        for name, pid in targets.items()}
    await asyncio.sleep(1.0)  # let py-spy attach
    return spies


async def _stop_spies(spies: dict[str, Any], out_dir: Path) -> None:
    errors = {}
    for name, spy in spies.items():
        if spy.returncode is None:
            spy.send_signal(signal.SIGINT)
        _, err = await spy.communicate()
        if not (out_dir / f"{name}.txt").exists():
            errors[name] = err.decode(errors="replace").strip().splitlines()[-1:]
    if errors:
        print(f"py-spy wrote nothing for {errors}")


async def _profiled_round(http: Any, deps: Any, count: int, named: dict[int, str],
                          procs: list[Any], args: argparse.Namespace, py_spy: str,
                          out_dir: Path) -> None:
    targets = {"api": os.getpid(), **{f"worker{i + 1}": p.pid for i, p in enumerate(procs)}}
    spies = await _start_spies(targets, args, py_spy, out_dir)
    print(f"\n== profiled round: {_spy_flags(args)} on the API process and each worker ==")
    try:
        r = await _round(http, deps, count, named, args.workers, args.concurrency, None)
    finally:
        await _stop_spies(spies, out_dir)
    worker_stacks = _stacks(out_dir, "worker", len(procs))
    worker_cpu = sum(v for k, v in r.items() if k.startswith("worker "))
    print_profile(f"workers ({len(procs)}, merged)", worker_stacks, args.top, args.rate, worker_cpu)
    if (out_dir / "api.txt").exists():
        api_stacks = parse_raw(out_dir / "api.txt")
        print_profile("bench process (API + load generator)", api_stacks, args.top, args.rate,
                      r.get("bench process (API + load generator)"))
        split_bench(api_stacks)
    print(f"\nraw py-spy stacks in {out_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", default="200,30",
                        help="task counts, one measured round each; the first is also the "
                             "profiled round's")
    parser.add_argument("--concurrency", type=int, default=64, help="tasks at once per worker")
    parser.add_argument("--latency", type=float, default=1.0)
    add_tokens_option(parser)
    parser.add_argument("--warmup", type=int, default=20, help="tasks run first, not counted")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="seconds of idle measurement before the rounds (0: none)")
    parser.add_argument("--py-spy", dest="py_spy", default=shutil.which("py-spy"))
    parser.add_argument("--no-py-spy", dest="py_spy", action="store_const", const=None)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--nonblocking", action="store_true",
                        help="py-spy reads stacks without pausing the process: cheaper, but "
                             "some stacks are torn (on this machine it put 5 %% of a worker's "
                             "samples in a 6 us `span()` call)")
    parser.add_argument("--all-threads", action="store_true",
                        help="py-spy samples every thread it sees running, not only the one "
                             "holding the GIL (counts threads waiting for a core too)")
    add_anchor_option(parser)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--keep", type=Path, help="directory to keep py-spy's raw stacks in")
    parser.add_argument("--serve-model", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_model:
        asyncio.run(_serve_model(args.latency, args.tokens))
        return
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp, \
            bench_stack(Path(tmp), args.concurrency) as (settings, env):
        out_dir = args.keep or Path(tmp) / "py-spy"
        out_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(_bench(args, settings, env, args.py_spy, out_dir))


if __name__ == "__main__":
    main()
