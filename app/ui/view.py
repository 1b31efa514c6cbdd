"""One task, live in one chat session: its event stream (the same one SSE and WebSocket
clients read) rendered as Chainlit messages and steps.

- the plan: one message, rewritten when the agent re-plans;
- each tool call: a `tool` step with its input, then its output (red when it failed);
- reasoning and the verifier's check: `llm` steps;
- tokens: streamed into the answer message; text the model streamed before deciding to call a
  tool turns out to be reasoning, and moves into an `llm` step;
- files the task's code wrote: images inline, other files as downloads;
- an approval: a message with the tool, its arguments and the reason, and Approve / Reject
  buttons. Every session following the task sees the decision, so the buttons disappear from
  every open tab however the decision was made (a click, another tab, the API);
- failures: a readable message naming the kind of failure;
- a team's worker agents: each one collapsible step (`run`), named by its path, with its
  sub-task as input, "Working..." until it returns, then its result (red when it failed);
  its tool calls nest inside it.

The "working" indicator (and with it Chainlit's Stop button) follows the task: on while it is
queued or running, off while it waits for a person or has ended, since Chainlit disables
action buttons while it is on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, assert_never

import chainlit as cl
from chainlit.context import context, local_steps
from chainlit.session import WebsocketSession
from chainlit.utils import utc_now

from app.auth import Principal
from app.events import (
    AgentData,
    ApprovalRequiredData,
    CacheData,
    ErrorData,
    Event,
    FinalData,
    ModelCallData,
    PlanData,
    StatusData,
    ThoughtData,
    TokenData,
    ToolCallData,
    ToolResultData,
)
from app.ui import render
from app.ui.runtime import UIServices
from graph.status import TaskStatus
from graph.steps import ToolRan, is_worker

log = logging.getLogger("cadre.ui")


def approval_actions(task_id: str, approval_id: str) -> list[cl.Action]:
    """The buttons of one approval. Their ids are stable, so any session can remove them, and
    a reopened chat can put them back on the approval message its history shows."""
    payload = {"task_id": task_id, "approval_id": approval_id}
    return [cl.Action(name="approve", id=f"approve-{approval_id}", payload=payload,
                      label="Approve", icon="check", tooltip="Let the agent run this call"),
            cl.Action(name="reject", id=f"reject-{approval_id}", payload=payload,
                      label="Reject", icon="x", tooltip="Refuse; the agent is told and re-plans")]


def retry_action(task_id: str, step: int, tool: str) -> cl.Action:
    """"Retry from here" for one step: Chainlit shows actions on messages, not on tool steps,
    so the task's answer carries one per tool step, named after it."""
    return cl.Action(name="retry_from", id=f"retry-{task_id}-{step}",
                     payload={"task_id": task_id, "step": step}, label=f"Retry after {tool}",
                     icon="rotate-ccw", tooltip=f"Go on again from the state after step {step} "
                     f"({tool}), in a new conversation; what was done up to there is not done "
                     "again")


def run_again_action(task_id: str) -> cl.Action:
    return cl.Action(name="run_again", id=f"run-again-{task_id}", payload={"task_id": task_id},
                     label="Run again", icon="refresh-cw",
                     tooltip="Run this task for real instead of answering from the cache")


def share_action(conversation_id: str, task_id: str) -> cl.Action:
    return cl.Action(name="share", id=f"share-{task_id}", payload={
        "conversation_id": conversation_id}, label="Share", icon="share-2",
        tooltip="Make a read-only link to this conversation (secrets and personal data redacted)")


