"""How a conversation's cost grows with its length: 50 tasks, one after another, in one
conversation (one LangGraph thread on the Postgres checkpointer), each a plan, one tool
call and an answer from a scripted model that answers instantly. For task 1, 10, 25 and 50:
checkpoint bytes the task added to Postgres, the model window it sent (messages and
estimated tokens), the bytes it sent to Redis (the window mirror), and its orchestration time
per step. The goal (the performance issue)
is flat; this prints where it stands. Asserts nothing.

With `--output-chars N` the tool returns a page of N characters instead of a sum, and the
run is made once per `--inline-chars` value (default: 0, every result in the checkpoints,
then 4000, the default of CADRE_OUTPUT_INLINE_CHARS): the checkpoints' bytes side by side
with those of the results stored apart (`tool_outputs`, graph/outputs.py).

    .venv/bin/python bench/conversation.py [--tasks 50] [--output-chars 16000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import migrate
from app.deps import keep_session
from app.stack.ephemeral import ephemeral_services
from app.store import StepStore
from bench.loop_overhead import _checkpoint_bytes, _toolset
from graph import GraphDeps, compile_graph, postgres_checkpointer, task_input
from graph.outputs import OutputStore
from graph.run import start
from graph.state import MESSAGES_SNAPSHOT_EVERY
from graph.testing import ScriptedModel, call, plan, reply, verdict
from graph.window import estimate_tokens
from guardrails import DefaultPolicy
from tools import Ledger, ToolContext, Toolset

REPORTED = (1, 10, 25, 50)


async def _redis_received(redis: aioredis.Redis) -> int:
    """Bytes Redis has received from its clients: here the window mirror's writes (and these
    INFO calls, a few dozen bytes each)."""
    return int((await redis.info("stats"))["total_net_input_bytes"])


def _pages() -> Toolset:
    toolset = Toolset()

    @toolset.tool(risk="read_only")
    async def read_page(ctx: ToolContext, number: int, chars: int) -> str:
        """Read a page of the handbook."""
        # Text that compresses about as little as a real page does, new for every page.
        return "".join(random.Random(number).choices(string.ascii_letters + " \n", k=chars))

    return toolset


async def _stored_bytes(db: asyncpg.Pool) -> int:
    return int(await db.fetchval(
        "SELECT coalesce(sum(pg_column_size(content)), 0) FROM tool_outputs"))


async def _bench(url: str, redis_url: str, tasks: int, *, output_chars: int = 0,
                 inline_chars: int = 0) -> None:
    db = await asyncpg.create_pool(url, min_size=1, max_size=4, reset=keep_session)
    rds = aioredis.Redis.from_url(redis_url)
    user = await db.fetchval("INSERT INTO users (email) VALUES ('bench@example.com') "
                             "ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING id")
    conv = str(await db.fetchval(
        "INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user))
    outputs = OutputStore(db, inline_chars=inline_chars) if inline_chars else None
    rows: list[tuple[int, int, int, int, float, int, int]] = []
    async with postgres_checkpointer(url) as saver:
        graph = compile_graph(saver)
        before, stored_before = 0, await _stored_bytes(db)
        for n in range(1, tasks + 1):
            text = f"read page {n}" if output_chars else f"add {n} and 1"
            task = str(await db.fetchval(
                "INSERT INTO tasks (user_id, conversation_id, input) VALUES ($1, $2::uuid, $3) "
                "RETURNING id", user, conv, text))
            asked = call("read_page", {"number": n, "chars": output_chars}) if output_chars \
                else call("add", {"a": n, "b": 1})
            model = ScriptedModel().add(plan(text), asked, reply(f"{n + 1}"), verdict(True))
            deps = GraphDeps(model=model, toolset=_pages() if output_chars else _toolset(),
                             policy=DefaultPolicy(), ledger=Ledger(db), recorder=StepStore(db),
                             redis=rds, outputs=outputs)
            received = await _redis_received(rds)
            began = time.perf_counter()
            result = await start(graph, deps, thread_id=conv,
                                 input=task_input(task_id=task, text=text))
            elapsed = time.perf_counter() - began
            received = await _redis_received(rds) - received
            assert result.status == "SUCCEEDED", result
            total, stored = await _checkpoint_bytes(db, conv), await _stored_bytes(db)
            window = model.calls[1].messages  # what the act call sent
            steps = await db.fetchval("SELECT count(*) FROM agent_logs WHERE task_id = $1::uuid",
                                      task)
            rows.append((n, total - before, len(window), estimate_tokens(window),
                         elapsed / max(1, steps), received, stored - stored_before))
            before, stored_before = total, stored
    await rds.aclose()
    await db.close()

    print(f"one conversation, {tasks} tasks in a row (Postgres checkpointer, durability sync; "
          "model and tool time excluded)")
    if output_chars:
        print(f"each task's tool returns {output_chars:,} characters; "
              + (f"results over {inline_chars:,} characters stored apart (tool_outputs)"
                 if inline_chars else "every result kept in the checkpoints"))
    print("the task's own figures, then over the ten tasks up to it (a full copy of the messages "
          f"is written every {MESSAGES_SNAPSHOT_EVERY} additions: amortised there)")
    print(f"{'task':>5}{'KiB added':>11}{'mean KiB, 10':>14}{'stored KiB':>12}"
          f"{'window messages':>17}{'window tokens':>15}{'Redis KiB':>11}{'ms per step':>13}"
          f"{'median ms, 10':>15}")
    for n, added, messages, tokens, per_step, to_redis, stored in rows:
        if n in REPORTED or n == tasks:
            recent = rows[max(0, n - 10):n]
            print(f"{n:>5}{added / 1024:>11.1f}"
                  f"{statistics.mean(r[1] for r in recent) / 1024:>14.1f}{stored / 1024:>12.1f}"
                  f"{messages:>17}{tokens:>15}{to_redis / 1024:>11.1f}{per_step * 1000:>13.2f}"
                  f"{statistics.median(r[4] for r in recent) * 1000:>15.2f}")
    print(f"all {tasks} tasks: checkpoints {sum(r[1] for r in rows) / 1024:.1f} KiB, "
          f"stored apart {sum(r[6] for r in rows) / 1024:.1f} KiB")
    first, last = rows[0], rows[-1]
    tail = rows[-10:]
    print(f"task {last[0]} vs task 1: checkpoint bytes x{last[1] / first[1]:.2f}, "
          f"step time x{last[4] / first[4]:.2f}; the last ten tasks' mean bytes "
          f"x{statistics.mean(r[1] for r in tail) / first[1]:.2f}; median step "
          f"{statistics.median(r[4] for r in rows) * 1000:.2f} ms; goal: flat")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--output-chars", type=int, default=0,
                        help="the tool returns a page of this many characters (0: a sum)")
    parser.add_argument("--inline-chars", default="0,4000",
                        help="with --output-chars: one run per value, comma-separated "
                             "(0: every result in the checkpoints)")
    args = parser.parse_args()
    inline = [int(v) for v in args.inline_chars.split(",")] if args.output_chars else [0]
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp, \
            ephemeral_services(Path(tmp), sqs=False) as running:
        migrate.upgrade(running.postgres.url)
        for i, chars in enumerate(inline):
            if i:
                print()
            asyncio.run(_bench(running.postgres.url, running.redis_url, args.tasks,
                               output_chars=args.output_chars, inline_chars=chars))


if __name__ == "__main__":
    main()
