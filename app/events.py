"""Task events: typed, versioned, on Redis Streams. One capped stream per task, for replay
(`Last-Event-ID`) and live fan-out to any number of followers (`app/streams.py`). Every
event's data is one of the models below (the OpenAPI document lists them, so clients can
generate types); `schema_version` changes only when a model changes incompatibly. Step
events are made from the run's typed steps by one translator (`step_events`), and the steps
also land in `agent_logs`, so history never depends on Redis; a stream expires a day after
its task ends."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal, assert_never

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from redis.asyncio import Redis

from graph.fence import LeaseLost
from graph.status import TERMINAL, TaskStatus
from graph.steps import (
    AgentDelegated,
    AgentReturned,
    AnswerChecked,
    ModelCalled,
    NotRunWhy,
    PlanItem,
    PlanMade,
    RunStopped,
    Step,
    ToolHeld,
    ToolNotRun,
    ToolProposed,
    ToolRan,
    is_worker,
)
from guardrails import Risk

MAXLEN = 10_000
TTL_AFTER_END_SECONDS = 24 * 3600
SCHEMA_VERSION = 1

EventType = Literal["status", "plan", "thought", "token", "tool_call", "tool_result",
                    "model_call", "approval_required", "final", "error", "cache", "agent"]


class EventData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    event_type: ClassVar[EventType]

    schema_version: int = SCHEMA_VERSION


class _StepData(EventData):
    step: int = Field(description="The step of the run this event shows (agent_logs.step_number)")
    agent: str = Field("cadre", description="The agent that took it")


class StatusData(EventData):
    """The task's status changed. `approval` says why a held task is queued again."""

    event_type: ClassVar[EventType] = "status"
    status: TaskStatus
    worker: str | None = None
    approval: Literal["APPROVED", "REJECTED"] | None = None


class PlanData(_StepData):
    """The plan, written or revised."""

    event_type: ClassVar[EventType] = "plan"
    plan: list[PlanItem]
    revised: bool = False


class ThoughtData(_StepData):
    """What the model said beside its tool calls (`act`), or the checker's verdict on the
    answer (`verify`, with `met`)."""

    event_type: ClassVar[EventType] = "thought"
    node: Literal["act", "verify"]
    text: str
    met: bool | None = None


class TokenData(EventData):
    """A piece of text as the model streams it."""

    event_type: ClassVar[EventType] = "token"
    text: str


class ToolCallData(_StepData):
    """The model asked for a tool call."""

    event_type: ClassVar[EventType] = "tool_call"
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResultData(_StepData):
    """A tool call's result, or why it did not run (`not_run`)."""

    event_type: ClassVar[EventType] = "tool_result"
    id: str
    name: str
    ok: bool
    content: str
    replayed: bool = False
    untrusted: bool = False
    flags: list[str] = Field(default_factory=list)
    not_run: NotRunWhy | None = None
    speculative: bool = Field(default=False, description="Started before the model asked for it")
    saved_ms: int = Field(default=0, description="How much of a speculative call had run by then")


class ModelCallData(_StepData):
    """One model call and its cost."""

    event_type: ClassVar[EventType] = "model_call"
    node: Literal["plan", "act", "verify"]
    model: str
    tokens_in: int
    tokens_out: int
    tokens_estimated: bool = False
    latency_ms: int
    finish_reason: str | None = None


class AgentData(_StepData):
    """A team's worker agent (`to`, its path) started a step of the manager's plan
    (`started`, with its `task`), or came back (`returned` with its `result`, or `failed`
    with why it stopped and what it had). `agent` is the manager; the worker's own steps
    carry its path as their `agent`."""

    event_type: ClassVar[EventType] = "agent"
    to: str
    profile: str = ""
    plan_step: int
    status: Literal["started", "returned", "failed"]
    task: str = ""
    result: str = ""
    stop: str | None = None
    message: str = ""
    tokens_in: int = 0
    tokens_out: int = 0


class ApprovalRequiredData(EventData):
    """A tool call waits for a person: decide it at /v1/tasks/{id}/approvals/{approval_id}."""

    event_type: ClassVar[EventType] = "approval_required"
    approval_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    risk: Risk
    reason: str
    rule: str | None = None
    # Which agent asks: a team's worker by its path.
    agent: str = "cadre"


