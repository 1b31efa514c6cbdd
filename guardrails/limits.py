"""Rate limits and quotas: requests per API key, concurrent tasks and tokens per user per day.

Going over one is never silent: a request or submission gets `LimitExceeded` (the API answers
429 with `Retry-After` and a problem document), and a run that reaches the daily token quota
ends `FAILED` with a `budget_exceeded` error that names the quota.

When counts reset:

- Requests per API key (CADRE_RATE_LIMIT, e.g. "120/minute"): a moving window in Redis. A
  request is allowed when fewer than the limit were made in the last window (the last 60 s
  for "/minute"); each request stops counting one window after it was made, so capacity comes
  back request by request, not all at once. `Retry-After` is when the oldest counted request
  leaves the window. Chosen over a fixed window, which lets a client send twice the limit
  across a window boundary; the cost is one Redis list of at most `limit` timestamps per key.
- Concurrent tasks per user (CADRE_MAX_CONCURRENT_TASKS): tasks that are queued (including
  ones waiting behind their conversation), running, or waiting for approval hold a slot --
  a task waiting for a person still holds its conversation and its sandbox. A slot frees the
  moment a task ends (succeeds, fails or is cancelled). `Retry-After` is a fixed
  `CONCURRENCY_RETRY_SECONDS`: there is no telling when a running task will end.
- Tokens per user per day (CADRE_DAILY_TOKEN_QUOTA): the sum of the usage recorded on the
  user's tasks (`tasks.usage`, tokens in + out), each task counted on the UTC day its usage
  was last recorded -- the day it ended, or for an unfinished task (waiting for approval)
  the day it was last updated. The day resets at 00:00 UTC; `Retry-After` is the time until
  then. A submission is refused once the day's usage has reached the quota; a run gets at
  most what is left of the quota as its token budget (checked before each model call), set
  when it starts and again when it resumes after an approval. Tasks running at the same time
  each see what was left when they started, so together they can go past the quota by what
  they use in that run; the next submission is then refused.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

CONCURRENCY_RETRY_SECONDS = 5


class LimitExceeded(Exception):
    """A request or submission over a limit: answer 429, retry after `retry_after` seconds.
    `limit` says which one: "requests", "concurrent_tasks" or "daily_tokens"."""

    def __init__(self, detail: str, *, limit: str, retry_after: int) -> None:
        super().__init__(detail)
        self.detail, self.limit, self.retry_after = detail, limit, max(1, retry_after)


class RequestRate:
    """Requests per API key, counted in a moving window in Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, rate: str) -> None:
        # limits' own client over our pool: no second connection setup, no password in a URI.
        storage = RedisStorage("async+redis://", implementation="redispy",
                               key_prefix="cadre:limits",
                               connection_pool=redis.connection_pool)  # type: ignore[arg-type]
        self._limiter = MovingWindowRateLimiter(storage)
        self._item: RateLimitItem = parse(rate)

    def describe(self) -> str:
        """The limit in words: "120 requests per minute per API key"."""
        item = self._item
        per = item.GRANULARITY.name if item.multiples == 1 \
            else f"{item.multiples} {item.GRANULARITY.name}s"
        return f"{item.amount} requests per {per} per API key"

    async def hit(self, key_id: str) -> None:
        """Count one request made with the API key `key_id`; raise `LimitExceeded` when the
        window is already full (the refused request does not count)."""
        if await self._limiter.hit(self._item, "requests", key_id):
            return
        stats = await self._limiter.get_window_stats(self._item, "requests", key_id)
        wait = math.ceil(stats.reset_time - time.time())
        raise LimitExceeded(f"too many requests: the limit is {self.describe()} "
                            f"(CADRE_RATE_LIMIT); retry in {max(1, wait)} s",
                            limit="requests", retry_after=wait)


