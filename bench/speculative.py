"""Speculative and parallel tool execution on a tool-heavy workload: each task searches,
fetches the top two results, runs Python on them and answers, against a scripted model that
takes 1 s per call and loopback tools that take 0.3-2 s (an HTTP server on this machine that
waits before answering). The same tasks run three ways, interleaved task by task: one call
at a time and no speculation (the old loop), parallel calls only, and parallel calls with
speculation. Prints the median and p90 time to result of each, the change against the old
loop, speculation's hits, wasted calls and time saved, and whether every task's answer and
every tool result the model saw were the same in all three. Asserts nothing.

    .venv/bin/python bench/speculative.py [--tasks 24] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis.asyncio as aioredis
from langchain_core.messages import ToolMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import migrate
from app.stack.ephemeral import ephemeral_services
from app.store import StepStore
from graph import GraphDeps, compile_graph, postgres_checkpointer, task_input
from graph.run import start
from graph.speculation import METRICS, Speculator
from graph.testing import ScriptedModel, call, calls, plan, reply, serving, verdict
from guardrails import DefaultPolicy
from tools import Ledger, ToolContext, Toolset

MODEL_SECONDS = 1.0
SEARCH_SECONDS = 0.6
FETCH_SECONDS = (2.0, 1.2)
PYTHON_SECONDS = 0.3
MODES = ("sequential", "parallel", "parallel+speculation")


async def _service(request: Request) -> JSONResponse:
    """The loopback tool backend: waits `delay` seconds, then answers."""
    await asyncio.sleep(float(request.query_params["delay"]))
    return JSONResponse({"kind": request.path_params["kind"],
                         "about": request.query_params.get("about", "")})


def _toolset(base: str, http: httpx.AsyncClient) -> Toolset:
    toolset = Toolset()

    @toolset.tool(risk="read_only", timeout=30)
    async def search(ctx: ToolContext, query: str, limit: int = 5) -> dict[str, Any]:
        """Search the web."""
        await http.get(f"{base}/search", params={"delay": SEARCH_SECONDS, "about": query})
        slug = query.replace(" ", "-")
        return {"results": [{"title": f"{query} {n}", "url": f"https://example.org/{slug}/{n}"}
                            for n in range(1, 4)]}

    @toolset.tool(risk="read_only", timeout=30)
    async def fetch_url(ctx: ToolContext, url: str) -> dict[str, Any]:
        """Read a web page."""
        delay = FETCH_SECONDS[0] if url.endswith("/1") else FETCH_SECONDS[1]
        await http.get(f"{base}/fetch", params={"delay": delay, "about": url})
        return {"url": url, "text": f"the page at {url} says {len(url)}"}

    @toolset.tool(risk="read_only", timeout=30)
    async def python(ctx: ToolContext, code: str) -> dict[str, Any]:
        """Run Python."""
        await http.get(f"{base}/python", params={"delay": PYTHON_SECONDS})
        return {"stdout": str(len(code))}

    return toolset


def _script(topic: str) -> list[Any]:
    slug = topic.replace(" ", "-")
    return [
        plan(f"Search for {topic}", "Read the top two results", "Compute the figure", "Answer"),
        call("search", {"query": topic}),
        calls(("fetch_url", {"url": f"https://example.org/{slug}/1"}, None),
              ("fetch_url", {"url": f"https://example.org/{slug}/2"}, None)),
        call("python", {"code": f"print(len('{topic}'))"}),
        reply(f"{topic}: {len(topic)}."),
        verdict(True),
    ]


async def _task(db: asyncpg.Pool, rds: aioredis.Redis, graph: Any, user: Any, toolset: Toolset,
                topic: str, mode: str) -> tuple[float, str, list[str]]:
    conv = str(await db.fetchval(
        "INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user))
    text = f"Search for {topic}. Then read the top two results and compute the figure."
    task = str(await db.fetchval(
        "INSERT INTO tasks (user_id, conversation_id, input) VALUES ($1, $2::uuid, $3) "
        "RETURNING id", user, conv, text))
    model = ScriptedModel(latency=MODEL_SECONDS).add(*_script(topic))
    speculator = Speculator(toolset=toolset, policy=DefaultPolicy(), db=db, redis=rds) \
        if mode == "parallel+speculation" else None
    deps = GraphDeps(model=model, toolset=toolset, policy=DefaultPolicy(), ledger=Ledger(db),
                     recorder=StepStore(db), redis=rds,
                     parallel_tools=1 if mode == "sequential" else 4, speculator=speculator)
    began = time.perf_counter()
    result = await start(graph, deps, thread_id=conv, input=task_input(task_id=task, text=text))
    elapsed = time.perf_counter() - began
    assert result.status == "SUCCEEDED", result
    seen = [str(m.content) for c in model.calls for m in c.messages if isinstance(m, ToolMessage)]
    return elapsed, str(result.final_answer), seen


async def _bench(url: str, redis_url: str, tasks: int, concurrency: int) -> None:
    db = await asyncpg.create_pool(url, min_size=2, max_size=concurrency * 3 + 4)
    rds = aioredis.Redis.from_url(redis_url)
    user = await db.fetchval("INSERT INTO users (email) VALUES ('bench@example.com') RETURNING id")
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    answers: dict[str, dict[str, tuple[str, list[str]]]] = {mode: {} for mode in MODES}
    app = Starlette(routes=[Route("/{kind}", _service)])
    limits = httpx.Limits(max_connections=concurrency * 4)
    async with serving(app) as port, httpx.AsyncClient(limits=limits, timeout=30) as http, \
            postgres_checkpointer(url, pool_size=concurrency * 2) as saver:
        toolset = _toolset(f"http://127.0.0.1:{port}", http)
        graph = compile_graph(saver)
        gate = asyncio.Semaphore(concurrency)

        async def one(topic: str, mode: str) -> None:
            async with gate:
                elapsed, answer, seen = await _task(db, rds, graph, user, toolset, topic, mode)
            times[mode].append(elapsed)
            answers[mode][topic] = (answer, seen)

        topics = [f"topic {n}" for n in range(tasks)]
        # Warm-up, not counted: connections, caches, the first checkpoints.
        await one("warm up", "sequential")
        times["sequential"].clear()
        answers["sequential"].clear()
        await rds.delete(METRICS)
        await asyncio.gather(*(one(topic, mode) for topic in topics for mode in MODES))
    counted = Counter({k.decode(): int(v) for k, v in (await rds.hgetall(METRICS)).items()})
    await rds.aclose()
    await db.close()

    base = statistics.median(times["sequential"])
    print(f"speculative and parallel tool calls: {tasks} tasks per mode, {concurrency} at a time; "
          f"model {MODEL_SECONDS:.1f} s a call, search {SEARCH_SECONDS} s, fetch "
          f"{FETCH_SECONDS[0]}/{FETCH_SECONDS[1]} s, python {PYTHON_SECONDS} s")
    print(f"{'mode':<24}{'p50 s':>8}{'p90 s':>8}{'vs sequential':>15}")
    for mode in MODES:
        values = sorted(times[mode])
        p50 = statistics.median(values)
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        change = "" if mode == "sequential" else f"{(p50 / base - 1) * 100:+.1f} %"
        print(f"{mode:<24}{p50:>8.2f}{p90:>8.2f}{change:>15}")
    started = sum(v for k, v in counted.items() if k.endswith("|started"))
    hits = sum(v for k, v in counted.items() if k.endswith("|hit"))
    wasted = sum(v for k, v in counted.items() if k.endswith("|wasted"))
    print(f"speculation: {started} calls started ahead, {hits} used (hit rate "
          f"{hits / max(1, started) * 100:.0f} %), {wasted} wasted, "
          f"{counted['saved_ms'] / 1000:.1f} s of tool time done before it was asked for")
    by_source = ", ".join(f"{k} {v}" for k, v in sorted(counted.items()) if k != "saved_ms")
    print(f"  by source: {by_source}")
    same = all(answers[mode] == answers["sequential"] for mode in MODES)
    changed = sum(got != answers["sequential"].get(topic) for mode in MODES
                  for topic, got in answers[mode].items())
    print(f"answers and tool results seen by the model identical in all modes: "
          f"{'yes' if same else f'NO ({changed} tasks differ)'}")
    print("goal: parallel+speculation at least 30 % lower p50 with no changed answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp, \
            ephemeral_services(Path(tmp), sqs=False) as running:
        migrate.upgrade(running.postgres.url)
        asyncio.run(_bench(running.postgres.url, running.redis_url, args.tasks, args.concurrency))


if __name__ == "__main__":
    main()
