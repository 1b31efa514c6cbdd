"""`cadre run`: one task, run in this process against the configured stack and model, with
its steps printed as they happen and approvals asked on the terminal. It runs the workers'
loop (`graph.run.run_task`) with the workers' tools, policy, screening and audit, and its
steps and events land where a worker's would, so the API can show the task too."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, assert_never

from app.deps import connect_db, redis_client, require_database_url, require_redis_url
from app.errors import ConfigError
from app.events import EventLog, StepPublisher
from app.metrics import StepMetrics
from app.models import model_config
from app.settings import Settings
from app.store import PolicyAudit, StepStore, TaskStore
from app.telemetry import carrier, graph_tracing
from app.tooling import (
    open_tool_deps,
    worker_agents,
    worker_policy,
    worker_screen,
    worker_team,
    worker_toolset,
)
from graph import GraphDeps, TaskStatus, compile_graph, make_chat_model, postgres_checkpointer
from graph.approvals import ApprovalDecision, ApprovalRequest
from graph.outputs import OutputStore
from graph.recorder import Recorders
from graph.run import RunResult, run_task, task_input
from graph.speculation import Speculator
from graph.state import AgentState
from graph.steps import (
    AgentDelegated,
    AgentReturned,
    AnswerChecked,
    ModelCalled,
    PlanMade,
    RunStopped,
    Step,
    ToolHeld,
    ToolNotRun,
    ToolProposed,
    ToolRan,
    is_worker,
)
from tools import Ledger, Toolset

Decide = Callable[[ApprovalRequest], Awaitable[ApprovalDecision]]


@dataclass(frozen=True, kw_only=True)
class LocalRun:
    task_id: str
    conversation_id: str
    result: RunResult


class EchoRecorder:
    """Prints each step as one line."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self._echo = echo

    async def record(self, task_id: str, step: Step) -> bool:
        who = f" {step.agent}" if is_worker(step.agent) else ""
        self._echo(f"[{step.number:>2}]{who} {describe(step)}")
        return True


def describe(step: Step) -> str:
    """One line for a step, as `cadre run` prints it."""
    match step:
        case PlanMade():
            head = "plan (revised)" if step.revised else "plan"
            return f"{head:<10}" + " | ".join(f"{i.number}. {i.description}" for i in step.steps)
        case ModelCalled():
            said = f" {_short(step.text, 300)}" if step.text else ""
            return (f"{'model':<10}{step.purpose}: {step.tokens_in}+{step.tokens_out} tokens, "
                    f"{step.latency_ms} ms{said}")
        case ToolProposed():
            return f"{'call':<10}{step.tool}({_short(step.arguments)})"
        case ToolHeld():
            return f"{'held':<10}{step.tool} for approval: {step.reason}"
        case ToolNotRun():
            return f"{'not run':<10}{step.tool}: {step.message}"
        case ToolRan():
            mark = "" if step.ok else " FAILED"
            replay = " (recorded result)" if step.replayed else ""
            return f"{'ran':<10}{step.tool}{mark}{replay} -> {_short(step.content)}"
        case AnswerChecked():
            return f"{'check':<10}goal met: {step.met}. {step.reason}"
        case AgentDelegated():
            return f"{'delegate':<10}{step.to}: {_short(step.task)}"
        case AgentReturned():
            said = _short(step.result) if step.ok else f"stopped ({step.stop}): {step.message}"
            return f"{'returned':<10}{step.to}: {said}"
        case RunStopped():
            return f"{'stopped':<10}{step.stop}: {step.message}"
        case _:
            assert_never(step)


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


