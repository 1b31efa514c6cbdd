"""A conversation's history, read from Cadre's own tables: its tasks (input, outcome), every
step the agent recorded in `agent_logs`, the approvals it asked for, the files attached to it
and the artifacts it wrote. The chat UI's thread view and the shared transcript are both
built from this one read model, so history has one source of truth."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from app.store import TaskStore, task_steps
from graph.approvals import asking_agent
from graph.steps import Step


@dataclass(frozen=True, kw_only=True)
class ApprovalLog:
    id: str
    tool: str
    arguments: Any
    reason: str
    status: str
    comment: str | None
    created_at: datetime
    decided_at: datetime | None
    # Which agent asked: a team's worker by its path.
    agent: str = "cadre"


@dataclass(frozen=True, kw_only=True)
class ArtifactLog:
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class TaskLog:
    id: str
    status: str
    input: str
    final_output: str | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None
    # A fork's origin: the task it goes on from, and the step.
    forked_from: tuple[str, int] | None = None
    files: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    approvals: list[ApprovalLog] = field(default_factory=list)
    artifacts: list[ArtifactLog] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class ConversationLog:
    id: str
    user_id: str
    owner_email: str
    title: str
    created_at: datetime
    updated_at: datetime
    tasks: list[TaskLog]


async def conversation_owner(db: asyncpg.Pool, conversation_id: str) -> str | None:
    """The email of the conversation's owner, or None when there is no such conversation."""
    key = _uuid(conversation_id)
    if key is None:
        return None
    owner: str | None = await db.fetchval(
        "SELECT u.email FROM conversations c JOIN users u ON u.id = c.user_id WHERE c.id = $1",
        key)
    return owner


async def load_conversation(db: asyncpg.Pool, conversation_id: str) -> ConversationLog | None:
    """The whole history of one conversation, oldest task first; None if it does not exist.
    The caller decides who may see it."""
    key = _uuid(conversation_id)
    if key is None:
        return None
    conv = await db.fetchrow(
        "SELECT c.id, c.user_id, c.title, c.created_at, c.updated_at, u.email FROM conversations c "
        "JOIN users u ON u.id = c.user_id WHERE c.id = $1", key)
    if conv is None:
        return None
    store = TaskStore(db)
    tasks = await store.conversation_tasks(key)
    ids = [t["id"] for t in tasks]
    steps = await task_steps(db, ids)
    approvals = await store.approvals_in(ids)
    artifacts = await db.fetch(
        "SELECT task_id, name, content_type, size_bytes, sha256, created_at FROM artifacts "
        "WHERE task_id = ANY($1::uuid[]) ORDER BY created_at, name", ids)
    files = await db.fetch(
        "SELECT t.task_id, f.name FROM task_files t JOIN files f ON f.id = t.file_id "
        "WHERE t.task_id = ANY($1::uuid[]) ORDER BY f.created_at", ids)
    by_task: dict[Any, TaskLog] = {
        t["id"]: TaskLog(id=str(t["id"]), status=t["status"], input=t["input"],
                         final_output=t["final_output"], error=_json(t["error"]),
                         created_at=t["created_at"], finished_at=t["finished_at"],
                         forked_from=_fork_of(t["options"]))
        for t in tasks}
    for task_id, task in by_task.items():
        task.steps.extend(steps.get(str(task_id), []))
    for row in approvals:
        by_task[row["task_id"]].approvals.append(ApprovalLog(
            id=str(row["id"]), tool=row["tool_name"], arguments=_json(row["tool_input"]),
            reason=row["reason"], status=row["status"], comment=row["comment"],
            created_at=row["created_at"], decided_at=row["decided_at"],
            agent=asking_agent(row["tool_call_id"])))
    for row in artifacts:
        by_task[row["task_id"]].artifacts.append(ArtifactLog(
            name=row["name"], content_type=row["content_type"], size_bytes=row["size_bytes"],
            sha256=row["sha256"], created_at=row["created_at"]))
    for row in files:
        by_task[row["task_id"]].files.append(row["name"])
    return ConversationLog(id=str(conv["id"]), user_id=str(conv["user_id"]),
                           owner_email=conv["email"], title=conv["title"],
                           created_at=conv["created_at"], updated_at=conv["updated_at"],
                           tasks=list(by_task.values()))


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _fork_of(options: Any) -> tuple[str, int] | None:
    fork = (_json(options) or {}).get("fork")
    return (str(fork["task_id"]), int(fork["from_step"])) if fork else None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
