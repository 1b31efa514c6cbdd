"""Chainlit's data layer over Cadre's own tables: threads are conversations, and a thread's
messages and steps are built from its tasks, `agent_logs`, approvals and artifacts
(`app.history`). Nothing Chainlit would write is stored: what the UI shows live comes from the
task's events, which land in the same tables, so there is no second copy of the history.

Every user sees only their own threads: `list_threads` filters by the user Chainlit passes,
`get_thread_author` names the owner so Chainlit refuses anyone else, and a thread's
`userIdentifier` is checked again when a socket asks to resume it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, assert_never, cast

import asyncpg
from chainlit.data.base import BaseDataLayer
from chainlit.element import Element, ElementDict
from chainlit.step import StepDict
from chainlit.types import (
    Feedback,
    PageInfo,
    PaginatedResponse,
    Pagination,
    ThreadDict,
    ThreadFilter,
)
from chainlit.user import PersistedUser, User
from fastapi import HTTPException

from app.history import ConversationLog, TaskLog, conversation_owner, load_conversation
from app.store import TaskStore
from app.ui import render
from graph.status import TaskStatus
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


class CadreDataLayer(BaseDataLayer):
    """Read-mostly: users and threads come from Cadre's tables; steps, elements and feedback
    Chainlit tries to persist are dropped (Cadre records its own)."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        # A callable: the pool opens with the app, after the data layer is made.
        self._pool = pool

    # -- users -----------------------------------------------------------------------------

    async def get_user(self, identifier: str) -> PersistedUser | None:
        row = await self._pool().fetchrow(
            "SELECT id, email, role, created_at FROM users u WHERE email = $1 AND EXISTS "
            "(SELECT 1 FROM api_keys k WHERE k.user_id = u.id AND k.revoked_at IS NULL)",
            identifier)
        if row is None:
            return None
        return PersistedUser(id=str(row["id"]), identifier=row["email"],
                             display_name=row["email"], createdAt=_iso(row["created_at"]),
                             metadata={"role": row["role"]})

    async def create_user(self, user: User) -> PersistedUser | None:
        # Users are made with `cadre keys create`; the UI only signs existing ones in.
        return await self.get_user(user.identifier)

    # -- threads ---------------------------------------------------------------------------

    async def list_threads(self, pagination: Pagination,
                           filters: ThreadFilter) -> PaginatedResponse[ThreadDict]:
        if not filters.userId:
            return PaginatedResponse(data=[], pageInfo=PageInfo(
                hasNextPage=False, startCursor=None, endCursor=None))
        search = f"%{filters.search.strip()}%" if filters.search and filters.search.strip() \
            else None
        rows = await TaskStore(self._pool()).conversations(
            _uuid_or_none(filters.userId), search=search, after=_uuid_or_none(pagination.cursor),
            limit=pagination.first + 1)
        more = len(rows) > pagination.first
        rows = rows[:pagination.first]
        data: list[ThreadDict] = [{
            "id": str(r["id"]), "createdAt": _iso(r["updated_at"]),
            "name": r["title"] or "Conversation", "userId": str(r["user_id"]),
            "userIdentifier": r["email"], "tags": None, "metadata": {}, "steps": [],
            "elements": []} for r in rows]
        return PaginatedResponse(data=data, pageInfo=PageInfo(
            hasNextPage=more, startCursor=data[0]["id"] if data else None,
            endCursor=data[-1]["id"] if data else None))

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        conversation = await load_conversation(self._pool(), thread_id)
        return thread_view(conversation) if conversation else None

    async def get_thread_author(self, thread_id: str) -> str:
        return await conversation_owner(self._pool(), thread_id) or ""

    async def update_thread(self, thread_id: str, name: str | None = None,
                            user_id: str | None = None, metadata: dict[str, Any] | None = None,
                            tags: list[str] | None = None) -> None:
        """A new chat's first message names its thread (with the user's id); a rename names it
        (Chainlit has checked the author). Chainlit's session metadata is not kept."""
        pool = self._pool()
        key = _uuid_or_none(thread_id)
        if key is None:
            return
        title = " ".join((name or "").split())[:80]
        if user_id is not None:
            await pool.execute(
                "INSERT INTO conversations (id, user_id, title) VALUES ($1, $2::uuid, $3) "
                "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title "
                "WHERE conversations.user_id = EXCLUDED.user_id AND conversations.title = ''",
                key, user_id, title)
        elif title:
            await pool.execute("UPDATE conversations SET title = $2 WHERE id = $1", key, title)

    async def delete_thread(self, thread_id: str) -> None:
        """Deletes the conversation and its tasks' history (Chainlit has checked the author);
        refused while one of its tasks is still running or waiting."""
        key = _uuid_or_none(thread_id)
        if key is None:
            return
        async with self._pool().acquire() as conn, conn.transaction():
            if await TaskStore(self._pool()).conversation_busy(conn, key):
                raise HTTPException(409, "this conversation has a task in progress; stop it first")
            await conn.execute("DELETE FROM conversations WHERE id = $1", key)

    # -- elements --------------------------------------------------------------------------

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        thread = await self.get_thread(thread_id)
        for element in (thread["elements"] or []) if thread else []:
            if element.get("id") == element_id:
                return element
        return None

    # -- what Cadre records itself ---------------------------------------------------------

    async def create_step(self, step_dict: StepDict) -> None:
        pass

    async def update_step(self, step_dict: StepDict) -> None:
        pass

    async def delete_step(self, step_id: str) -> None:
        pass

    async def create_element(self, element: Element) -> None:
        pass

    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        pass

    async def upsert_feedback(self, feedback: Feedback) -> str:
        return ""

    async def delete_feedback(self, feedback_id: str) -> bool:
        return False

    async def get_favorite_steps(self, user_id: str) -> list[StepDict]:
        return []

    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        pass


