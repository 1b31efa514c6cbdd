"""Live task streams for many followers: one Redis reader per shard of tasks per API process,
fanned out in memory to every SSE, WebSocket and chat follower of that process.

A follower holds no Redis connection. Each shard's reader blocks in one multi-key `XREAD` for
all the tasks its followers watch; when a task joins, the reader is woken with `CLIENT
UNBLOCK` so its next `XREAD` includes it. A new follower is registered first and then
replays what it missed with `XRANGE`; live events at or before what it has already sent are
skipped, so every event reaches it exactly once and in order. A follower that falls behind
(its buffer is full) is not dropped: it catches up from Redis and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.events import Event, EventLog, decode_event, stream_key

log = logging.getLogger("cadre.streams")

# How the readers' connections appear in Redis's CLIENT LIST.
READER_NAME = "cadre-stream-reader"
_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
_MAX = 2**64 - 1


class StreamsFull(Exception):
    """This process follows as many streams as it may (CADRE_STREAM_LIMIT)."""

    retry_after = 5


def parse_event_id(value: str) -> tuple[int, int]:
    """A Redis stream id (`1700000000000-0`, or just the milliseconds) as a sortable pair;
    `ValueError` for anything else."""
    match = _ID.match(value.strip())
    if match is None:
        raise ValueError(f"not an event id: {value[:40]!r}")
    ms, seq = int(match[1]), int(match[2] or 0)
    if ms > _MAX or seq > _MAX:
        raise ValueError(f"event id out of range: {value[:40]!r}")
    return ms, seq


@dataclass(eq=False)
class _Follower:
    task_id: str
    buffer: asyncio.Queue[Event]
    # Set by the reader when the buffer was full and an event was left out: the follower
    # reads the gap from Redis.
    behind: bool = False


@dataclass(eq=False)
class _Shard:
    """One reader: a dedicated connection blocked in `XREAD` on its tasks' streams."""

    hub: StreamHub
    number: int
    # task id -> the last event id read for it.
    positions: dict[str, str] = field(default_factory=dict)
    followers: dict[str, set[_Follower]] = field(default_factory=dict)
    generation: int = 0
    seen_generation: int = -1
    client_id: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None
    waker: asyncio.Task[None] | None = None

    def add(self, follower: _Follower, position: str) -> None:
        group = self.followers.setdefault(follower.task_id, set())
        group.add(follower)
        if follower.task_id not in self.positions:
            self.positions[follower.task_id] = position
            self.generation += 1
            self.changed.set()
            self._wake()

    def remove(self, follower: _Follower) -> None:
        group = self.followers.get(follower.task_id)
        if group is None:
            return
        group.discard(follower)
        if not group:
            # Its key may stay in the XREAD in flight; the next one leaves it out.
            del self.followers[follower.task_id]
            self.positions.pop(follower.task_id, None)

    def _wake(self) -> None:
        if self.waker is None or self.waker.done():
            self.waker = asyncio.create_task(self._unblock())

    async def _unblock(self) -> None:
        # Until the reader has started an XREAD that includes the new tasks. An UNBLOCK that
        # lands between two XREADs does nothing, hence the retries; after one block period the
        # reader's XREAD has returned by itself anyway.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.hub.block_seconds + 1
        while (self.seen_generation < self.generation and not self.hub.closed
               and loop.time() < give_up):
            if self.client_id is not None:
                with contextlib.suppress(RedisError):
                    await self.hub.control.client_unblock(self.client_id)
            await asyncio.sleep(0.02)

    async def run(self) -> None:
        conn = aioredis.Redis.from_url(self.hub.url, single_connection_client=True,
                                       client_name=READER_NAME, socket_connect_timeout=5,
                                       socket_timeout=self.hub.block_seconds + 30)
        failures = 0
        try:
            while not self.hub.closed:
                if not self.positions:
                    self.seen_generation = self.generation
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                try:
                    if self.client_id is None:
                        self.client_id = int(await conn.client_id())
                    self.seen_generation = self.generation
                    streams = {stream_key(t): p for t, p in self.positions.items()}
                    batch: Any = await conn.xread(streams, count=self.hub.batch,  # type: ignore[arg-type]
                                                  block=int(self.hub.block_seconds * 1000))
                    failures = 0
                except (RedisError, OSError) as exc:
                    self.client_id = None
                    failures += 1
                    log.warning("stream reader %d: %s; retrying", self.number, exc)
                    await asyncio.sleep(min(0.1 * 2**failures, 5))
                    continue
                for key, entries in batch or []:
                    task_id = (key.decode() if isinstance(key, bytes) else key).rpartition(":")[2]
                    for entry_id, fields in entries:
                        event = decode_event(entry_id, fields)
                        if task_id in self.positions:
                            self.positions[task_id] = event.id
                        for follower in list(self.followers.get(task_id, ())):
                            try:
                                follower.buffer.put_nowait(event)
                            except asyncio.QueueFull:
                                follower.behind = True
        finally:
            await conn.aclose()


