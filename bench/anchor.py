"""The anchor for the throughput benchmarks: LangGraph's prebuilt `create_react_agent` doing
a task of the same three model calls (a tool call, another, then the answer) against the same
fake model, on Cadre's Postgres checkpointer (`durability="sync"`, as Cadre runs), in
`processes` processes of `concurrency` tasks at once each: what the chosen stack costs with
none of Cadre (no API, queue, leases, records, events, window or checks). Its calls are
answered whole; Cadre streams its answer's call (docs/performance.md, "Fifth pass").

`bench/throughput.py` and `bench/cpu_profile.py` run it after their own rounds, in the same
run, against the same Postgres and fake model. This file is also the anchor's process:

    .venv/bin/python bench/anchor.py --database-url URL --model-url URL --tasks N
                                     [--concurrency 64] [--label L]

which opens its pool, warms up, prints `ready`, waits for a line on stdin, runs its tasks,
prints one JSON line (when it began and ended, wall clock, and each task's duration) and
exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graph import make_chat_model, postgres_checkpointer  # noqa: E402
from graph.llm import ModelConfig  # noqa: E402
from graph.testing import FakeResponse, completion  # noqa: E402

TOOL = "anchor_lookup"
WARMUP = 4


def anchor_answer(body: dict[str, Any], latency: float, pieces: int,
                  answer: str) -> FakeResponse | None:
    """The fake model's answer to an anchor request (one that offers `TOOL`), else None: a
    call of the tool while the conversation has fewer than two tool results, then `answer`."""
    if not any(t.get("function", {}).get("name") == TOOL for t in body.get("tools") or ()):
        return None
    results = sum(1 for m in body.get("messages", ()) if m.get("role") == "tool")
    if results < 2:
        return FakeResponse(body=completion(tool_calls=[(TOOL, json.dumps({"n": results}))]),
                            delay=latency, pieces=pieces)
    return FakeResponse(body=completion(answer), delay=latency, pieces=pieces)


async def _run(database_url: str, model_url: str, tasks: int, concurrency: int,
               label: str) -> dict[str, Any]:
    # The prebuilt loop is deprecated in favour of langchain.agents; it is still LangGraph's.
    warnings.filterwarnings("ignore", message="create_react_agent has been moved")
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    @tool(TOOL)
    async def lookup(n: int) -> str:
        """Look a number up."""
        return f"value {n}"

    model = make_chat_model(ModelConfig(model="fake", base_url=model_url))
    async with postgres_checkpointer(database_url) as saver:
        agent = create_react_agent(model, [lookup], checkpointer=saver)
        slots = asyncio.Semaphore(concurrency)
        durations: list[float] = []

        async def one(n: int, keep: bool) -> None:
            async with slots:
                began = time.time()
                async for _ in agent.astream(
                        {"messages": [("user", f"{label} task {n}")]},
                        {"configurable": {"thread_id": f"anchor-{uuid.uuid4()}"}},
                        stream_mode="updates", durability="sync"):
                    pass
                if keep:
                    durations.append(round(time.time() - began, 4))

        await asyncio.gather(*(one(n, False) for n in range(WARMUP)))
        print("ready", flush=True)
        if not await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline):
            return {}  # the parent went away
        began = time.time()
        await asyncio.gather(*(one(n, True) for n in range(tasks)))
        return {"began": began, "ended": time.time(), "durations": durations}


async def _serve(args: argparse.Namespace) -> None:
    result = await _run(args.database_url, args.model_url, args.tasks, args.concurrency,
                        args.label)
    if not result:
        return
    print(json.dumps(result), flush=True)
    # Stay until told, so that the parent can read this process's CPU time after the round.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# A child's result line holds every task's duration: far above asyncio's 64 KiB line limit
# for a few thousand tasks.
_LINE_LIMIT = 1 << 24
_START_SECONDS = 120
_STOP_SECONDS = 10


class Anchor:
    """`processes` anchor processes, started and warmed up (`start`, or `running` to have
    them ended whatever happens); `run()` starts their tasks at once and waits for them.
    `pids` are for CPU accounting."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @classmethod
    async def start(cls, database_url: str, model_url: str, processes: int, tasks: int,
                    concurrency: int, label: str) -> Anchor:
        share = [tasks // processes + (1 if i < tasks % processes else 0)
                 for i in range(processes)]
        anchor = cls()
        try:
            for i, n in enumerate(share):
                anchor.procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--database-url", database_url,
                    "--model-url", model_url, "--tasks", str(n), "--concurrency",
                    str(concurrency), "--label", f"{label} {i}", stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, cwd=ROOT, limit=_LINE_LIMIT))
            await asyncio.wait_for(asyncio.gather(*(_ready(p) for p in anchor.procs)),
                                   _START_SECONDS)
        except BaseException:
            await anchor.close()
            raise
        return anchor

    async def run(self) -> dict[str, float]:
        """tasks/s (all tasks over the first begin to the last end) and task p50; the
        processes stay until `close()`."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        results = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"an anchor process exited {await proc.wait()} mid-round")
            results.append(json.loads(line))
        durations = [d for r in results for d in r["durations"]]
        wall = max(r["ended"] for r in results) - min(r["began"] for r in results)
        return {"tasks_per_s": len(durations) / wall, "wall": wall,
                "duration_p50": statistics.median(durations)}

    async def close(self) -> None:
        """End the processes: each exits when its stdin closes, or is killed after a grace
        period (one still in its round, after another failed)."""
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), _STOP_SECONDS)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    @classmethod
    @asynccontextmanager
    async def running(cls, database_url: str, model_url: str, processes: int, tasks: int,
                      concurrency: int, label: str) -> AsyncIterator[Anchor]:
        anchor = await cls.start(database_url, model_url, processes, tasks, concurrency, label)
        try:
            yield anchor
        finally:
            await anchor.close()


async def _ready(proc: asyncio.subprocess.Process) -> None:
    """Until the process says `ready`; anything else it prints first goes to stderr."""
    assert proc.stdout is not None
    while (line := await proc.stdout.readline()).strip() != b"ready":
        if not line:
            raise RuntimeError(f"an anchor process exited {await proc.wait()} while starting")
        sys.stderr.write(f"anchor: {line.decode(errors='replace')}")


def add_anchor_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-anchor", dest="anchor", action="store_false",
                        help="skip the anchor: the same tasks through LangGraph's prebuilt agent "
                             "(bench/anchor.py)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--model-url", required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--label", default="anchor")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