class FinalData(EventData):
    """The accepted answer."""

    event_type: ClassVar[EventType] = "final"
    output: str | None
    usage: dict[str, int] | None = None
    # A team's usage per agent path: the manager's own and each worker's.
    agents: dict[str, dict[str, int]] | None = None
    # Answered from the semantic task cache: the earlier task and when it answered.
    cached_from: dict[str, Any] | None = None


class CacheData(EventData):
    """What the semantic task cache found for this task: `hit` (the answer of `source_task`,
    from `cached_at`, follows as `final`, with no run), `near_miss` (the closest earlier task
    was a little below the threshold: the task runs), `miss` (it runs), `bypassed` (the task
    asked to run again), or none (the task did not ask). `plan_from`: the earlier task whose
    plan the planner starts from."""

    event_type: ClassVar[EventType] = "cache"
    # None: the task did not ask for the cache; only `plan_from` is news.
    outcome: Literal["hit", "miss", "near_miss", "bypassed"] | None = None
    source_task: str | None = None
    cached_at: datetime | None = None
    similarity: float | None = None
    threshold: float | None = None
    plan_from: str | None = None


def cache_text(data: CacheData) -> str:
    """A cache event in a line of words (MCP progress, A2A status)."""
    match data.outcome:
        case "hit":
            return (f"answered from the cache: task {data.source_task} answered the same "
                    f"request at {data.cached_at:%Y-%m-%d %H:%M} UTC (similarity "
                    f"{data.similarity})" if data.cached_at else "answered from the cache")
        case "near_miss":
            return (f"not cached: the closest earlier task ({data.source_task}) is "
                    f"{data.similarity} alike, below {data.threshold}")
        case "bypassed":
            return "running anew: the cache was bypassed"
        case None:
            return f"starting from the plan of task {data.plan_from}"
    return "not in the cache"


def agent_text(data: AgentData) -> str:
    """A worker agent's start or return in a line of words (MCP progress, A2A status)."""
    if data.status == "started":
        return f"{data.to} started step {data.plan_step}: {data.task}"
    if data.status == "returned":
        return f"{data.to} returned step {data.plan_step}"
    return f"{data.to} stopped on step {data.plan_step} ({data.stop}): {data.message}"


class ErrorData(EventData):
    """Why the task failed or was cancelled (`type`, e.g. budget_exceeded), with what it had
    produced so far (`partial`)."""

    event_type: ClassVar[EventType] = "error"
    type: str = "failed"
    message: str = ""
    partial: str | None = None


# Every event's data is one of these; consumers match them all (`assert_never`).
AnyEventData = (StatusData | PlanData | ThoughtData | TokenData | ToolCallData | ToolResultData
                | ModelCallData | ApprovalRequiredData | FinalData | ErrorData | CacheData
                | AgentData)
EVENT_MODELS: dict[str, type[AnyEventData]] = {m.event_type: m for m in (
    StatusData, PlanData, ThoughtData, TokenData, ToolCallData, ToolResultData, ModelCallData,
    ApprovalRequiredData, FinalData, ErrorData, CacheData, AgentData)}