def thread_view(conversation: ConversationLog) -> ThreadDict:
    """A conversation as Chainlit's thread: per task, the user's message, the plan, each step
    (tool calls with input and output, reasoning), approvals, files written, the answer."""
    steps: list[tuple[datetime, StepDict]] = []
    elements: list[ElementDict] = []
    for task in conversation.tasks:
        steps.extend(_task_steps(conversation, task))
        for artifact in task.artifacts:
            elements.append(render.artifact_element(  # type: ignore[arg-type]
                task.id, conversation.id, name=artifact.name,
                content_type=artifact.content_type, sha256=artifact.sha256))
    return {"id": conversation.id, "createdAt": _iso(conversation.created_at),
            "name": conversation.title or "Conversation", "userId": conversation.user_id,
            "userIdentifier": conversation.owner_email, "tags": None, "metadata": {},
            "steps": [step for _, step in steps], "elements": elements}


def _task_steps(conversation: ConversationLog, task: TaskLog) -> list[tuple[datetime, StepDict]]:
    thread, parent = conversation.id, task.id

    def step(at: datetime, id: str, type: str, name: str, output: str, **more: Any
             ) -> tuple[datetime, StepDict]:
        return at, cast(StepDict, {
            "id": id, "threadId": thread, "parentId": parent, "type": type, "name": name,
            "output": output, "input": more.pop("input", ""), "createdAt": _iso(at),
            "start": _iso(at), "end": _iso(at), "isError": more.pop("is_error", False),
            "metadata": {}, "streaming": False, **more})

    user = step(task.created_at, task.id, "user_message", conversation.owner_email, task.input)
    user[1]["parentId"] = None
    out = [user]
    plans = [s for s in task.steps if isinstance(s, PlanMade)]
    returned = {s.to: s for s in task.steps if isinstance(s, AgentReturned)}
    for log in task.steps:
        shown = _shown(log, task, latest_plan=plans[-1] if plans else None,
                       revised=len(plans) > 1, returned=returned)
        if shown is not None:
            id_, type_, name, output, more = shown
            out.append(step(log.at, id_, type_, name, output, **more))
    for approval in task.approvals:
        out.append(step(approval.created_at, render.approval_message_id(approval.id),
                        "assistant_message", render.CHAT_NAME, render.approval_text(
                            approval.tool, approval.arguments, approval.reason,
                            status=approval.status, comment=approval.comment,
                            agent=approval.agent)))
    if task.artifacts:
        # Live, the files show after the tool call that wrote them (which is logged after it
        # saved them): so here too.
        first = task.artifacts[0].created_at
        calls = [log.at for log in task.steps if isinstance(log, ToolRan) and log.at >= first]
        out.append(step((min(calls) if calls else first) + timedelta(microseconds=1),
                        render.files_id(task.id),
                        "assistant_message", render.CHAT_NAME,
                        render.files_text([a.name for a in task.artifacts])))
    ended = task.finished_at or task.created_at
    if task.status == TaskStatus.SUCCEEDED and task.final_output:
        out.append(step(ended, render.answer_id(task.id), "assistant_message", render.CHAT_NAME,
                        task.final_output))
    elif task.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        out.append(step(ended, render.answer_id(task.id), "assistant_message", render.CHAT_NAME,
                        render.error_text(task.error, task.status), is_error=True))
    out.sort(key=lambda pair: pair[0])
    return out


