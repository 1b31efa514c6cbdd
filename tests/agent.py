"""A harness that runs the real graph on the real checkpointer with a scripted model and a
small toolset whose side effects are counted at the receiving end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from app.store import StepStore, task_steps
from graph import ApprovalDecision, GraphDeps, compile_graph, postgres_checkpointer, task_input
from graph.agents import Team
from graph.builder import AgentGraph
from graph.outputs import OutputStore
from graph.run import RunResult, proceed, resume, start
from graph.steps import Step
from graph.testing import ScriptedModel
from guardrails import DefaultPolicy
from tools import Ledger, ToolContext, ToolError, Toolset

PRICES = {"apple": 1.25, "pear": 2.0}


@dataclass
class Outbox:
    """The receiving end of the `send_report` side effect."""

    sent: list[dict[str, str]] = field(default_factory=list)
    slow: asyncio.Event = field(default_factory=asyncio.Event)
    # Every price lookup that ran, by its idempotency key (a replayed one does not run).
    looked_up: list[str] = field(default_factory=list)


def make_toolset(outbox: Outbox) -> Toolset:
    toolset = Toolset()

    @toolset.tool(risk="read_only", timeout=5, live_data=False)
    async def lookup_price(ctx: ToolContext, item: str) -> dict[str, Any]:
        """Look up the unit price of a fruit in euros."""
        outbox.looked_up.append(ctx.idempotency_key)
        if item not in PRICES:
            raise ToolError(f"no price for {item!r}; known items: {', '.join(PRICES)}")
        return {"item": item, "price_eur": PRICES[item]}

    @toolset.tool(risk="read_only", timeout=5, live_data=False)
    async def multiply(ctx: ToolContext, a: float, b: float) -> float:
        """Multiply two numbers."""
        return a * b

    @toolset.tool(risk="side_effect", timeout=30)
    async def send_report(ctx: ToolContext, to: str, body: str) -> str:
        """Send a short report to a recipient."""
        outbox.sent.append({"to": to, "body": body, "key": ctx.idempotency_key})
        return f"sent to {to}"

    @toolset.tool(risk="read_only", timeout=30)
    async def wait_a_while(ctx: ToolContext, seconds: float) -> str:
        """Wait for a number of seconds (a slow read-only step)."""
        outbox.slow.set()
        await asyncio.sleep(seconds)
        return "waited"

    @toolset.tool(risk="destructive", timeout=5)
    async def drop_everything(ctx: ToolContext) -> str:
        """Delete all data."""
        raise AssertionError("the default policy must never let this run")

    return toolset


@dataclass
class Agent:
    db: asyncpg.Pool
    database_url: str
    redis: aioredis.Redis
    model: ScriptedModel
    outbox: Outbox
    graph: AgentGraph
    user_id: str
    conversation_id: str
    task_id: str = ""
    # The worker agents of team tasks (`mode="team"`).
    team: Team | None = None
    # Large tool results, kept out of the checkpoints as a worker keeps them.
    outputs: OutputStore | None = None

    def deps(self, model: ScriptedModel | None = None) -> GraphDeps:
        return GraphDeps(model=model or self.model, toolset=make_toolset(self.outbox),
                         policy=DefaultPolicy(), ledger=Ledger(self.db),
                         recorder=StepStore(self.db), redis=self.redis,
                         context_tokens=4_000, team=self.team, outputs=self.outputs)

    async def new_task(self, text: str) -> str:
        self.task_id = str(await self.db.fetchval(
            "INSERT INTO tasks (user_id, conversation_id, input) VALUES ($1::uuid, $2::uuid, $3) "
            "RETURNING id", self.user_id, self.conversation_id, text))
        return self.task_id

    async def start(self, text: str, **limits: Any) -> RunResult:
        task_id = await self.new_task(text)
        return await start(self.graph, self.deps(), thread_id=self.conversation_id,
                           input=task_input(task_id=task_id, text=text, **limits))

    async def resume(self, decision: str, comment: str = "") -> RunResult:
        return await resume(self.graph, self.deps(), thread_id=self.conversation_id,
                            decision=ApprovalDecision(decision=decision,  # type: ignore[arg-type]
                                                      comment=comment))

    async def proceed(self) -> RunResult:
        return await proceed(self.graph, self.deps(), thread_id=self.conversation_id)

    async def logs(self) -> list[asyncpg.Record]:
        return await self.db.fetch(
            "SELECT * FROM agent_logs WHERE task_id = $1::uuid ORDER BY id", self.task_id)

    async def steps(self) -> list[Step]:
        """The task's typed run record."""
        return (await task_steps(self.db, [self.task_id])).get(self.task_id, [])


@asynccontextmanager
async def agent_for(database_url: str, redis_url: str) -> AsyncIterator[Agent]:
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=5)
    client = aioredis.Redis.from_url(redis_url)
    try:
        user_id = str(await db.fetchval(
            "INSERT INTO users (email) VALUES ('agent-test@example.com') RETURNING id"))
        conversation_id = str(await db.fetchval(
            "INSERT INTO conversations (user_id) VALUES ($1::uuid) RETURNING id", user_id))
        async with postgres_checkpointer(database_url) as saver:
            yield Agent(db=db, database_url=database_url, redis=client, model=ScriptedModel(),
                        outbox=Outbox(), graph=compile_graph(saver), user_id=user_id,
                        conversation_id=conversation_id, outputs=OutputStore(db))
    finally:
        await client.aclose()
        await db.close()
