"""Per-step orchestration overhead of Cadre's agent loop — graph, Postgres checkpoint writes
(durability "sync"), agent_logs, ledger and window mirroring — with model and tool time taken
out (a scripted model answers instantly, tools return at once). The same 5 tool steps run
through LangGraph's prebuilt `create_react_agent` on the same Postgres checkpointer, as the
floor. Prints p50/p99 per step, the ratio, and checkpoint bytes per task. Cadre runs three
ways, interleaved run by run: tracing off, tracing to an in-memory exporter, and tracing
exported over OTLP/HTTP (batched, to a receiver in another process); the added cost of each
against tracing off is printed. Asserts nothing.

    .venv/bin/python bench/loop_overhead.py [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from langchain_core.tools import tool as lc_tool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import migrate
from app.deps import keep_session
from app.stack.ephemeral import ephemeral_services
from app.stack.ports import free_port
from app.store import StepStore
from graph import GraphDeps, compile_graph, postgres_checkpointer, task_input
from graph.run import start
from graph.testing import ScriptedModel, call, plan, reply, verdict
from guardrails import DefaultPolicy
from tools import Ledger, ToolContext, Toolset

STEPS = 5


def _toolset() -> Toolset:
    toolset = Toolset()

    @toolset.tool(risk="read_only")
    async def add(ctx: ToolContext, a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return toolset


@lc_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _checkpoint_bytes(db: asyncpg.Pool, thread_id: str) -> int:
    total = 0
    for table, column in (("checkpoints", "checkpoint"), ("checkpoint_blobs", "blob"),
                          ("checkpoint_writes", "blob")):
        total += await db.fetchval(
            f"SELECT coalesce(sum(pg_column_size({column}) + pg_column_size(metadata)), 0) "
            f"FROM {table} WHERE thread_id = $1" if table == "checkpoints" else
            f"SELECT coalesce(sum(pg_column_size({column})), 0) FROM {table} WHERE thread_id = $1",
            thread_id)
    return int(total)


_RECEIVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _tracers(otlp_port: int) -> dict[str, tuple[Any, Any]]:
    """Tracing off, to memory, and over OTLP: (tracer, provider) each."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NoOpTracer

    memory = TracerProvider()
    memory.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    otlp = TracerProvider()
    otlp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{otlp_port}/v1/traces", timeout=5)))
    return {"off": (NoOpTracer(), None), "in-memory exporter": (memory.get_tracer("cadre.graph"), memory),
            "OTLP/HTTP export": (otlp.get_tracer("cadre.graph"), otlp)}


async def _bench(url: str, redis_url: str, runs: int, port: int) -> None:
    # The floor is LangGraph's own prebuilt loop, deprecated in favour of langchain.agents.
    warnings.filterwarnings("ignore", message="create_react_agent has been moved")
    from langgraph.prebuilt import create_react_agent

    from graph import tracing

    modes = _tracers(port)
    by_mode: dict[str, list[float]] = {name: [] for name in modes}
    db = await asyncpg.create_pool(url, min_size=1, max_size=4, reset=keep_session)
    rds = aioredis.Redis.from_url(redis_url)
    user = await db.fetchval("INSERT INTO users (email) VALUES ('bench@example.com') RETURNING id")
    cadre_times: list[float] = []
    react_times: list[float] = []
    cadre_bytes: list[int] = []
    react_bytes: list[int] = []
    async with postgres_checkpointer(url) as saver:
        graph = compile_graph(saver)
        for i in range(runs + 5):  # the first 5 warm caches and are not counted
            for mode, (tracer, _) in modes.items():
                tracing.TRACER = tracer
                conv = str(await db.fetchval(
                    "INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user))
                task = str(await db.fetchval(
                    "INSERT INTO tasks (user_id, conversation_id, input) "
                    "VALUES ($1, $2::uuid, 'sum') RETURNING id", user, conv))
                model = ScriptedModel().add(plan(*[f"add {n}" for n in range(STEPS)]),
                                            *[call("add", {"a": n, "b": 1}) for n in range(STEPS)],
                                            reply("done"), verdict(True))
                deps = GraphDeps(model=model, toolset=_toolset(), policy=DefaultPolicy(),
                                 ledger=Ledger(db), recorder=StepStore(db), redis=rds)
                began = time.perf_counter()
                result = await start(graph, deps, thread_id=conv,
                                     input=task_input(task_id=task, text="sum things"))
                elapsed = time.perf_counter() - began
                assert result.status == "SUCCEEDED", result
                if i >= 5:
                    by_mode[mode].append(elapsed / STEPS)
                    if mode == "off":
                        cadre_times.append(elapsed / STEPS)
                        cadre_bytes.append(await _checkpoint_bytes(db, conv))

            react_model = ScriptedModel().add(*[call("add", {"a": n, "b": 1}) for n in range(STEPS)],
                                              reply("done"))
            agent = create_react_agent(react_model, [add], checkpointer=saver)
            thread = f"react-{uuid.uuid4()}"
            began = time.perf_counter()
            await agent.ainvoke({"messages": [("user", "sum things")]},
                                {"configurable": {"thread_id": thread}}, durability="sync")
            elapsed = time.perf_counter() - began
            if i >= 5:
                react_times.append(elapsed / STEPS)
                react_bytes.append(await _checkpoint_bytes(db, thread))
    await rds.aclose()
    await db.close()
    for _, provider in modes.values():
        if provider is not None:
            provider.shutdown()

    def row(name: str, values: list[float]) -> str:
        return (f"{name:<34}{statistics.median(values) * 1000:>9.2f}"
                f"{_percentile(values, 0.99) * 1000:>9.2f}")

    print(f"agent-loop overhead per tool step, {STEPS}-step task, {runs} runs "
          "(model and tool time excluded; Postgres checkpointer, durability sync)")
    print(f"{'':<34}{'p50 ms':>9}{'p99 ms':>9}")
    print(row("Cadre graph", cadre_times))
    print(row("create_react_agent (floor)", react_times))
    print(f"ratio p50: {statistics.median(cadre_times) / statistics.median(react_times):.2f}x "
          "(Cadre also writes agent_logs, the tool ledger, the Redis window and verifies)")
    off = statistics.median(by_mode["off"])
    print(f"tracing (Cadre graph, same runs interleaved){'':<0}")
    for mode, values in by_mode.items():
        added = (statistics.median(values) / off - 1) * 100
        print(row(f"  tracing {mode}", values) + ("" if mode == "off" else f"   {added:+.1f} %"))
    print("  target: tracing on adds at most 5 %")
    print(f"checkpoint bytes per task: Cadre {statistics.median(cadre_bytes) / 1024:.1f} KiB, "
          f"create_react_agent {statistics.median(react_bytes) / 1024:.1f} KiB "
          "(seed estimate: 50 KB per task)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp, \
            ephemeral_services(Path(tmp), sqs=False) as running:
        migrate.upgrade(running.postgres.url)
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER, str(port)])
        try:
            asyncio.run(_bench(running.postgres.url, running.redis_url, args.runs, port))
        finally:
            receiver.terminate()

if __name__ == "__main__":
    main()