def step_events(step: Step) -> list[AnyEventData]:
    """The live events that show one step of the run: the one translator from steps to
    events. A step a follower need not see (a held call: `approval_required` follows it once
    the approval exists; a stop: `error` and `status` follow) has none."""
    n, agent = step.number, step.agent
    match step:
        case PlanMade():
            return [PlanData(plan=step.steps, revised=step.revised, step=n, agent=agent)]
        case ModelCalled():
            events: list[AnyEventData] = [ModelCallData(
                node=step.purpose, model=step.model, tokens_in=step.tokens_in,
                tokens_out=step.tokens_out, tokens_estimated=step.tokens_estimated,
                latency_ms=step.latency_ms,
                finish_reason=step.finish_reason, step=n, agent=agent)]
            # A team worker's answer comes back in its `agent` event; what it said beside
            # tool calls is its reasoning.
            if step.purpose == "act" and step.text and (not is_worker(agent) or step.tool_calls):
                events.append(ThoughtData(node="act", text=step.text, step=n, agent=agent))
            return events
        case ToolProposed():
            return [ToolCallData(id=step.call_id, name=step.tool, arguments=step.arguments,
                                 step=n, agent=agent)]
        case ToolHeld():
            return []
        case ToolNotRun():
            return [ToolResultData(id=step.call_id, name=step.tool, ok=False, content=step.message,
                                   not_run=step.why, step=n, agent=agent)]
        case ToolRan():
            return [ToolResultData(id=step.call_id, name=step.tool, ok=step.ok,
                                   content=step.content, replayed=step.replayed,
                                   untrusted=step.untrusted, flags=step.flags,
                                   speculative=step.speculative, saved_ms=step.saved_ms,
                                   step=n, agent=agent)]
        case AnswerChecked():
            return [ThoughtData(node="verify", text=f"goal met: {step.met}. {step.reason}",
                                met=step.met, step=n, agent=agent)]
        case AgentDelegated():
            return [AgentData(to=step.to, profile=step.profile, plan_step=step.plan_step,
                              status="started", task=step.task, step=n, agent=agent)]
        case AgentReturned():
            return [AgentData(to=step.to, plan_step=step.plan_step,
                              status="returned" if step.ok else "failed", result=step.result,
                              stop=step.stop, message=step.message, tokens_in=step.tokens_in,
                              tokens_out=step.tokens_out, step=n, agent=agent)]
        case RunStopped():
            return []
        case _:
            assert_never(step)


@dataclass(kw_only=True, eq=False)
class Event:
    """One event. The same object reaches every follower of a process, so what is sent is
    encoded once (`sse`, `json_text`), not once per follower."""

    id: str
    data: AnyEventData

    @property
    def type(self) -> EventType:
        return self.data.event_type

    @property
    def ends_stream(self) -> bool:
        return isinstance(self.data, StatusData) and self.data.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "data": self.data.model_dump(mode="json")}

    @functools.cached_property
    def position(self) -> tuple[int, int]:
        """The stream id as a sortable pair (ids from Redis are always `<ms>-<seq>`)."""
        ms, _, seq = self.id.partition("-")
        return int(ms or 0), int(seq or 0)

    @functools.cached_property
    def data_text(self) -> str:
        return self.data.model_dump_json()

    @functools.cached_property
    def sse(self) -> bytes:
        """The event as a Server-Sent Events frame."""
        head = f"id: {self.id}\n" if self.id else ""
        return f"{head}event: {self.type}\ndata: {self.data_text}\n\n".encode()

    @functools.cached_property
    def json_text(self) -> str:
        """`to_json()` as text (what a WebSocket sends)."""
        return f'{{"id": {json.dumps(self.id)}, "type": "{self.type}", "data": {self.data_text}}}'


def stream_key(task_id: str) -> str:
    return f"cadre:events:{task_id}"


def epoch_key(task_id: str) -> str:
    return f"cadre:events:{task_id}:epoch"


# Append a task's events at once, unless a newer lease epoch than the caller's has claimed the
# task (a run another worker took over publishes nothing more). KEYS: stream, epoch key.
# ARGV: the caller's epoch ('' when unfenced), MAXLEN, seconds to keep after the end ('0'
# while running), then type and data of each event. Returns the new ids, or nil when fenced.
_PUBLISH = """
if ARGV[1] ~= '' then
  local held = redis.call('GET', KEYS[2])
  if held and tonumber(held) > tonumber(ARGV[1]) then return false end
end
local ids = {}
for i = 4, #ARGV, 2 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
                             'type', ARGV[i], 'data', ARGV[i + 1])
end
if ARGV[3] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return ids
"""

