"""The task-service calls the chat UI adds: a chat thread becomes the user's conversation
(never another user's), and a reopened chat finds its unfinished tasks and their approvals."""

from __future__ import annotations

import uuid

import pytest

from app.auth import Principal
from app.events import EventLog
from app.problems import Problem
from app.service import TaskService
from graph.testing import call, plan
from tests.service import Service


async def _principal(service: Service, email: str) -> Principal:
    row = await service.deps.db.fetchrow("SELECT id, role FROM users WHERE email = $1", email)
    return Principal(user_id=str(row["id"]), email=email, role=row["role"], key_id="test")


async def test_a_thread_id_becomes_the_users_conversation_and_only_theirs(
        service: Service) -> None:
    tasks = TaskService(db=service.deps.db, queue=service.deps.queue,
                        events=EventLog(service.deps.redis))
    ana = await _principal(service, "ana@example.com")
    eve = await _principal(service, "eve@example.com")
    thread = str(uuid.uuid4())
    assert await tasks.open_conversation(ana, thread, "  Plan the\n offsite ") == thread
    assert await tasks.open_conversation(ana, thread, "again") == thread, "idempotent"
    title = await service.deps.db.fetchval("SELECT title FROM conversations WHERE id = $1::uuid",
                                           thread)
    assert title == "Plan the offsite"
    with pytest.raises(Problem) as taken:
        await tasks.open_conversation(eve, thread, "mine")
    assert taken.value.status == 404
    with pytest.raises(Problem):
        await tasks.open_conversation(ana, "not-a-uuid", "x")
    assert await tasks.active_in(eve, thread) == []


async def test_a_reopened_chat_finds_the_waiting_task_and_its_approval(service: Service) -> None:
    tasks = TaskService(db=service.deps.db, queue=service.deps.queue,
                        events=EventLog(service.deps.redis))
    ana = await _principal(service, "ana@example.com")
    service.model.add(plan("Report"), call("send_report", {"to": "boss@example.com",
                                                           "body": "3 EUR"}))
    task = await service.submit("Send the report.")
    await service.wait_status(task["id"], "PENDING_APPROVAL")
    [active] = await tasks.active_in(ana, task["conversation_id"])
    assert active["id"] == task["id"] and active["status"] == "PENDING_APPROVAL"
    [approval] = active["approvals"]
    assert approval["tool"] == "send_report" and approval["status"] == "PENDING"
    eve = await _principal(service, "eve@example.com")
    assert await tasks.active_in(eve, task["conversation_id"]) == []
    await tasks.cancel(ana, task["id"])
    assert await tasks.active_in(ana, task["conversation_id"]) == []
