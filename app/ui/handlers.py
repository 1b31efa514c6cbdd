"""The chat UI's Chainlit callbacks. Importing this module registers them (once per process).

A message becomes a task through `TaskService.submit`, the code path of `POST /v1/tasks`, on
the conversation the chat thread is (thread id = conversation id); the task runs on the
workers, and the session follows its events (`view.TaskView`). Buttons call the same service
as the API: approve/reject (`decide`), Stop (`cancel`); Share makes a share link."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import chainlit as cl
from chainlit.context import context
from chainlit.input_widget import InputWidget, Switch
from chainlit.types import ThreadDict

from app.auth import Principal
from app.problems import Problem
from app.store.schedules import ScheduleStore
from app.ui import render
from app.ui.data_layer import CadreDataLayer
from app.ui.runtime import services
from app.ui.view import TaskView, share_action
from graph.approvals import ApprovalDecision
from graph.status import TaskStatus
from tools.builtin.memory import MemoryStore

log = logging.getLogger("cadre.ui")
# Chainlit replaces a resumed chat's messages once `on_chat_resume` returns, dropping anything
# sent before (Chainlit issue #2611): what a resume adds is sent after this delay.
RESUME_SETTLE_SECONDS = 0.5


@cl.data_layer
def _data_layer() -> CadreDataLayer:
    return CadreDataLayer(lambda: services().db)


@cl.password_auth_callback
async def password_login(username: str, password: str) -> cl.User | None:
    """Sign in with your email and one of your API keys (`cadre keys create`)."""
    who = await services().login(username, password)
    if who is None:
        return None
    return cl.User(identifier=who.email, display_name=who.email, metadata={"role": who.role})


async def header_login(headers: Any) -> cl.User | None:
    """Behind an authenticating proxy: the header named by CADRE_UI_AUTH_HEADER carries the
    user's email. Registered only when that setting is on (see `mount_ui`)."""
    ui = services()
    email = (headers.get(ui.settings.ui_auth_header or "") or "").strip()
    who = await ui.principal(email) if email else None
    if who is None:
        return None
    return cl.User(identifier=who.email, display_name=who.email, metadata={"role": who.role})


def _settings() -> cl.ChatSettings:
    """The chat's settings panel: the task mode (a team of agents or one agent)."""
    widgets: list[InputWidget] = [Switch(
        id="team", label="Team of agents", initial=bool(cl.user_session.get("team")),
        description="A manager agent splits each task among worker agents (researcher, "
                    "analyst, writer), independent parts at once")]
    return cl.ChatSettings(widgets)


@cl.on_chat_start
async def start() -> None:
    await _settings().send()
    await cl.Message(content=render.model_notice(services().settings) + "\n\n"
                     + render.COMMANDS_HINT, author=render.CHAT_NAME).send()


@cl.on_settings_update
async def settings_changed(values: dict[str, Any]) -> None:
    cl.user_session.set("team", bool(values.get("team")))


