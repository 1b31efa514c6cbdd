"""A single agent against a team of agents on a task of independent sub-tasks (three by
default), with scripted models that take 1 s per call and a read-only tool that answers at
once: the model's latency is the whole cost.

- single agent: plan (one step per sub-task), then one act turn per sub-task, each calling
  `lookup` once, one after the other (what a single agent typically does with independent
  research sub-tasks; a model may also call them all in one turn, which this does not
  script), then the answer and the check: sub-tasks + 3 model calls, all in a row.
- team (`mode: "team"`): the manager's team plan gives each sub-task to a `researcher`
  worker; the workers run at once, each a tool call and an answer (2 calls), on their own
  scripted model (the profile's); then the manager's answer and the check: 2 sub-tasks + 3
  calls, but only 5 in a row whatever the number of sub-tasks.

Both run on the real graph, the Postgres checkpointer (durability "sync"), agent_logs and
ledger, on ephemeral services; each task on its own conversation. A warm-up run of each
(no latency) comes first and is not reported. Time to result is wall time around `start`;
model calls and tokens are the run's usage (`RunResult.usage`, and per agent
`RunResult.agents`). The scripted answers carry no token counts, so the tokens are Cadre's
own estimates from the prompts each call really sent. Prints the figures; asserts nothing.

    .venv/bin/python bench/team.py [--subtasks 3] [--latency 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from langchain_core.messages import AIMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import migrate
from app.stack.ephemeral import ephemeral_services
from app.store import StepStore
from graph import GraphDeps, compile_graph, postgres_checkpointer, task_input
from graph.agents import Team
from graph.builder import AgentGraph
from graph.run import RunResult, start
from graph.state import Usage
from graph.testing import ScriptedModel, call, plan, reply, team_plan, verdict
from guardrails import DefaultPolicy
from guardrails.agents import parse_agents
from tools import Ledger, ToolContext, Toolset

TOPICS = ("solar", "wind", "hydro", "geothermal", "nuclear", "biomass", "tidal", "coal")
FIGURES = {topic: 100 + 37 * i for i, topic in enumerate(TOPICS)}
PROFILES = '''version = 1

[[agents]]
name = "researcher"
description = "Looks up one figure with the lookup tool and reports it."
instructions = "Find the figure you are asked for with lookup, and report it with its source."
tools = ["lookup"]
model = "scripted-researcher"
'''
# Iterations are shared out among a team's workers: enough for every worker's two turns.
MAX_ITERATIONS = 40


def _toolset() -> Toolset:
    toolset = Toolset()

    @toolset.tool(risk="read_only", timeout=5, live_data=False)
    async def lookup(ctx: ToolContext[None], topic: str) -> str:
        """Look up the 2024 installed capacity of a kind of power plant, in GW."""
        return f"{topic}: {FIGURES.get(topic, 0)} GW installed in 2024 (source: bench table)"

    return toolset


def _subtask(topic: str) -> str:
    return f"Find the 2024 installed capacity of {topic} power."


def _found(topic: str) -> str:
    return f"{topic.capitalize()} power: {FIGURES[topic]} GW installed in 2024 (bench table)."


def _answer(topics: tuple[str, ...]) -> str:
    return "Installed capacity in 2024: " + "; ".join(
        f"{t} {FIGURES[t]} GW" for t in topics) + " (bench table)."


def _unmetered(*responses: AIMessage) -> list[AIMessage]:
    """The responses without token counts: Cadre then estimates each call's tokens from the
    prompt it sent and the answer it got (as for a server that reports no usage)."""
    return [r.model_copy(update={"usage_metadata": None}) for r in responses]


def _text(topics: tuple[str, ...]) -> str:
    return ("Find the 2024 installed capacity of each of these kinds of power: "
            + ", ".join(topics) + ". Give each figure with its source.")


@dataclass(frozen=True, kw_only=True)
class Measured:
    label: str
    seconds: float
    in_a_row: int  # model calls on the critical path
    result: RunResult


@dataclass(frozen=True, kw_only=True)
class Bench:
    db: asyncpg.Pool
    rds: aioredis.Redis
    graph: AgentGraph
    user: int

    async def _task(self, text: str) -> tuple[str, str]:
        conv = str(await self.db.fetchval(
            "INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", self.user))
        task = str(await self.db.fetchval(
            "INSERT INTO tasks (user_id, conversation_id, input) VALUES ($1, $2::uuid, $3) "
            "RETURNING id", self.user, conv, text))
        return conv, task

    def _deps(self, model: ScriptedModel, team: Team | None = None) -> GraphDeps:
        return GraphDeps(model=model, toolset=_toolset(), policy=DefaultPolicy(),
                         ledger=Ledger(self.db), recorder=StepStore(self.db), redis=self.rds,
                         team=team)

    async def _run(self, deps: GraphDeps, text: str, mode: str) -> tuple[float, RunResult]:
        conv, task = await self._task(text)
        began = time.monotonic()
        result = await start(self.graph, deps, thread_id=conv, input=task_input(
            task_id=task, text=text, mode=mode, max_iterations=MAX_ITERATIONS))
        return time.monotonic() - began, result

    async def single(self, topics: tuple[str, ...], latency: float) -> Measured:
        model = ScriptedModel(latency=latency).add(*_unmetered(
            plan(*(_subtask(t) for t in topics)),
            *(call("lookup", {"topic": t}) for t in topics),
            reply(_answer(topics)), verdict(True, "every figure, with its source")))
        seconds, result = await self._run(self._deps(model), _text(topics), "single")
        model.assert_done()
        return Measured(label="single agent", seconds=seconds, in_a_row=len(topics) + 3,
                        result=result)

    async def team(self, topics: tuple[str, ...], latency: float) -> Measured:
        manager = ScriptedModel(latency=latency).add(*_unmetered(
            team_plan(*((_subtask(t), "researcher", []) for t in topics)),
            reply(_answer(topics)), verdict(True, "every figure, with its source")))
        researcher = ScriptedModel(latency=latency, model_name="scripted-researcher")
        for t in topics:
            # Keyed by sub-task: the workers run at once, each gets its own answers.
            researcher.add_for(_subtask(t), *_unmetered(call("lookup", {"topic": t}),
                                                        reply(_found(t))))
        team = Team(profiles=parse_agents(PROFILES, known_tools=_toolset().tools),
                    models={"researcher": researcher})
        seconds, result = await self._run(self._deps(manager, team), _text(topics), "team")
        manager.assert_done()
        researcher.assert_done()
        return Measured(label="team", seconds=seconds, in_a_row=5, result=result)


def _row(label: str, seconds: str, usage: Usage, in_a_row: str, status: str) -> str:
    return (f"{label:<24}{seconds:>9}{usage['model_calls']:>8}{in_a_row:>10}"
            f"{usage['tokens_in']:>11}{usage['tokens_out']:>12}  {status}").rstrip()


def _report(runs: list[Measured], subtasks: int, latency: float) -> None:
    print(f"{subtasks} independent sub-tasks, {latency:g} s per model call, instant read-only "
          "tool (Postgres checkpointer, durability sync)")
    print(f"{'':<24}{'time (s)':>9}{'calls':>8}{'in a row':>10}{'tokens in':>11}"
          f"{'tokens out':>12}  status")
    for m in runs:
        r = m.result
        print(_row(m.label, f"{m.seconds:.2f}", r.usage, str(m.in_a_row), r.status.value))
        for path, usage in r.agents.items():
            print(_row(f"  {path}", "", usage, "", ""))
    single, team = runs
    print(f"team vs single agent: time x{team.seconds / single.seconds:.2f} "
          f"({single.seconds - team.seconds:+.2f} s saved), model calls "
          f"x{team.result.usage['model_calls'] / single.result.usage['model_calls']:.2f}, "
          f"tokens in x{team.result.usage['tokens_in'] / single.result.usage['tokens_in']:.2f}, "
          f"tokens out x{team.result.usage['tokens_out'] / single.result.usage['tokens_out']:.2f}")
    for m in runs:
        print(f"{m.label}: {m.in_a_row} calls in a row = {m.in_a_row * latency:.1f} s of model "
              f"latency; the other {m.seconds - m.in_a_row * latency:.2f} s is orchestration")
    print("notes: the single agent is scripted to call one tool per turn, one sub-task after "
          "another (a model that\ncalls all the tools in one turn would need 4 "
          "calls in a row: plan, the calls, the answer, the check);\n"
          "the team's workers run at once, so its calls in a row stay at 5 (plan, "
          "tool call, answer, answer, check)\nas sub-tasks are added, while the single "
          "agent's grow by one each; tokens are Cadre's estimates\nfrom the prompts sent "
          "(the scripted model reports none); 'in a row' counts the calls on the critical path")


async def _bench(url: str, redis_url: str, subtasks: int, latency: float) -> None:
    db = await asyncpg.create_pool(url, min_size=1, max_size=8)
    rds = aioredis.Redis.from_url(redis_url)
    user = await db.fetchval("INSERT INTO users (email) VALUES ('bench@example.com') RETURNING id")
    topics = TOPICS[:subtasks]
    try:
        async with postgres_checkpointer(url, pool_size=8) as saver:
            bench = Bench(db=db, rds=rds, graph=compile_graph(saver), user=user)
            await bench.single(topics, 0.0)  # warm-up: connections, first checkpoints
            await bench.team(topics, 0.0)
            runs = [await bench.single(topics, latency), await bench.team(topics, latency)]
    finally:
        await rds.aclose()
        await db.close()
    _report(runs, subtasks, latency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subtasks", type=int, default=3,
                        help=f"independent sub-tasks, 1 to {len(TOPICS)} (a team plan has at "
                             "most 8 steps)")
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    args = parser.parse_args()
    if not 1 <= args.subtasks <= len(TOPICS):
        parser.error(f"--subtasks must be from 1 to {len(TOPICS)}")
    with tempfile.TemporaryDirectory(prefix="cadre-bench-") as tmp, \
            ephemeral_services(Path(tmp), sqs=False) as running:
        migrate.upgrade(running.postgres.url)
        asyncio.run(_bench(running.postgres.url, running.redis_url, args.subtasks,
                           args.latency))


if __name__ == "__main__":
    main()