@dataclass(frozen=True, kw_only=True)
class DailyAllowance:
    """What the daily token quota leaves one task: `left` tokens for its whole usage, after
    what the user's other tasks recorded today."""

    quota: int
    spent_elsewhere: int

    @property
    def left(self) -> int:
        return self.quota - self.spent_elsewhere

    def budget(self, task_budget: int | None) -> int:
        """The token budget a run gets: the task's own, or less if the quota leaves less."""
        return self.left if task_budget is None else min(task_budget, self.left)

    def binds(self, task_budget: int | None) -> bool:
        """Whether the quota, not the task's own budget, is what limits the run."""
        return task_budget is None or self.left < task_budget

    def exhausted(self, used_by_task: int) -> str:
        """The reason a run stopped at the quota, for the task's error."""
        return (f"daily token quota reached: {self.quota} tokens per user per day "
                f"(CADRE_DAILY_TOKEN_QUOTA); your other tasks used {self.spent_elsewhere} "
                f"today and this one {used_by_task}; the quota resets at 00:00 UTC, in "
                f"{_duration(seconds_to_midnight())}")


class QuotaCounts(Protocol):
    """What the quotas count, from the task store (`app.store.TaskStore` in Cadre). `conn` is
    the caller's connection (a transaction, for `admit`) or a pool."""

    async def lock_user(self, conn: Any, user_id: str) -> None:
        """Hold the user's row until the transaction ends."""
        ...

    async def active_tasks(self, conn: Any, user_id: str) -> int:
        """The user's tasks queued, running or waiting for approval."""
        ...

    async def tokens_since(self, conn: Any, user_id: str, since: datetime, *,
                           excluding: str | None = None) -> int:
        """Tokens the user's tasks recorded since `since`, leaving out `excluding`."""
        ...


@dataclass(frozen=True, kw_only=True)
class UserQuotas:
    """Concurrent tasks and daily tokens per user, counted by the task store (see the module
    docstring)."""

    max_concurrent_tasks: int
    daily_tokens: int
    counts: QuotaCounts

    async def admit(self, conn: Any, user_id: str) -> None:
        """Called in the transaction that inserts a task, before the insert: raise
        `LimitExceeded` when the user is at a limit. Locks the user's row until the
        transaction ends, so two submissions cannot both take the last slot."""
        await self.counts.lock_user(conn, user_id)
        spent = await self.tokens_spent(conn, user_id)
        if spent >= self.daily_tokens:
            wait = seconds_to_midnight()
            raise LimitExceeded(
                f"daily token quota spent: {spent} of {self.daily_tokens} tokens per user per "
                f"day used today (CADRE_DAILY_TOKEN_QUOTA); it resets at 00:00 UTC, in "
                f"{_duration(wait)}", limit="daily_tokens", retry_after=wait)
        active = await self.counts.active_tasks(conn, user_id)
        if active >= self.max_concurrent_tasks:
            raise LimitExceeded(
                f"you have {active} tasks queued, running or waiting for approval, the most one "
                f"user may have at once (CADRE_MAX_CONCURRENT_TASKS={self.max_concurrent_tasks}); "
                f"a slot frees when one of them ends: wait, or cancel one, and retry",
                limit="concurrent_tasks", retry_after=CONCURRENCY_RETRY_SECONDS)

    async def allowance(self, db: Any, user_id: str, *, task_id: str) -> DailyAllowance:
        """What the quota leaves the task `task_id` as it starts or resumes."""
        spent = await self.tokens_spent(db, user_id, excluding=task_id)
        return DailyAllowance(quota=self.daily_tokens, spent_elsewhere=spent)

    async def tokens_spent(self, db: Any, user_id: str, *,
                           excluding: str | None = None) -> int:
        """Tokens the user's tasks recorded today (UTC), leaving out `excluding`."""
        return await self.counts.tokens_since(db, user_id, _midnight(), excluding=excluding)


def seconds_to_midnight(now: datetime | None = None) -> int:
    """Whole seconds (at least 1) until the next 00:00 UTC, when daily quotas reset."""
    now = now or datetime.now(UTC)
    return max(1, math.ceil((_midnight(now) + timedelta(days=1) - now).total_seconds()))


def _midnight(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min" if hours else f"{max(1, rest // 60)} min"
