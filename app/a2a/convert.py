"""Cadre's tasks and events as A2A types, and A2A messages as Cadre's input: the one place
the two vocabularies meet. A Cadre task is the A2A task (same id; its conversation is the
context); each step is a `working` status update whose message says what happened in words
and carries the Cadre event as a data part; the answer and the files the task wrote are
artifacts; `PENDING_APPROVAL` is `input-required`, its message naming the held call."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from a2a.helpers import get_data_parts, new_data_part
from a2a.types import (
    Artifact,
    InvalidParamsError,
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from pydantic import ValidationError

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
    agent_text,
    cache_text,
)
from graph.approvals import ApprovalDecision
from graph.status import TaskStatus as CadreStatus
from tools.artifacts import Artifact as CadreArtifact

StreamEvent = Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent

STATES = {
    CadreStatus.QUEUED: TaskState.TASK_STATE_SUBMITTED,
    CadreStatus.RUNNING: TaskState.TASK_STATE_WORKING,
    CadreStatus.PENDING_APPROVAL: TaskState.TASK_STATE_INPUT_REQUIRED,
    CadreStatus.SUCCEEDED: TaskState.TASK_STATE_COMPLETED,
    CadreStatus.FAILED: TaskState.TASK_STATE_FAILED,
    CadreStatus.CANCELLED: TaskState.TASK_STATE_CANCELED,
}
ANSWER = "answer"
MAX_INPUT_CHARS = 20_000  # as POST /v1/tasks
MAX_FILES = 10
_YES = frozenset({"approve", "approved", "yes", "y", "ok", "allow"})
_NO = frozenset({"reject", "rejected", "no", "n", "deny"})
_HOW_TO_DECIDE = ('Reply "approve" or "reject", optionally followed by a comment, or with a data '
                  'part {"decision": "approve" | "reject", "comment": "..."}.')


def a2a_task(task: dict[str, Any], files: list[CadreArtifact], base_url: str) -> Task:
    """A task as `TaskService.get` returns it (with its approvals), with the files it wrote."""
    task_id, context_id = str(task["id"]), str(task["conversation_id"])
    status = CadreStatus(task["status"])
    message: Message | None = None
    pending = [a for a in task.get("approvals", ()) if a["status"] == "PENDING"]
    if status is CadreStatus.PENDING_APPROVAL and pending:
        held = pending[-1]
        message = _approval_message(task_id, context_id, held["id"], held["tool"],
                                    held["arguments"], held["reason"], held["risk"])
    elif status in (CadreStatus.FAILED, CadreStatus.CANCELLED) and task.get("error"):
        message = _agent_message(task_id, context_id, "end",
                                 str(task["error"].get("message") or task["error"].get("type")))
    artifacts = [file_artifact(task_id, a, base_url) for a in files]
    if status is CadreStatus.SUCCEEDED and task.get("final_output") is not None:
        artifacts.insert(0, answer_artifact(task["final_output"]))
    return Task(
        id=task_id, context_id=context_id, artifacts=artifacts,
        status=TaskStatus(state=STATES[status], message=message, timestamp=task["updated_at"]),
        history=[Message(role=Role.ROLE_USER, message_id=f"{task_id}-input", task_id=task_id,
                         context_id=context_id, parts=[Part(text=task["input"])])])


def answer_artifact(text: str) -> Artifact:
    return Artifact(artifact_id=ANSWER, name=ANSWER, description="The task's answer",
                    parts=[Part(text=text, media_type="text/markdown")])


def file_artifact(task_id: str, artifact: CadreArtifact, base_url: str) -> Artifact:
    """A file the task wrote, as a link to its download (`GET /v1/tasks/{id}/artifacts/{name}`,
    with the same API key)."""
    return Artifact(
        artifact_id=f"file:{artifact.name}", name=artifact.name,
        parts=[Part(url=f"{base_url}/v1/tasks/{task_id}/artifacts/{quote(artifact.name)}",
                    media_type=artifact.content_type, filename=artifact.name.rpartition("/")[2])],
        metadata={"size_bytes": artifact.size_bytes, "sha256": artifact.sha256})


@dataclass
class Translator:
    """One follower's translation of a task's events; it remembers why the task failed, for
    the terminal status that follows."""

    task_id: str
    context_id: str
    error: str | None = None

    def events(self, event: Event) -> list[StreamEvent]:
        data = event.data
        if isinstance(data, FinalData):
            return [TaskArtifactUpdateEvent(task_id=self.task_id, context_id=self.context_id,
                                            artifact=answer_artifact(data.output or ""),
                                            last_chunk=True)]
        if isinstance(data, ErrorData):
            self.error = data.message or data.type
            return []
        if isinstance(data, ApprovalRequiredData):
            return [self._status(event, TaskState.TASK_STATE_INPUT_REQUIRED, _approval_message(
                self.task_id, self.context_id, data.approval_id, data.tool, data.arguments,
                data.reason, data.risk))]
        if isinstance(data, StatusData):
            return self._status_change(event, data)
        text = describe(data)
        if text is None:
            return []
        return [self._status(event, TaskState.TASK_STATE_WORKING, self._step_message(event, text))]

    def _status_change(self, event: Event, data: StatusData) -> list[StreamEvent]:
        if data.status == CadreStatus.PENDING_APPROVAL:
            return []  # said by the approval_required event just before
        if data.status == CadreStatus.QUEUED and data.approval is not None:
            said = "approved: the task goes on" if data.approval == "APPROVED" else \
                "rejected: the task goes on without that call"
            return [self._status(event, TaskState.TASK_STATE_WORKING,
                                 self._step_message(event, said))]
        message = None
        if data.status in (CadreStatus.FAILED, CadreStatus.CANCELLED) and self.error:
            message = self._step_message(event, self.error)
        return [self._status(event, STATES[data.status], message)]

    def _status(self, event: Event, state: TaskState, message: Message | None) -> StreamEvent:
        return TaskStatusUpdateEvent(
            task_id=self.task_id, context_id=self.context_id, metadata={"cadre_event_id": event.id},
            status=TaskStatus(state=state, message=message))

    def _step_message(self, event: Event, text: str) -> Message:
        return Message(role=Role.ROLE_AGENT, message_id=f"{self.task_id}-{event.id}",
                       task_id=self.task_id, context_id=self.context_id, parts=[
                           Part(text=text), new_data_part({"type": event.type,
                                                           **event.data.model_dump(mode="json")})])


def describe(data: Any) -> str | None:
    """A step in a line of words; None for what is not a step (tokens: the answer comes whole
    as an artifact)."""
    match data:
        case PlanData():
            return ("Revised plan: " if data.revised else "Plan: ") + "; ".join(
                f"{item.number}. {item.description}" for item in data.plan)
        case ThoughtData():
            return data.text
        case ToolCallData():
            return f"Calling {data.name} with {json.dumps(data.arguments, default=str)}"
        case ToolResultData():
            return f"{data.name}: {'done' if data.ok else 'failed'}. {_short(data.content)}"
        case ModelCallData():
            return f"Model call ({data.node}): {data.tokens_in} tokens in, {data.tokens_out} out"
        case CacheData():
            return cache_text(data).capitalize()
        case AgentData():
            text = agent_text(data)
            return text[:1].upper() + text[1:]
        case TokenData():
            return None
    return None


def _approval_message(task_id: str, context_id: str, approval_id: str, tool: str,
                      arguments: dict[str, Any], reason: str, risk: str) -> Message:
    """What a waiting task asks, the same whether streamed or read back."""
    text = (f"Cadre wants to run {tool} with {json.dumps(arguments, default=str)}: {reason} "
            f"{_HOW_TO_DECIDE}")
    return Message(role=Role.ROLE_AGENT, message_id=f"{task_id}-approval-{approval_id}",
                   task_id=task_id, context_id=context_id, parts=[Part(text=text), new_data_part({
                       "type": "approval_required", "approval_id": approval_id, "tool": tool,
                       "arguments": arguments, "risk": risk, "reason": reason})])


def _agent_message(task_id: str, context_id: str, suffix: str, text: str) -> Message:
    return Message(role=Role.ROLE_AGENT, message_id=f"{task_id}-{suffix}", task_id=task_id,
                   context_id=context_id, parts=[Part(text=text)])


def _short(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


# -- what a client sends -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Input:
    """A new task from a message: its text and the files to upload with it."""

    text: str
    files: list[tuple[str, bytes]]


def message_input(message: Message) -> Input:
    """Text parts (and data parts, as JSON) make the task's input; file parts with their
    bytes are uploaded for it. Files by URL are refused: the API fetches nothing for a
    client."""
    texts, files = [], []
    for n, part in enumerate(message.parts):
        kind = part.WhichOneof("content")
        if kind == "text":
            texts.append(part.text)
        elif kind == "data":
            texts.append(json.dumps(get_data_parts([part])[0], ensure_ascii=False))
        elif kind == "raw":
            files.append((part.filename or f"upload-{n + 1}", part.raw))
        elif kind == "url":
            raise InvalidParamsError(message="file parts need their bytes (`raw`): Cadre does "
                                             "not fetch files from URLs")
    text = "\n\n".join(t for t in texts if t.strip())
    if not text:
        raise InvalidParamsError(message="the message needs a text part saying what to do")
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidParamsError(message=f"the message's text is over {MAX_INPUT_CHARS} "
                                         "characters")
    if len(files) > MAX_FILES:
        raise InvalidParamsError(message=f"at most {MAX_FILES} files per message")
    return Input(text=text, files=files)


def decision_of(message: Message) -> ApprovalDecision:
    """The decision a reply to an `input-required` task carries: a data part
    `{"decision": "approve" | "reject", "comment", "approval_id"}`, or text whose first word
    is approve / yes / ok or reject / no / deny, the rest its comment."""
    fields: dict[str, Any] = {}
    for data in get_data_parts(list(message.parts)):
        if isinstance(data, dict) and "decision" in data:
            fields = {k: data[k] for k in ("decision", "comment", "approval_id") if k in data}
            if isinstance(fields["decision"], str):
                fields["decision"] = fields["decision"].lower()
            break
    else:
        text = " ".join(p.text for p in message.parts if p.HasField("text")).strip()
        word, _, rest = text.partition(" ")
        word = word.strip(".,;:!").lower()
        verdict: Literal["approve", "reject"] | None = \
            "approve" if word in _YES else "reject" if word in _NO else None
        if verdict is None:
            raise InvalidParamsError(message=f"the task is waiting for a decision. {_HOW_TO_DECIDE}")
        fields = {"decision": verdict, "comment": rest.strip(" .,;:-")}
    try:
        return ApprovalDecision.model_validate(fields)
    except ValidationError as exc:
        raise InvalidParamsError(message=f"the decision: {exc.errors()[0]['msg']}") from None
