"""Replaying a finished task (`POST /v1/tasks/{id}/replay`, `cadre replay`): its record
run through the current graph, tools and policy with no model or tool call
(`graph/replay.py`), and where today's code would decide otherwise."""

from __future__ import annotations

from typing import Any

import asyncpg

from app.executor import start_state
from app.problems import Problem
from app.settings import Settings
from app.store import TaskStore, task_steps
from app.tooling import local_toolset, worker_policy
from graph import ApprovalDecision
from graph.replay import ReplayReport, replay
from graph.status import TERMINAL
from graph.steps import MAIN_AGENT
from guardrails import Policy
from tools import Toolset


def replay_tools(settings: Settings, toolset: Toolset | None = None) -> tuple[Toolset, Policy]:
    """The tools a replay runs against (`toolset`, else the deployment's but MCP servers')
    and the policy the workers load. Reads files: call off the loop."""
    tools = toolset if toolset is not None else local_toolset(settings)
    return tools, worker_policy(settings, tools)


async def replay_task(db: asyncpg.Pool, task: dict[str, Any], *, toolset: Toolset,
                      policy: Policy) -> ReplayReport:
    """Replay `task` (a `tasks` row as `TaskStore` gives it); a 409 unless it has ended."""
    if task["status"] not in TERMINAL:
        raise Problem("conflict", 409, f"task {task['id']} is {task['status']}: replay it once "
                      "it has ended")
    recorded = (await task_steps(db, [task["id"]])).get(str(task["id"]), [])
    if not recorded:
        raise Problem("conflict", 409, f"task {task['id']} has no recorded steps to replay")
    if any(step.agent != MAIN_AGENT for step in recorded):
        # Workers that ran at once answered in an order a replay cannot reproduce.
        raise Problem("conflict", 409, f"task {task['id']} ran as a team of agents: replay "
                      "covers single-agent tasks only")
    decisions = {a["tool_call_id"]: ApprovalDecision(
        decision="approve" if a["status"] == "APPROVED" else "reject",
        comment=a["comment"] or "", approval_id=a["id"])
        for a in await TaskStore(db).approvals_of(str(task["id"])) if a["status"] != "PENDING"}
    start = await start_state(db, task, token_budget=(task["options"] or {}).get("token_budget"))
    return await replay(recorded, start_state=start, toolset=toolset, policy=policy,
                        decisions=decisions)


def report_json(report: ReplayReport) -> dict[str, Any]:
    divergence = report.divergence
    return {"reproduced": divergence is None, "compared": report.compared,
            "divergence": None if divergence is None else {
                "step": divergence.step, "recorded": divergence.recorded,
                "replayed": divergence.replayed},
            "summary": report.describe()}