@dataclass
class TaskView:
    ui: UIServices
    who: Principal
    task_id: str
    conversation_id: str
    # The message the task's steps hang under: the user's message live, the task in history.
    parent_id: str
    # Set when the task first stops needing the "working" indicator: it waits or has ended.
    paused: asyncio.Event = field(default_factory=asyncio.Event)
    working: bool = False
    plans: int = 0
    _tools: dict[str, cl.Step] = field(default_factory=dict)
    # A team's worker agents, by path.
    _agents: dict[str, cl.Step] = field(default_factory=dict)
    _answer: cl.Message | None = None
    _answer_sent: bool = False
    # The act step's text, until we know whether it was reasoning or the answer being checked.
    _act_thought: str = ""
    _shown_files: dict[str, str] = field(default_factory=dict)
    _files_sent: bool = False
    # Approvals shown with buttons, by id: (tool, arguments, reason, the agent asking).
    _pending: dict[str, tuple[str, Any, str, str]] = field(default_factory=dict)

    async def follow(self, after: str | None = None) -> None:
        """Render the task's events after `after` (all when None) until it ends, or until this
        browser session is gone."""
        local_steps.set(None)  # our messages hang under `parent_id`, not a Chainlit run step
        session_id = context.session.id
        try:
            async for event in self.ui.streams.follow(
                    self.task_id, after, heartbeat_seconds=self.ui.settings.sse_heartbeat_seconds):
                if event is None:
                    if WebsocketSession.get_by_id(session_id) is None:
                        return
                    continue
                try:
                    await self.show(event)
                except Exception:
                    # One event that cannot be shown must not stop the rest from showing.
                    log.exception("task %s: could not show a %s event", self.task_id, event.type)
        finally:
            self.paused.set()
            await self.set_working(False)

    async def show(self, event: Event) -> None:
        data = event.data
        match data:
            case StatusData():
                await self._status(data)
            case PlanData():
                await self._plan([item.description for item in data.plan])
            case ThoughtData() if is_worker(data.agent):  # beside its tool calls
                await self._llm_step("reasoning", data.text,
                                     parent=render.agent_step_id(self.task_id, data.agent))
            case ThoughtData():
                await self._thought(data)
            case AgentData():
                await self._settle_draft()
                await self._agent(data)
            case ToolCallData():
                if not is_worker(data.agent):
                    await self._settle_draft()
                await self._tool_call(data)
            case ToolResultData():
                await self._tool_result(data)
            case ApprovalRequiredData():
                await self._approval(data)
            case TokenData():
                await self._token(data.text)
            case FinalData():
                await self._final(data.output, data.cached_from)
            case ErrorData():
                await self._error(data)
            case ModelCallData():
                pass  # the cost of a call is not shown in the chat
            case CacheData():
                pass  # a hit is told with the answer (`cached_from`); a miss just runs
            case _:
                assert_never(data)

    # -- events ----------------------------------------------------------------------------

    async def _status(self, data: StatusData) -> None:
        status = data.status
        if data.approval is not None or status != TaskStatus.PENDING_APPROVAL:
            await self._decided()
        if status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            await self.set_working(True)
        else:
            if status != TaskStatus.PENDING_APPROVAL:
                await self._show_files()
            await self.set_working(False)
            self.paused.set()

    async def _plan(self, steps: list[str]) -> None:
        await self._settle_draft()
        self.plans += 1
        text = render.plan_text(steps, revised=self.plans > 1)
        await self._upsert(cl.Message(content=text, id=render.plan_id(self.task_id),
                                      parent_id=self.parent_id, author=render.CHAT_NAME),
                           new=self.plans == 1)

    async def _thought(self, data: ThoughtData) -> None:
        text = data.text
        if data.node == "act":
            # Reasoning if tool calls follow, else the answer the verifier is about to check.
            self._act_thought = text
            return
        self._act_thought = ""
        await self._llm_step("check", text)

    def _parent(self, agent: str) -> str:
        """Where an agent's steps hang: a team's worker's in its own step."""
        return render.agent_step_id(self.task_id, agent) if is_worker(agent) \
            else self.parent_id

    async def _agent(self, data: AgentData) -> None:
        step = self._agents.get(data.to)
        if step is None:
            step = cl.Step(name=data.to, type="run", id=render.agent_step_id(self.task_id, data.to),
                           parent_id=self.parent_id, default_open=True)
            step.input = data.task
            step.start = _now()
            self._agents[data.to] = step
        if data.status == "started":
            step.output = "Working..."
            await step.send()
            return
        step.output = render.agent_output(data.status == "returned", data.result, data.stop,
                                          data.message)
        step.is_error = data.status == "failed"
        step.end = _now()
        await step.update()

    async def _tool_call(self, data: ToolCallData) -> None:
        call_id = f"{data.agent}:{data.id or len(self._tools)}"
        text, language = render.tool_input(data.arguments)
        step = cl.Step(name=data.name or "tool", type="tool",
                       id=render.tool_step_id(self.task_id, data.id or str(len(self._tools)),
                                              data.agent),
                       parent_id=self._parent(data.agent), show_input=language)
        step.input = text
        step.start = _now()
        self._tools[call_id] = step
        await step.send()

    async def _tool_result(self, data: ToolResultData) -> None:
        call_id = data.id
        step = self._tools.get(f"{data.agent}:{call_id}")
        if step is None:  # its call was shown before this session started following
            step = cl.Step(name=data.name or "tool", type="tool",
                           id=render.tool_step_id(self.task_id, call_id or str(len(self._tools)),
                                                  data.agent),
                           parent_id=self._parent(data.agent), show_input="json")
            step.start = _now()
            await step.send()
        step.output = data.content or "(no output)"
        step.is_error = not data.ok
        step.end = _now()
        await step.update()
        await self._show_files()

    async def _approval(self, data: ApprovalRequiredData) -> None:
        approval_id = data.approval_id
        shown = (data.tool, data.arguments, data.reason, data.agent)
        self._pending[approval_id] = shown
        for step in self._tools.values():
            if step.name == shown[0] and step.end is None and not step.output:
                step.output = "Waiting for your approval (below)."
                await step.update()
        await cl.Message(content=render.approval_text(*shown[:3], agent=data.agent),
                         id=render.approval_message_id(approval_id), parent_id=self.parent_id,
                         author=render.CHAT_NAME,
                         actions=approval_actions(self.task_id, approval_id)).send()

    async def offer_pending(self, approvals: list[dict[str, Any]]) -> None:
        """Put back the buttons of approvals still waiting (a reopened chat shows their
        messages from the history, but Chainlit keeps no actions)."""
        for approval in approvals:
            self._pending[approval["id"]] = (approval["tool"], approval["arguments"],
                                             approval["reason"], approval.get("agent", "cadre"))
            for action in approval_actions(self.task_id, approval["id"]):
                await action.send(for_id=render.approval_message_id(approval["id"]))

    async def _decided(self) -> None:
        """Someone decided (here, in another tab, through the API): drop the buttons, say how."""
        if not self._pending:
            return
        task = await self.ui.service.get(self.who, self.task_id)
        for approval in task["approvals"]:
            shown = self._pending.get(approval["id"])
            if shown is None or approval["status"] == "PENDING":
                continue
            del self._pending[approval["id"]]
            for action in approval_actions(self.task_id, approval["id"]):
                await action.remove()
            await cl.Message(content=render.approval_text(
                *shown[:3], status=approval["status"], comment=approval["comment"],
                agent=shown[3]),
                id=render.approval_message_id(approval["id"]), parent_id=self.parent_id,
                author=render.CHAT_NAME).update()

    async def _token(self, text: str) -> None:
        if self._answer is None:
            self._answer = cl.Message(content="", id=render.answer_id(self.task_id),
                                      parent_id=self.parent_id, author=render.CHAT_NAME)
        await self._answer.stream_token(text)

    async def _final(self, output: Any, cached_from: dict[str, Any] | None = None) -> None:
        self._act_thought = ""
        answer = self._answer or cl.Message(content="", id=render.answer_id(self.task_id),
                                            parent_id=self.parent_id, author=render.CHAT_NAME)
        answer.content = str(output or "") + render.cached_note(cached_from) \
            + await self._trace_link()
        answer.actions = [share_action(self.conversation_id, self.task_id),
                          *await self._retries()]
        if cached_from:
            answer.actions.append(run_again_action(self.task_id))
        await self._show_files()
        await self._upsert(answer, new=not self._answer_sent)
        self._answer, self._answer_sent = answer, True

    async def _error(self, data: ErrorData) -> None:
        await self._settle_draft()
        await self._show_files()
        status = TaskStatus.CANCELLED if data.type == "cancelled" else TaskStatus.FAILED
        message = cl.Message(content=render.error_text(data.model_dump(), status)
                             + await self._trace_link(),
                             id=render.answer_id(self.task_id), parent_id=self.parent_id,
                             author=render.CHAT_NAME)
        message.is_error = True
        message.actions = await self._retries()
        await message.send()

    async def _retries(self) -> list[cl.Action]:
        """"Retry after ..." for each tool step of the task's record (this view may have
        followed only its end, after a reload)."""
        task = await self.ui.service.get(self.who, self.task_id)
        return [retry_action(self.task_id, step.number, step.tool)
                for step in task["steps"] if isinstance(step, ToolRan)]

    # -- helpers ---------------------------------------------------------------------------

    async def _trace_link(self) -> str:
        if not self.ui.settings.trace_url:
            return ""
        task = await self.ui.service.owned(self.who, self.task_id)
        return render.trace_link(self.ui.settings.trace_url, task.get("trace_context"))

    async def _settle_draft(self) -> None:
        """Text the model wrote before calling a tool (or before a re-plan, or a failure) was
        not the answer: move it out of the answer message into a reasoning step."""
        text, self._act_thought = self._act_thought, ""
        if self._answer is not None and not self._answer_sent:
            draft, self._answer = self._answer, None
            text = text or draft.content
            await draft.remove()
        if text:
            await self._llm_step("reasoning", text)

    async def _llm_step(self, name: str, text: str, *, parent: str | None = None) -> None:
        step = cl.Step(name=name, type="llm", parent_id=parent or self.parent_id)
        step.output = text
        step.start = step.end = _now()
        await step.send()

    async def _show_files(self) -> None:
        """Artifacts new or changed since last shown: images inline, others as downloads."""
        artifacts = await self.ui.artifacts.list(self.task_id)
        fresh = [a for a in artifacts if self._shown_files.get(a.name) != a.sha256]
        if not fresh:
            return
        for artifact in fresh:
            self._shown_files[artifact.name] = artifact.sha256
        elements: list[Any] = []
        for artifact in fresh:
            spec = render.artifact_element(self.task_id, self.conversation_id, name=artifact.name,
                                           content_type=artifact.content_type,
                                           sha256=artifact.sha256)
            if spec["type"] == "image":
                elements.append(cl.Image(name=artifact.name, url=spec["url"], display="inline",
                                         mime=artifact.content_type, id=spec["id"], size="large"))
            else:
                elements.append(cl.File(name=artifact.name, url=spec["url"], display="inline",
                                        mime=artifact.content_type, id=spec["id"]))
        message = cl.Message(content=render.files_text(list(self._shown_files)),
                             id=render.files_id(self.task_id), parent_id=self.parent_id,
                             author=render.CHAT_NAME)
        if self._files_sent:
            await message.update()
            for element in elements:
                await element.send(for_id=message.id)
        else:
            message.elements = list(elements)
            await message.send()
            self._files_sent = True

    async def _upsert(self, message: cl.Message, *, new: bool) -> None:
        if new:
            await message.send()
        else:
            await message.update()

    async def set_working(self, on: bool) -> None:
        """Chainlit's "working" indicator, and with it the Stop button."""
        if on == self.working:
            return
        self.working = on
        with contextlib.suppress(Exception):  # the browser may be gone
            if on:
                await context.emitter.task_start()
            else:
                await context.emitter.task_end()


def _now() -> str:
    return str(utc_now())