@cl.on_message
async def on_message(message: cl.Message) -> None:
    who = await _who()
    if who is None:
        return
    ui = services()
    conversation = context.session.thread_id
    if not message.content.strip():
        await cl.Message(content="Say what to do (with the files, if you attached some).",
                         author=render.CHAT_NAME).send()
        return
    if message.content.strip() == "/schedules":
        await cl.Message(content=render.schedules_text(await ScheduleStore(ui.db).list(who)),
                         author=render.CHAT_NAME).send()
        return
    if message.content.strip() == "/memories":
        await show_memories(who)
        return
    try:
        await ui.service.open_conversation(who, conversation, message.content)
        files = [await ui.files.save_path(who.user_id, element.name, Path(element.path))
                 for element in message.elements if element.path]
        task = await ui.service.submit(who, message.content, conversation_id=conversation,
                                       files=[f["id"] for f in files],
                                       mode="team" if cl.user_session.get("team") else "single")
    except Problem as problem:
        await _say_problem(problem)
        return
    view = TaskView(ui=ui, who=who, task_id=task["id"], conversation_id=conversation,
                    parent_id=message.id)
    _background(view.follow())
    # Chainlit shows "working" (and Stop) while this handler runs: wait until the task first
    # waits for a person or ends; the view drives the indicator after that.
    await view.paused.wait()


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict) -> None:
    who = await _who()
    if who is None:
        return
    ui = services()
    await _settings().send()
    active = await ui.service.active_in(who, thread["id"])
    # The history shows the tasks up to now: follow each from its stream's current end.
    ends: dict[str, str | None] = {}
    for task in active:
        ends[task["id"]] = await ui.events.last_id(task["id"])
    answered = [step["id"].removeprefix("answer-") for step in thread["steps"]
                if step["id"].startswith("answer-") and not step.get("isError")]

    async def reattach() -> None:
        await asyncio.sleep(RESUME_SETTLE_SECONDS)
        if answered:  # Chainlit keeps no actions: offer Share again on the latest answer
            await share_action(thread["id"], answered[-1]).send(
                for_id=render.answer_id(answered[-1]))
        for task in active:
            view = TaskView(ui=ui, who=who, task_id=task["id"], conversation_id=thread["id"],
                            parent_id=task["id"])
            await view.offer_pending(task["approvals"])
            await view.set_working(task["status"] != TaskStatus.PENDING_APPROVAL)
            _background(view.follow(ends[task["id"]]))

    _background(reattach())


@cl.on_stop
async def on_stop() -> None:
    """The Stop button: cancel the conversation's unfinished tasks (a running one stops at its
    next step boundary)."""
    who = await _who()
    if who is None:
        return
    ui = services()
    for task in await ui.service.active_in(who, context.session.thread_id):
        await ui.service.cancel(who, task["id"])


@cl.action_callback("approve")
async def approve(action: cl.Action) -> None:
    await _decide(action, "approve")


@cl.action_callback("reject")
async def reject(action: cl.Action) -> None:
    await _decide(action, "reject")


@cl.action_callback("retry_from")
async def retry_from(action: cl.Action) -> None:
    who = await _who()
    if who is None:
        return
    step = int(action.payload["step"])
    try:
        fork = await services().service.fork(who, str(action.payload["task_id"]), from_step=step,
                                             note=f"retry from step {step}")
    except Problem as problem:
        await _say_problem(problem)
        return
    await cl.Message(content=render.fork_text(step, fork["conversation_id"]),
                     author=render.CHAT_NAME).send()


@cl.action_callback("run_again")
async def run_again(action: cl.Action) -> None:
    """The cached task again, with its files, in a new conversation (as the first task there
    its answer is kept for later lookups), past both caches."""
    who = await _who()
    if who is None:
        return
    ui = services()
    try:
        earlier = await ui.service.get(who, str(action.payload["task_id"]))
        files = await ui.db.fetch("SELECT file_id FROM task_files WHERE task_id = $1::uuid",
                                  earlier["id"])
        task = await ui.service.submit(who, earlier["input"], cache=False,
                                       files=[str(f["file_id"]) for f in files])
    except Problem as problem:
        await _say_problem(problem)
        return
    await cl.Message(content=render.run_again_text(str(task["conversation_id"])),
                     author=render.CHAT_NAME).send()


@cl.action_callback("share")
async def share(action: cl.Action) -> None:
    who = await _who()
    if who is None:
        return
    ui = services()
    try:
        link = await ui.shares.create(who, str(action.payload["conversation_id"]))
    except Problem as problem:
        await _say_problem(problem)
        return
    await cl.Message(
        content=render.share_text(_origin() + link.path()), author=render.CHAT_NAME,
        id=f"share-link-{link.id}",
        actions=[cl.Action(name="revoke_share", id=f"revoke-{link.id}", label="Revoke link",
                           icon="link-2-off", payload={"conversation_id": link.conversation_id,
                                                       "share_id": link.id},
                           tooltip="The link stops working at once")]).send()