def _shown(log: Step, task: TaskLog, *, latest_plan: PlanMade | None, revised: bool,
           returned: dict[str, AgentReturned] | None = None,
           ) -> tuple[str, str, str, str, dict[str, Any]] | None:
    """How a recorded step appears in the thread (id, type, name, output, more), if at all.
    A team's worker agent is one step (its delegation, with what it returned), and its own
    steps nest in it."""
    shown = _shown_step(log, task, latest_plan=latest_plan, revised=revised,
                        returned=returned or {})
    if shown is not None and is_worker(log.agent):
        shown[4]["parentId"] = render.agent_step_id(task.id, log.agent)
    return shown


def _shown_step(log: Step, task: TaskLog, *, latest_plan: PlanMade | None, revised: bool,
                returned: dict[str, AgentReturned],
                ) -> tuple[str, str, str, str, dict[str, Any]] | None:
    at = f"step-{task.id}-{log.number}"
    match log:
        case PlanMade():
            if log is not latest_plan:  # the plan message shows the latest plan only
                return None
            return (render.plan_id(task.id), "assistant_message", render.CHAT_NAME,
                    render.plan_text([i.description for i in log.steps], revised=revised), {})
        case AgentDelegated():
            back = returned.get(log.to)
            output = render.agent_output(back.ok, back.result, back.stop, back.message) \
                if back is not None else "Working..."
            return (render.agent_step_id(task.id, log.to), "run", log.to, output,
                    {"input": log.task, "is_error": back is not None and not back.ok,
                     "defaultOpen": True})
        case AgentReturned():
            return None  # shown as its delegation's output
        case ToolRan():
            shown, language = render.tool_input(log.arguments)
            return (at, "tool", log.tool, _text(log.content),
                    {"input": shown, "is_error": not log.ok, "showInput": language})
        case ToolNotRun():
            shown, language = render.tool_input(log.arguments)
            return (at, "tool", log.tool, log.message or "not run",
                    {"input": shown, "is_error": True, "showInput": language})
        case ModelCalled():
            if log.purpose != "act" or not log.text or log.text == task.final_output:
                return None
            if is_worker(log.agent) and not log.tool_calls:
                return None  # a worker's answer: its step's output
            return at, "llm", "reasoning", log.text, {}
        case AnswerChecked():
            return at, "llm", "check", f"goal met: {log.met}. {log.reason}", {}
        case ToolProposed() | ToolHeld() | RunStopped():
            return None  # shown with its result, its approval, the task's error
        case _:
            assert_never(log)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return str(value)
        if isinstance(value, str):
            return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _uuid_or_none(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
