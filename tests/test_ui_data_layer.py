"""The chat UI's data layer: threads are conversations, built from tasks, agent_logs, approvals
and artifacts; each user sees only their own; nothing Chainlit writes is stored."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import HTTPException

from app.settings import Settings
from app.tooling import artifact_store
from graph.testing import call, plan, reply, verdict
from tests.service import Service
from tools.artifacts import Artifacts

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(scope="module")
def layer_class(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chainlit reads its environment when first imported: prepare it the way `mount_ui` does."""
    from app.ui import prepare_chainlit

    before = dict(os.environ)
    prepare_chainlit(Settings.of(home=tmp_path_factory.mktemp("ui-home")))
    from chainlit.types import Pagination, ThreadFilter

    from app.ui.data_layer import CadreDataLayer

    for name in ("CHAINLIT_AUTH_SECRET", "CHAINLIT_APP_ROOT", "CHAINLIT_ENV_FILE"):
        if name not in before:
            os.environ.pop(name, None)
    yield CadreDataLayer, Pagination, ThreadFilter


async def _user_id(service: Service, email: str) -> str:
    return str(await service.deps.db.fetchval("SELECT id FROM users WHERE email = $1", email))


async def _conversations(service: Service) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Ana: one finished task with a tool call and a chart, then one waiting for approval in
    the same conversation. Eve: one finished task."""
    service.model.add(plan("Look up the price", "Answer"), call("lookup_price", {"item": "apple"}),
                      reply("An apple costs 3 EUR."), verdict(True))
    first = await service.submit("What does an apple cost?")
    first = await service.wait_status(first["id"], "SUCCEEDED")
    service.model.add(plan("Report"), call("send_report", {"to": "boss@example.com",
                                                           "body": "3 EUR"}))
    second = await service.submit("Send that to my boss.",
                                  conversation_id=first["conversation_id"])
    second = await service.wait_status(second["id"], "PENDING_APPROVAL")
    service.model.add(plan("Answer"), reply("Hello Eve."), verdict(True))
    eve = await service.http.post("/v1/tasks", json={"input": "Say hello to Eve."},
                                  headers=service.auth(service.other_key))
    async with asyncio.timeout(30):
        while (eve_task := (await service.http.get(
                f"/v1/tasks/{eve.json()['id']}", headers=service.auth(service.other_key))).json()
               )["status"] != "SUCCEEDED":
            await asyncio.sleep(0.1)
    return first, second, eve_task


async def test_threads_are_conversations_each_user_sees_only_theirs(
        service: Service, layer_class: Any) -> None:
    layer_cls, pagination, thread_filter = layer_class
    layer = layer_cls(lambda: service.deps.db)
    first, second, eve_task = await _conversations(service)
    await Artifacts(service.deps.db, artifact_store(service.deps.settings)).save(
        first["id"], "chart.png", PNG)
    ana, eve = await _user_id(service, "ana@example.com"), await _user_id(service, "eve@example.com")
    conversation = first["conversation_id"]

    listed = await layer.list_threads(pagination(first=20), thread_filter(userId=ana))
    assert [t["id"] for t in listed.data] == [conversation]
    assert listed.data[0]["name"] == "What does an apple cost?"
    assert listed.data[0]["userIdentifier"] == "ana@example.com"
    eves = await layer.list_threads(pagination(first=20), thread_filter(userId=eve))
    assert [t["id"] for t in eves.data] == [eve_task["conversation_id"]]
    nobody = await layer.list_threads(pagination(first=20), thread_filter())
    assert nobody.data == [], "no user, no threads"
    found = await layer.list_threads(pagination(first=20),
                                     thread_filter(userId=ana, search="my boss"))
    assert [t["id"] for t in found.data] == [conversation], "search reaches the tasks' text"
    missed = await layer.list_threads(pagination(first=20),
                                      thread_filter(userId=eve, search="apple"))
    assert missed.data == []

    assert await layer.get_thread_author(conversation) == "ana@example.com"
    assert await layer.get_thread_author(eve_task["conversation_id"]) == "eve@example.com"
    assert await layer.get_thread_author("00000000-0000-0000-0000-000000000000") == ""
    assert await layer.get_thread_author("not-a-uuid") == ""

    thread = await layer.get_thread(conversation)
    assert thread is not None and thread["userIdentifier"] == "ana@example.com"
    steps = thread["steps"]
    shown = [(s["type"], s["name"], s["id"].split("-")[0]) for s in steps]
    # The chart was saved after the task ended, so it shows last.
    assert shown[:6] == [
        ("user_message", "ana@example.com", first["id"].split("-")[0]),
        ("assistant_message", "Cadre", "plan"),
        ("tool", "lookup_price", "step"),
        ("llm", "check", "step"),
        ("assistant_message", "Cadre", "answer"),
        ("assistant_message", "Cadre", "files")], shown
    tool = steps[2]
    assert '"item": "apple"' in tool["input"] and "price_eur" in tool["output"]
    assert tool["parentId"] == first["id"] and not tool["isError"]
    assert steps[4]["output"] == "An apple costs 3 EUR."
    assert steps[5]["output"] == "Files this task wrote: `chart.png`"
    assert "1. Look up the price" in steps[1]["output"]
    [chart] = thread["elements"] or []
    assert chart["type"] == "image" and chart["forId"] == f"files-{first['id']}"
    assert chart["url"].startswith(f"/ui/artifacts/{first['id']}/chart.png?v=")

    [approval] = (await service.task(second["id"]))["approvals"]
    waiting = [s for s in steps if s["id"] == f"approval-{approval['id']}"]
    assert len(waiting) == 1 and "send_report" in waiting[0]["output"]
    assert "boss@example.com" in waiting[0]["output"]
    assert not any(s["id"] == f"answer-{second['id']}" for s in steps), "no answer yet"
    assert await layer.get_element(conversation, chart["id"]) == chart
    assert await layer.get_element(eve_task["conversation_id"], chart["id"]) is None


async def test_new_threads_deleting_and_revoked_users(service: Service, layer_class: Any) -> None:
    layer_cls, pagination, thread_filter = layer_class
    layer = layer_cls(lambda: service.deps.db)
    first, _, eve_task = await _conversations(service)
    ana, eve = await _user_id(service, "ana@example.com"), await _user_id(service, "eve@example.com")

    # A new chat's first message names its thread; another user cannot take it over.
    new = "3b8a2f1e-9f5c-4f7e-8d2a-6c1e0b7a9d10"
    await layer.update_thread(new, name="Plan the   offsite", user_id=ana)
    await layer.update_thread(new, name="Mine now", user_id=eve)
    assert await layer.get_thread_author(new) == "ana@example.com"
    listed = await layer.list_threads(pagination(first=20), thread_filter(userId=ana))
    assert listed.data[0]["id"] == new and listed.data[0]["name"] == "Plan the offsite"
    await layer.update_thread(new, name="Offsite, renamed")
    assert (await layer.get_thread(new) or {}).get("name") == "Offsite, renamed"
    page = await layer.list_threads(pagination(first=1), thread_filter(userId=ana))
    assert page.pageInfo.hasNextPage and len(page.data) == 1
    rest = await layer.list_threads(pagination(first=5, cursor=page.pageInfo.endCursor),
                                    thread_filter(userId=ana))
    assert [t["id"] for t in rest.data] == [first["conversation_id"]]

    # Chainlit's own writes are dropped: the history stays Cadre's.
    await layer.create_step({"id": "x", "threadId": new, "type": "assistant_message",
                             "name": "Cadre", "output": "stored?"})
    assert (await layer.get_thread(new) or {}).get("steps") == []

    # Deleting: refused while a task waits, done otherwise.
    with pytest.raises(HTTPException) as busy:
        await layer.delete_thread(first["conversation_id"])
    assert busy.value.status_code == 409
    await layer.delete_thread(eve_task["conversation_id"])
    assert await layer.get_thread(eve_task["conversation_id"]) is None

    # A user whose keys are all revoked is no longer known to the UI.
    assert (await layer.get_user("eve@example.com")) is not None
    await service.deps.db.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1::uuid", eve)
    assert await layer.get_user("eve@example.com") is None
    user = await layer.get_user("ana@example.com")
    assert user is not None and user.id == ana and user.metadata == {"role": "analyst"}