class StreamHub:
    """Every live follower of this process. `follow` is what SSE, WebSocket and the chat read."""

    def __init__(self, *, url: str, control: aioredis.Redis, events: EventLog, readers: int = 2,
                 limit: int = 4000, buffer: int = 1000, block_seconds: float = 5.0,
                 batch: int = 500, min_interval: float = 0.05) -> None:
        self.url = url
        self.control = control
        self.events = events
        self.limit = limit
        self.buffer = buffer
        self.block_seconds = block_seconds
        self.batch = batch
        self.min_interval = min_interval
        self.closed = False
        self.active = 0
        self._shards = [_Shard(hub=self, number=n) for n in range(max(1, readers))]

    def _shard(self, task_id: str) -> _Shard:
        shard = self._shards[hash(task_id) % len(self._shards)]
        if shard.runner is None or shard.runner.done():
            shard.runner = asyncio.create_task(shard.run(), name=f"stream-reader-{shard.number}")
        return shard

    def admit(self) -> None:
        """Raise `StreamsFull` when this process already serves its limit of live streams.
        Called before a response starts, so the client gets a 503 rather than a cut stream;
        streams admitted at the same instant may pass the limit by a few."""
        if self.active >= self.limit:
            raise StreamsFull(f"this API process already serves {self.active} live streams "
                              f"(CADRE_STREAM_LIMIT={self.limit}); retry shortly")

    async def follow(self, task_id: str, after: str | None = None, *,
                     heartbeat_seconds: float = 15.0) -> AsyncIterator[Event | None]:
        """The task's events after `after` (all when None), then live ones, until its terminal
        status; None after `heartbeat_seconds` without one (time for a keep-alive). A stream
        resumed at or past its terminal event replays that event and ends. `after` must be
        valid (`parse_event_id`)."""
        async for batch in self.batches(task_id, after, heartbeat_seconds=heartbeat_seconds):
            if batch is None:
                yield None
                continue
            for event in batch:
                yield event

    async def batches(self, task_id: str, after: str | None = None, *,
                      heartbeat_seconds: float = 15.0) -> AsyncIterator[list[Event] | None]:
        """`follow`, a batch at a time: every event already waiting for this follower comes
        in one list, so a busy stream is written in fewer, larger pieces."""
        last = parse_event_id(after) if after else (0, 0)
        self.active += 1
        follower = _Follower(task_id=task_id, buffer=asyncio.Queue(self.buffer))
        shard = self._shard(task_id)
        try:
            shard.add(follower, await self.events.last_id(task_id) or "0-0")
            # Registered first, then the replay: nothing can fall between the two.
            replayed, last, ended = await self._catch_up(task_id, last)
            if replayed:
                yield replayed
            if ended:
                return
            if after is not None and not replayed:
                final = await self.events.terminal(task_id)
                if final is not None:
                    yield [final]  # resumed at or past the end: say how it ended, and stop
                    return
            buffer = follower.buffer
            loop = asyncio.get_running_loop()
            while True:
                if follower.behind:
                    follower.behind = False
                    replayed, last, ended = await self._catch_up(task_id, last)
                    if replayed:
                        yield replayed
                    if ended:
                        return
                if buffer.empty():
                    try:
                        async with asyncio.timeout(heartbeat_seconds):
                            first = await buffer.get()
                    except TimeoutError:
                        yield None
                        continue
                else:
                    first = buffer.get_nowait()
                batch = []
                event: Event | None = first
                while event is not None:
                    if event.position > last:
                        last = event.position
                        batch.append(event)
                        if event.ends_stream:
                            yield batch
                            return
                    event = buffer.get_nowait() if not buffer.empty() else None
                if batch:
                    written = loop.time()
                    yield batch
                    # At most one write per follower per interval: events arriving faster (a
                    # model's tokens) go out together, which caps the wake-ups a busy task
                    # costs the process at a small, bounded delay.
                    if (pause := self.min_interval - (loop.time() - written)) > 0:
                        await asyncio.sleep(pause)
        finally:
            shard.remove(follower)
            self.active -= 1

    async def _catch_up(self, task_id: str, last: tuple[int, int]
                        ) -> tuple[list[Event], tuple[int, int], bool]:
        """The events after `last` in Redis: (them, the new last, whether the stream ended)."""
        events: list[Event] = []
        async for event in self._since(task_id, last):
            last = event.position
            events.append(event)
            if event.ends_stream:
                return events, last, True
        return events, last, False

    async def _since(self, task_id: str, last: tuple[int, int]) -> AsyncIterator[Event]:
        cursor = f"{last[0]}-{last[1]}"
        while True:
            page = await self.events.history(task_id, after=cursor, count=self.batch)
            for event in page:
                yield event
            if len(page) < self.batch:
                return
            cursor = page[-1].id

    async def aclose(self) -> None:
        self.closed = True
        tasks = [t for s in self._shards for t in (s.runner, s.waker) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