@cl.action_callback("revoke_share")
async def revoke_share(action: cl.Action) -> None:
    who = await _who()
    if who is None:
        return
    try:
        await services().shares.revoke(who, str(action.payload["conversation_id"]),
                                       str(action.payload["share_id"]))
    except Problem as problem:
        await _say_problem(problem)
        return
    await action.remove()
    await cl.Message(content="The share link is revoked: it now shows “not found”.",
                     author=render.CHAT_NAME).send()


async def show_memories(who: Principal) -> None:
    """`/memories`: what the agent remembers about the user, newest first, a Forget button on
    each and Forget all on the list (the same store as `/v1/memories`)."""
    ui = services()
    store = MemoryStore(ui.db)
    memories = await store.list(who.user_id, limit=render.MEMORIES_SHOWN)
    total = await store.count(who.user_id)
    actions = [cl.Action(name="forget_all_memories", label="Forget all", icon="trash-2",
                         payload={}, tooltip="Delete every memory the agent has of you")
               ] if memories else []
    await cl.Message(content=render.memories_text(memories, total=total,
                                                  enabled=ui.settings.memory),
                     author=render.CHAT_NAME, actions=actions).send()
    for memory in memories:
        await cl.Message(content=render.memory_text(memory), author=render.CHAT_NAME, actions=[
            cl.Action(name="forget_memory", label="Forget", icon="trash-2",
                      payload={"memory_id": memory["id"]},
                      tooltip="The agent no longer recalls it")]).send()


@cl.action_callback("forget_memory")
async def forget_memory(action: cl.Action) -> None:
    who = await _who()
    if who is None:
        return
    store = MemoryStore(services().db)
    memory_id = str(action.payload["memory_id"])
    forgotten = await store.delete(who.user_id, memory_id)
    await action.remove()
    if action.forId:
        await cl.Message(id=action.forId, author=render.CHAT_NAME,
                         content=render.forgotten_text(forgotten)).update()


@cl.action_callback("forget_all_memories")
async def forget_all_memories(action: cl.Action) -> None:
    who = await _who()
    if who is None:
        return
    deleted = await MemoryStore(services().db).delete_all(who.user_id)
    await action.remove()
    await cl.Message(content=render.forgot_all_text(deleted), author=render.CHAT_NAME).send()


# -- helpers ---------------------------------------------------------------------------------

_background_tasks: set[asyncio.Task[None]] = set()


def _background(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` past the handler that started it (a task may wait hours for an approval);
    a follower ends with its task or its browser session. The Chainlit context is copied."""
    task = asyncio.create_task(work)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)


async def _who() -> Principal | None:
    """The signed-in user, checked against the database on every use: a user whose keys were
    all revoked is refused even with a valid login cookie."""
    user = context.session.user
    who = await services().principal(user.identifier) if user else None
    if who is None:
        await cl.Message(content="Your sign-in is no longer valid (no active API key). "
                                 "Log out and sign in again.", author=render.CHAT_NAME).send()
    return who


async def _decide(action: cl.Action, decision: Any) -> None:
    who = await _who()
    if who is None:
        return
    try:
        await services().service.decide(who, str(action.payload["task_id"]),
                                        str(action.payload["approval_id"]),
                                        ApprovalDecision(decision=decision))
    except Problem as problem:
        await _say_problem(problem)


async def _say_problem(problem: Problem) -> None:
    message = cl.Message(content=f"**Not done:** {problem.detail}", author=render.CHAT_NAME)
    message.is_error = True
    await message.send()


def _origin() -> str:
    """This browser's view of the server (`https://host`), for links to copy; relative when
    the request does not say."""
    environ = context.session.environ if hasattr(context.session, "environ") else {}
    host = environ.get("HTTP_HOST")
    scope = environ.get("asgi.scope") or {}
    if not host:
        return ""
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return f"{scheme}://{host}"
