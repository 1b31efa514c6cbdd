"""Task events on Redis Streams: one capped stream per task, for replay (`Last-Event-ID`) and
live fan-out to any number of SSE/WebSocket followers. Step events also land in
`agent_logs`, so history never depends on Redis; a stream expires a day after its task ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import Redis

EventType = Literal["status", "plan", "thought", "token", "tool_call", "tool_result",
                    "approval_required", "final", "error"]
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
MAXLEN = 10_000
TTL_AFTER_END_SECONDS = 24 * 3600


@dataclass(frozen=True, kw_only=True)
class Event:
    id: str
    type: EventType
    data: dict[str, Any]

    @property
    def ends_stream(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "data": self.data}


def _key(task_id: str) -> str:
    return f"cadre:events:{task_id}"


class EventLog:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def publish(self, task_id: str, type: EventType, data: dict[str, Any]) -> str:
        event_id = await self._redis.xadd(
            _key(task_id), {"type": type, "data": json.dumps(data, default=str)},
            maxlen=MAXLEN, approximate=True,
        )
        if type == "status" and data.get("status") in TERMINAL_STATUSES:
            await self._redis.expire(_key(task_id), TTL_AFTER_END_SECONDS)
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    async def history(self, task_id: str, after: str | None = None) -> list[Event]:
        start = f"({after}" if after else "-"
        rows: Any = await self._redis.xrange(_key(task_id), min=start, max="+")
        return [_event(event_id, fields) for event_id, fields in rows]

    async def follow(self, task_id: str, after: str | None = None, *,
                     heartbeat_seconds: float = 15.0) -> AsyncIterator[Event | None]:
        """Events after `after` (all, if None), then live ones, until the terminal status.
        Yields None when nothing happened for `heartbeat_seconds` (time for a keep-alive)."""
        last = after or "0-0"
        while True:
            batch: Any = await self._redis.xread({_key(task_id): last}, count=200,
                                            block=int(heartbeat_seconds * 1000))
            if not batch:
                yield None
                continue
            for event_id, fields in batch[0][1]:
                event = _event(event_id, fields)
                last = event.id
                yield event
                if event.ends_stream:
                    return


def _event(event_id: Any, fields: dict[Any, Any]) -> Event:
    decoded = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                              else v) for k, v in fields.items()}
    return Event(id=event_id.decode() if isinstance(event_id, bytes) else str(event_id),
                 type=cast(EventType, decoded["type"]), data=json.loads(decoded["data"]))
