"""Task events on Redis Streams: one capped stream per task, for replay (`Last-Event-ID`) and
live fan-out to any number of followers (`app/streams.py`). Step events also land in
`agent_logs`, so history never depends on Redis; a stream expires a day after its task ends."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import Redis

EventType = Literal["status", "plan", "thought", "token", "tool_call", "tool_result",
                    "approval_required", "final", "error"]
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
MAXLEN = 10_000
TTL_AFTER_END_SECONDS = 24 * 3600


@dataclass(kw_only=True, eq=False)
class Event:
    """One event. The same object reaches every follower of a process, so what is sent is
    encoded once (`sse`, `json_text`), not once per follower."""

    id: str
    type: EventType
    data: dict[str, Any]
    # The data as JSON text, as stored (when read from Redis).
    raw: str | None = None

    @property
    def ends_stream(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "data": self.data}

    @functools.cached_property
    def position(self) -> tuple[int, int]:
        """The stream id as a sortable pair (ids from Redis are always `<ms>-<seq>`)."""
        ms, _, seq = self.id.partition("-")
        return int(ms or 0), int(seq or 0)

    @functools.cached_property
    def _data_text(self) -> str:
        return self.raw if self.raw is not None else json.dumps(self.data, default=str)

    @functools.cached_property
    def sse(self) -> bytes:
        """The event as a Server-Sent Events frame."""
        head = f"id: {self.id}\n" if self.id else ""
        return f"{head}event: {self.type}\ndata: {self._data_text}\n\n".encode()

    @functools.cached_property
    def json_text(self) -> str:
        """`to_json()` as text (what a WebSocket sends)."""
        return f'{{"id": {json.dumps(self.id)}, "type": "{self.type}", "data": {self._data_text}}}'


def stream_key(task_id: str) -> str:
    return f"cadre:events:{task_id}"


class EventLog:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def publish(self, task_id: str, type: EventType, data: dict[str, Any]) -> str:
        event_id = await self._redis.xadd(
            stream_key(task_id), {"type": type, "data": json.dumps(data, default=str)},
            maxlen=MAXLEN, approximate=True,
        )
        if type == "status" and data.get("status") in TERMINAL_STATUSES:
            await self._redis.expire(stream_key(task_id), TTL_AFTER_END_SECONDS)
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

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
    return Event(id=event_id.decode() if isinstance(event_id, bytes) else str(event_id),
                 type=cast(EventType, decoded["type"]), data=json.loads(decoded["data"]),
                 raw=decoded["data"])
