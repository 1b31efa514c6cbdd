"""Worker liveness in Redis: each worker's key `cadre:workers:<id>`, written before it takes
its first message and again every heartbeat, with a time to live of a few beats.

A key that is gone means its worker died (the key expired), stopped (it deletes its key on
the way out) or was seen to exit by `cadre up`'s supervisor, which deletes it at once. The
sweeper frees the tasks of such a worker without waiting for their leases to lapse.

Right after Redis lost its data (a restart without persistence) every key is gone, live
workers' too, until their next beat. So the first sweep to find the registry empty marks it
as settling, and for the keys' time to live no key's absence counts.
"""

from __future__ import annotations

import os
import socket

import redis.asyncio as aioredis

PREFIX = "cadre:workers:"
# Present since the registry was first written; missing after Redis lost its data.
STARTED_KEY = "cadre:workers-started"
# Present (with a TTL) while live workers may not have written their keys again yet.
SETTLING_KEY = "cadre:workers-settling"


def worker_id(pid: int | None = None) -> str:
    """This host's worker process `pid` (default: this process) as leases name it."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def alive_key(worker: str) -> str:
    return PREFIX + worker


async def mark_alive(redis: aioredis.Redis, worker: str, ttl_seconds: float) -> None:
    await redis.set(alive_key(worker), "1", px=int(ttl_seconds * 1000))


async def forget(redis: aioredis.Redis, worker: str) -> None:
    await redis.delete(alive_key(worker))


async def gone(redis: aioredis.Redis, workers: list[str], ttl_seconds: float) -> list[str]:
    """The workers among these whose liveness key is gone (none while the registry
    settles); one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(STARTED_KEY, "1", nx=True)
        pipe.exists(SETTLING_KEY)
        if workers:
            pipe.mget([alive_key(w) for w in workers])
        started_now, settling, *values = await pipe.execute()
    if started_now:
        await redis.set(SETTLING_KEY, "1", px=int(ttl_seconds * 1000))
        return []
    if settling or not workers:
        return []
    return [w for w, value in zip(workers, values[0], strict=True) if value is None]
