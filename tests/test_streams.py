"""The stream hub on the real Redis: followers of many tasks share a few reader connections,
get every event once and in order (a slow one catches up from Redis), and a follower that
joins while events are being published misses none."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.deps import redis_client
from app.events import Event, EventLog, StatusData, TokenData
from app.streams import READER_NAME, StreamHub, parse_event_id
from graph.status import TaskStatus


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_url, 10)
    yield client
    await client.aclose()


async def _collect(hub: StreamHub, task_id: str, after: str | None = None,
                   pause: float = 0.0) -> list[Event]:
    got: list[Event] = []
    async for event in hub.follow(task_id, after, heartbeat_seconds=5):
        if event is not None:
            got.append(event)
            if pause:
                await asyncio.sleep(pause)
    return got


async def test_followers_of_many_tasks_get_every_event_once_in_order(
        redis: aioredis.Redis, redis_url: str) -> None:
    events = EventLog(redis)
    hub = StreamHub(url=redis_url, control=redis, events=events, readers=2, block_seconds=2)
    tasks = [str(uuid.uuid4()) for _ in range(40)]
    try:
        # Followers join at different moments: before, during and after publishing starts.
        early = {t: asyncio.create_task(_collect(hub, t)) for t in tasks[:20]}
        await asyncio.sleep(0.1)

        async def publish(task_id: str) -> None:
            for n in range(30):
                await events.publish(task_id, TokenData(text=str(n)))
                if n % 10 == 0:
                    await asyncio.sleep(0.01)
            await events.publish(task_id, StatusData(status=TaskStatus.SUCCEEDED))

        publishers = [asyncio.create_task(publish(t)) for t in tasks]
        await asyncio.sleep(0.05)
        late = {t: asyncio.create_task(_collect(hub, t)) for t in tasks[20:]}
        await asyncio.sleep(0.2)
        readers = [c for c in await redis.client_list() if c["name"] == READER_NAME]
        assert len(readers) == 2, "two reader connections for 40 followers, not one each"
        await asyncio.gather(*publishers)
        results = await asyncio.wait_for(asyncio.gather(*early.values(), *late.values()), 30)
    finally:
        await hub.aclose()
    for task_id, got in zip([*early, *late], results, strict=True):
        stored = await events.history(task_id)
        assert [e.id for e in got] == [e.id for e in stored], task_id
        assert [e.data.text for e in got[:-1] if isinstance(e.data, TokenData)] == [
            str(n) for n in range(30)]


async def test_a_follower_that_falls_behind_catches_up_from_redis(
        redis: aioredis.Redis, redis_url: str) -> None:
    events = EventLog(redis)
    hub = StreamHub(url=redis_url, control=redis, events=events, readers=1, buffer=3,
                    block_seconds=2)
    task_id = str(uuid.uuid4())
    try:
        await events.publish(task_id, StatusData(status=TaskStatus.RUNNING))
        slow = asyncio.create_task(_collect(hub, task_id, pause=0.02))
        await asyncio.sleep(0.1)
        for n in range(60):  # far more than the 3 events its buffer holds
            await events.publish(task_id, TokenData(text=str(n)))
        await events.publish(task_id, StatusData(status=TaskStatus.FAILED))
        got = await asyncio.wait_for(slow, 30)
    finally:
        await hub.aclose()
    assert [e.id for e in got] == [e.id for e in await events.history(task_id)]


async def test_resuming_mid_stream_and_at_its_end(redis: aioredis.Redis, redis_url: str) -> None:
    events = EventLog(redis)
    hub = StreamHub(url=redis_url, control=redis, events=events, block_seconds=2)
    task_id = str(uuid.uuid4())
    try:
        ids = [await events.publish(task_id, TokenData(text=str(n))) for n in range(5)]
        ids.append(await events.publish(task_id, StatusData(status=TaskStatus.CANCELLED)))
        middle = await asyncio.wait_for(_collect(hub, task_id, after=ids[2]), 10)
        assert [e.id for e in middle] == ids[3:]
        at_end = await asyncio.wait_for(_collect(hub, task_id, after=ids[-1]), 10)
        assert [(e.id, e.data) for e in at_end] == [(ids[-1], StatusData(status="CANCELLED"))]
    finally:
        await hub.aclose()


def test_event_ids_are_checked() -> None:
    assert parse_event_id("1700000000000-3") == (1700000000000, 3)
    assert parse_event_id("17") == (17, 0)
    for bad in ("", "x", "-1", "1-", "1-2-3", "18446744073709551616-0", "1 2"):
        with pytest.raises(ValueError):
            parse_event_id(bad)
