"""`cadre run`: one task, run in this process against the configured stack and model, with
its steps printed as they happen and approvals asked on the terminal. For operators and for
trying Cadre out; the task service runs the same graph on the queue workers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from app.deps import connect_db, require_database_url, require_redis_url
from app.errors import ConfigError
from app.models import model_config
from app.settings import Settings
from graph import GraphDeps, compile_graph, make_chat_model, postgres_checkpointer, task_input
from graph.recorder import PostgresRecorder, Recorders, StepRecord
from graph.run import RunResult, resume, start
from guardrails import DefaultPolicy
from tools import Ledger, Toolset

Decide = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, kw_only=True)
class LocalRun:
    task_id: str
    conversation_id: str
    result: RunResult


class _EchoRecorder:
    def __init__(self, echo: Callable[[str], None]) -> None:
        self._echo = echo

    async def record(self, entry: StepRecord) -> None:
        head = f"[{entry.step_number:>2}] {entry.node:<8}"
        if entry.node == "execute":
            output = entry.tool_output or {}
            self._echo(f"{head} {entry.tool_name}({_short(entry.tool_input)}) -> "
                       f"{_short(output.get('content'))}")
        elif entry.tool_name:
            self._echo(f"{head} {entry.tool_name} {_short(entry.tool_input)} {entry.thought or ''}")
        else:
            self._echo(f"{head} {_short(entry.thought, 400)}")


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


async def run_task(
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
) -> LocalRun:
    """Create the task for `email`'s user, run it to a terminal state, store the outcome."""
    database_url = require_database_url(settings)
    config = model_config(settings)
    echo(f"model: {config.describe()}")
    model = await asyncio.to_thread(make_chat_model, config)
    db = await connect_db(settings)
    rds = aioredis.Redis.from_url(require_redis_url(settings))
    try:
        user_id = await db.fetchval("SELECT id FROM users WHERE email = $1", email)
        if user_id is None:
            raise ConfigError(f"no user {email!r}; create one with "
                              f"`cadre keys create --email {email}`")
        conv = await _conversation(db, user_id, conversation_id, text)
        task_id = str(await db.fetchval(
            "INSERT INTO tasks (user_id, conversation_id, input, status) "
            "VALUES ($1, $2, $3, 'RUNNING') RETURNING id", user_id, conv, text))
        echo(f"task {task_id} in conversation {conv}")
        deps = GraphDeps(
            model=model,
            # The built-in tools arrive with the tools issue; plug-ins register here then.
            toolset=toolset or Toolset(),
            policy=DefaultPolicy(),
            ledger=Ledger(db),
            recorder=Recorders(PostgresRecorder(db), _EchoRecorder(echo)),
            redis=rds,
            context_tokens=settings.context_tokens,
        )
        async with postgres_checkpointer(database_url,
                                         pool_size=settings.checkpoint_pool_size) as saver:
            graph = compile_graph(saver)
            result = await start(graph, deps, thread_id=str(conv), input=task_input(
                task_id=task_id, text=text,
                max_iterations=max_iterations or settings.max_iterations,
                token_budget=token_budget or settings.token_budget))
            while result.status == "pending_approval":
                assert result.approval is not None
                await db.execute("UPDATE tasks SET status = 'PENDING_APPROVAL', updated_at = now() "
                                 "WHERE id = $1::uuid", task_id)
                answer = await decide(result.approval)
                await db.execute("UPDATE tasks SET status = 'RUNNING', updated_at = now() "
                                 "WHERE id = $1::uuid", task_id)
                result = await resume(graph, deps, thread_id=str(conv), decision=answer)
        await db.execute(
            "UPDATE tasks SET status = $2, final_output = $3, error = $4::jsonb, usage = $5::jsonb, "
            "updated_at = now() WHERE id = $1::uuid",
            task_id, "SUCCEEDED" if result.status == "succeeded" else "FAILED",
            result.final_answer if result.status == "succeeded" else (result.partial or None),
            json.dumps({"type": result.stop["kind"], "message": result.stop["message"]})
            if result.stop else None,
            json.dumps(result.usage),
        )
        return LocalRun(task_id=task_id, conversation_id=str(conv), result=result)
    finally:
        await rds.aclose()
        await db.close()


async def _conversation(db: asyncpg.Pool, user_id: Any, conversation_id: str | None,
                        text: str) -> Any:
    if conversation_id is None:
        return await db.fetchval("INSERT INTO conversations (user_id, title) VALUES ($1, $2) "
                                 "RETURNING id", user_id, text[:80])
    try:
        wanted = uuid.UUID(conversation_id)
    except ValueError:
        raise ConfigError(f"--conversation {conversation_id!r} is not a conversation id") from None
    found = await db.fetchval("SELECT id FROM conversations WHERE id = $1 AND user_id = $2",
                              wanted, user_id)
    if found is None:
        raise ConfigError(f"conversation {conversation_id} not found for this user")
    return found
