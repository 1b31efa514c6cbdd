"""The one typed dependencies object that reaches the API, workers, nodes and tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from app.errors import ConfigError, StackError, first_line
from app.queue import TaskQueue
from app.settings import Settings, redact_url

REDIS_WAIT_SECONDS = 5


@dataclass(frozen=True, kw_only=True)
class Deps:
    settings: Settings
    db: asyncpg.Pool
    redis: aioredis.Redis
    queue: TaskQueue
    # The request-rate limiter's own pool (connections are made on first use only).
    limits_redis: aioredis.Redis


def require_database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError(
            "DATABASE_URL is not set; set it to your PostgreSQL server, "
            "or start the local stack with `cadre up`"
        )
    return settings.database_url


def require_redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise ConfigError(
            "REDIS_URL is not set; set it to your Redis server, or start the local stack with `cadre up`"
        )
    return settings.redis_url


async def keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL):
    Cadre's own queries leave no session state behind (no session SET, LISTEN, cursor or
    session advisory lock; locks and settings are transaction-scoped), and the reset was a
    second round trip on every query a pool connection ran. An open transaction is still
    rolled back by asyncpg before this is called."""


async def connect_db(settings: Settings) -> asyncpg.Pool:
    """An asyncpg pool, or a `StackError` naming DATABASE_URL when the server cannot be reached."""
    url = require_database_url(settings)
    try:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=settings.db_pool_size, timeout=10, command_timeout=60,
            reset=keep_session, server_settings={
                # Held locks of a worker cut off mid-transaction are released (see the setting).
                "idle_in_transaction_session_timeout": str(
                    int(settings.db_idle_transaction_seconds * 1000)),
                # And a session whose results go unacknowledged (the peer is gone) ends too.
                "tcp_user_timeout": str(int(settings.db_idle_transaction_seconds * 1000))},
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StackError(
            f"cannot connect to PostgreSQL at DATABASE_URL={redact_url(url)}: {first_line(exc)}"
        ) from None
    assert pool is not None
    return pool


@asynccontextmanager
async def open_deps(settings: Settings) -> AsyncIterator[Deps]:
    """Open the pools every long-running process needs, and close them on exit."""
    redis_url = require_redis_url(settings)
    queue = await TaskQueue.connect(settings)
    db = await connect_db(settings)
    client = redis_client(redis_url, settings.redis_pool_size)
    limits = redis_client(redis_url, settings.limiter_pool_size)
    try:
        yield Deps(settings=settings, db=db, redis=client, queue=queue, limits_redis=limits)
    finally:
        await limits.aclose()
        await client.aclose()
        await db.close()


def redis_client(url: str, size: int) -> aioredis.Redis:
    """A client over a pool of at most `size` connections; when all are busy a command waits
    for one (up to REDIS_WAIT_SECONDS) instead of failing at once."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=size, timeout=REDIS_WAIT_SECONDS, socket_connect_timeout=5,
        socket_timeout=30)
    return aioredis.Redis(connection_pool=pool)