async def run_local(
    settings: Settings,
    text: str,
    *,
    email: str,
    conversation_id: str | None,
    max_iterations: int | None,
    token_budget: int | None,
    decide: Decide,
    echo: Callable[[str], None],
    toolset: Toolset | None = None,
    mode: str = "single",
) -> LocalRun:
    """Create the task for `email`'s user, run it to a terminal state, store the outcome."""
    database_url = require_database_url(settings)
    config = model_config(settings)
    echo(f"model: {config.describe()}")
    model = await asyncio.to_thread(make_chat_model, config)
    toolset = toolset if toolset is not None else await worker_toolset(settings)
    policy = await asyncio.to_thread(worker_policy, settings, toolset)
    echo(f"tools: {', '.join(t.name for t in toolset) or 'none'}; policy {policy.source}")
    team = None
    if mode != "single":
        agents = await asyncio.to_thread(worker_agents, settings, toolset)
        team = await asyncio.to_thread(worker_team, agents, config)
        echo(f"agents: {', '.join(p.name for p in agents) or 'none'} ({agents.source})")
    db = await connect_db(settings)
    rds = redis_client(require_redis_url(settings), 4)
    try:
        user = await db.fetchrow("SELECT id, role FROM users WHERE email = $1", email)
        if user is None:
            raise ConfigError(f"no user {email!r}; create one with "
                              f"`cadre keys create --email {email}`")
        store = TaskStore(db)
        conv = await _conversation(store, user["id"], conversation_id, text)
        task_id = (await store.insert(db, user_id=user["id"], conversation=conv, text=text,
                                      options={"mode": mode} if mode != "single" else {},
                                      trace=carrier(),
                                      status=TaskStatus.RUNNING))["id"]
        echo(f"task {task_id} in conversation {conv}")
        events = EventLog(rds)
        async with open_tool_deps(settings, db=db) as tool_deps, postgres_checkpointer(
                database_url, pool_size=settings.checkpoint_pool_size,
                idle_transaction_seconds=settings.db_idle_transaction_seconds) as saver:
            outputs = OutputStore(db, inline_chars=settings.output_inline_chars)
            deps = GraphDeps(
                model=model, toolset=toolset, policy=policy, ledger=Ledger(db),
                recorder=Recorders(StepStore(db), StepPublisher(events), StepMetrics(rds),
                                   EchoRecorder(echo)),
                redis=rds, context_tokens=settings.context_tokens, tool_deps=tool_deps,
                audit=PolicyAudit(db), screen=worker_screen(settings),
                tracing=graph_tracing(settings, config.base_url or "https://api.openai.com/v1"),
                parallel_tools=settings.parallel_tools,
                speculator=Speculator(toolset=toolset, policy=policy, tool_deps=tool_deps, db=db,
                                      redis=rds, limit=settings.speculation_max,
                                      outputs=outputs)
                if settings.speculation else None, team=team,
                outputs=outputs)
            graph = compile_graph(saver)

            async def fresh() -> AgentState:
                return task_input(task_id=task_id, text=text, role=user["role"],
                                  user_email=email,
                                  max_iterations=max_iterations or settings.max_iterations,
                                  token_budget=token_budget or settings.token_budget, mode=mode)

            decision: ApprovalDecision | None = None
            while True:
                result = await run_task(graph, deps, thread_id=str(conv), task_id=task_id,
                                        fresh=fresh, decision=decision)
                if result.status is not TaskStatus.PENDING_APPROVAL:
                    break
                assert result.approval is not None
                await store.set_status(task_id, TaskStatus.PENDING_APPROVAL)
                decision = await decide(result.approval)
                await store.set_status(task_id, TaskStatus.RUNNING)
        succeeded = result.status is TaskStatus.SUCCEEDED
        await store.record_end(
            task_id, result.status,
            output=result.final_answer if succeeded else (result.partial or None),
            error={"type": result.stop["kind"], "message": result.stop["message"]}
            if result.stop else None, usage=result.recorded_usage())
        return LocalRun(task_id=task_id, conversation_id=str(conv), result=result)
    finally:
        await rds.aclose()
        await db.close()


async def _conversation(store: TaskStore, user_id: Any, conversation_id: str | None,
                        text: str) -> Any:
    if conversation_id is None:
        return await store.new_conversation(store.db, user_id, text[:80])
    try:
        wanted = uuid.UUID(conversation_id)
    except ValueError:
        raise ConfigError(f"--conversation {conversation_id!r} is not a conversation id") from None
    found = await store.owned_conversation(wanted, user_id)
    if found is None:
        raise ConfigError(f"conversation {conversation_id} not found for this user")
    return found