# Claim the task's events for a lease epoch: from now on an older epoch's publish is refused.
# Returns the epoch that holds the events (higher than ARGV[1] when a newer run already has).
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and tonumber(held) >= tonumber(ARGV[1]) then return tonumber(held) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return tonumber(ARGV[1])
"""
# How long a claim outlives its last write (a task may wait days for an approval; a run
# stalled longer than this has long lost its lease in Postgres too).
CLAIM_SECONDS = 7 * 24 * 3600


class EventLog:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._publish = redis.register_script(_PUBLISH)
        self._claim = redis.register_script(_CLAIM)

    async def publish(self, task_id: str, data: AnyEventData, *, epoch: int | None = None) -> str:
        """Append one event; with `epoch` (the run's lease) refused once a newer run claimed
        the task (`LeaseLost`)."""
        return (await self.publish_all(task_id, [data], epoch=epoch))[0]

    async def publish_all(self, task_id: str, events: list[AnyEventData], *,
                          epoch: int | None = None) -> list[str]:
        """Append these events together (all or none), as `publish`."""
        if not events:
            return []
        ends = any(isinstance(d, StatusData) and d.status in TERMINAL for d in events)
        args: list[Any] = ["" if epoch is None else epoch, MAXLEN,
                           TTL_AFTER_END_SECONDS if ends else 0]
        for data in events:
            args += [data.event_type, data.model_dump_json()]
        ids = await self._publish(keys=[stream_key(task_id), epoch_key(task_id)], args=args)
        if ids is None:
            raise LeaseLost(f"task {task_id}: a newer run than epoch {epoch} publishes its events")
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def claim(self, task_id: str, epoch: int) -> None:
        """Make `epoch` the only run whose fenced events are taken (`LeaseLost` if a newer
        one already is)."""
        held = int(await self._claim(keys=[epoch_key(task_id)], args=[epoch, CLAIM_SECONDS]))
        if held > epoch:
            raise LeaseLost(f"task {task_id}: a newer run (epoch {held}) publishes its events")

    async def history(self, task_id: str, after: str | None = None, *,
                      count: int | None = None) -> list[Event]:
        """The task's events after `after` (all when None), oldest first, at most `count`."""
        start = f"({after}" if after else "-"
        rows: Any = await self._redis.xrange(stream_key(task_id), min=start, max="+", count=count)
        return [decode_event(event_id, fields) for event_id, fields in rows]

    async def last_id(self, task_id: str) -> str | None:
        """The id of the task's newest event, None when it has none."""
        rows: Any = await self._redis.xrevrange(stream_key(task_id), count=1)
        return decode_event(*rows[0]).id if rows else None

    async def terminal(self, task_id: str) -> Event | None:
        """The task's last event if it is the terminal status (the stream has ended)."""
        rows: Any = await self._redis.xrevrange(stream_key(task_id), count=1)
        event = decode_event(*rows[0]) if rows else None
        return event if event is not None and event.ends_stream else None


def decode_event(event_id: Any, fields: dict[Any, Any]) -> Event:
    decoded = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                              else v) for k, v in fields.items()}
    model = EVENT_MODELS[decoded["type"]]
    try:
        data = model.model_validate_json(decoded["data"])
    except ValidationError:
        # Written by an older version (streams live a day): shown as it was stored.
        data = model.model_construct(**json.loads(decoded["data"]))
    return Event(id=event_id.decode() if isinstance(event_id, bytes) else str(event_id),
                 data=data)


def event_schemas() -> tuple[list[type[BaseModel]], list[str]]:
    """Models of the stream's messages (`{id, type, data}`, as the WebSocket sends them; an
    SSE frame carries the same as `id:`, `event:` and `data:` lines), for the OpenAPI
    document; and the event types."""
    envelopes: list[type[BaseModel]] = []
    for kind, model in EVENT_MODELS.items():
        name = "".join(part.title() for part in kind.split("_")) + "Event"
        envelopes.append(create_model(
            name, __doc__=model.__doc__, id=(str, ...),
            type=(Literal[kind], ...), data=(model, ...)))  # type: ignore[arg-type]
    return envelopes, list(EVENT_MODELS)


class StepPublisher:
    """A step recorder that shows each new step to the task's followers."""

    def __init__(self, events: EventLog, *, epoch: int | None = None) -> None:
        self._events = events
        self._epoch = epoch

    async def record(self, task_id: str, step: Step) -> bool:
        # A step's events go together: a crash leaves none of them or all.
        await self._events.publish_all(task_id, step_events(step), epoch=self._epoch)
        return True

    async def record_all(self, task_id: str, steps: Sequence[Step]) -> list[bool]:
        """Steps a node made together: their events in one append, in order."""
        await self._events.publish_all(task_id, [e for s in steps for e in step_events(s)],
                                       epoch=self._epoch)
        return [True] * len(steps)
