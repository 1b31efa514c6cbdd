"""A2A push notifications: the configs a client set on a task, kept in Postgres, and the
`Pusher` that POSTs the task's A2A events (the same as a stream's, as `StreamResponse` JSON)
to each of them, with the config's token in `X-A2A-Notification-Token` and its credentials
in `Authorization`.

One API process at a time follows a task for its pushes, under a lease in `a2a_push_watch`
that it renews; when a process stops or dies, another takes the task over from the last
event it sent. Delivery is best effort, as the A2A SDK's own sender: one attempt per event,
a failure logged. Addresses are checked as webhooks are (`tools/net.py`, with
CADRE_WEBHOOK_ALLOW_PRIVATE): when the config is set and again at every send, connecting to
the address that was checked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
from a2a.types import (
    AuthenticationInfo,
    InvalidParamsError,
    TaskPushNotificationConfig,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.proto_utils import to_stream_response
from google.protobuf.json_format import MessageToJson

from app.a2a.convert import STATES, StreamEvent
from app.a2a.follow import follow
from app.store import TaskStore
from app.streams import StreamHub
from graph.status import TERMINAL
from graph.status import TaskStatus as CadreStatus
from tools.artifacts import Artifacts
from tools.contract import ToolError
from tools.net import checked_addresses, checked_url, send_checked

log = logging.getLogger("cadre.a2a")

MAX_CONFIGS = 5  # per task
LEASE_SECONDS = 30.0
RENEW_SECONDS = 10.0


async def check_push_url(url: str, allow_private: frozenset[str]) -> None:
    """Refuse (InvalidParams) a URL webhooks could not be sent to either."""
    try:
        await checked_addresses(checked_url(url), allow_private,
                                verb="send push notifications to")
    except ToolError as exc:
        raise InvalidParamsError(f"push notification URL: {exc}") from None


class PushStore:
    """Every statement on `a2a_push_configs` and `a2a_push_watch`."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db

    async def put(self, config: TaskPushNotificationConfig, base_url: str, *,
                  after: str | None, done: bool) -> bool:
        """Create or replace the config (by task and id); False when the task already has
        MAX_CONFIGS others. The task is then watched from the event after `after` (from its
        first when None), unless it is watched already or `done` (it has ended)."""
        auth = config.authentication
        async with self.db.acquire() as conn, conn.transaction():
            others = await conn.fetchval(
                "SELECT count(*) FROM a2a_push_configs WHERE task_id = $1::uuid AND id <> $2",
                config.task_id, config.id)
            if others >= MAX_CONFIGS:
                return False
            await conn.execute(
                """INSERT INTO a2a_push_configs (task_id, id, url, token, auth_scheme,
                                                 auth_credentials)
                   VALUES ($1::uuid, $2, $3, $4, $5, $6)
                   ON CONFLICT (task_id, id) DO UPDATE SET url = excluded.url,
                       token = excluded.token, auth_scheme = excluded.auth_scheme,
                       auth_credentials = excluded.auth_credentials""",
                config.task_id, config.id, config.url, config.token or None,
                auth.scheme or None, auth.credentials or None)
            await conn.execute("INSERT INTO a2a_push_watch (task_id, base_url, after, done) "
                               "VALUES ($1::uuid, $2, $3, $4) ON CONFLICT DO NOTHING",
                               config.task_id, base_url, after, done)
        return True

    async def configs(self, task_id: str) -> list[TaskPushNotificationConfig]:
        rows = await self.db.fetch("SELECT * FROM a2a_push_configs WHERE task_id = $1::uuid "
                                   "ORDER BY created_at, id", task_id)
        return [TaskPushNotificationConfig(
            task_id=str(r["task_id"]), id=r["id"], url=r["url"], token=r["token"] or "",
            authentication=AuthenticationInfo(scheme=r["auth_scheme"],
                                              credentials=r["auth_credentials"] or "")
            if r["auth_scheme"] else None) for r in rows]

    async def delete(self, task_id: str, config_id: str) -> None:
        await self.db.execute("DELETE FROM a2a_push_configs WHERE task_id = $1::uuid AND id = $2",
                              task_id, config_id)

    async def claim(self, task_id: str, owner: str) -> asyncpg.Record | None:
        """Take (or keep) the task's watch unless another live process holds it or it is
        done: the row, with the last event sent (`after`), or None."""
        return await self.db.fetchrow(
            "UPDATE a2a_push_watch SET owner = $2, "
            "lease_until = now() + make_interval(secs => $3) "
            "WHERE task_id = $1::uuid AND NOT done AND (owner = $2 OR lease_until < now()) "
            "RETURNING base_url, after", task_id, owner, LEASE_SECONDS)

    async def renew(self, task_id: str, owner: str, after: str | None) -> bool:
        return bool(await self.db.fetchval(
            "UPDATE a2a_push_watch SET lease_until = now() + make_interval(secs => $3), "
            "after = coalesce($4, after) WHERE task_id = $1::uuid AND owner = $2 RETURNING true",
            task_id, owner, LEASE_SECONDS, after))

    async def release(self, task_id: str, owner: str, after: str | None, *, done: bool) -> None:
        await self.db.execute(
            "UPDATE a2a_push_watch SET owner = NULL, lease_until = now(), done = $4, "
            "after = coalesce($3, after) WHERE task_id = $1::uuid AND owner = $2",
            task_id, owner, after, done)

    async def lapsed(self, limit: int = 100) -> list[str]:
        """Tasks whose watch nobody holds."""
        rows = await self.db.fetch("SELECT task_id FROM a2a_push_watch WHERE NOT done AND "
                                   "lease_until < now() LIMIT $1", limit)
        return [str(r["task_id"]) for r in rows]


class Pusher:
    """The watches of this API process: `watch` starts one now (a config was just set), and
    while `running` (the app's lifetime) a sweep takes over the tasks of processes that
    stopped or died."""

    def __init__(self, *, db: asyncpg.Pool, streams: StreamHub, artifacts: Artifacts,
                 allow_private: frozenset[str], timeout: float, sweep_seconds: float = 15.0,
                 ) -> None:
        self.store = PushStore(db)
        self.tasks = TaskStore(db)
        self.streams, self.artifacts = streams, artifacts
        self.allow_private, self.timeout = allow_private, timeout
        self.sweep_seconds = sweep_seconds
        self.owner = f"api-{uuid.uuid4().hex[:12]}"
        self.watching: dict[str, asyncio.Task[None]] = {}
        self._positions: dict[str, str | None] = {}
        self._http: httpx.AsyncClient | None = None

    def watch(self, task_id: str) -> None:
        if self._http is None:
            return  # not running (no lifespan): the next process's sweep takes the task
        if task_id not in self.watching:
            self.watching[task_id] = asyncio.create_task(self._watch(task_id),
                                                         name=f"a2a-push-{task_id}")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                     timeout=self.timeout) as http:
            self._http = http
            sweeper = asyncio.create_task(self._sweep(), name="a2a-push-sweep")
            try:
                yield
            finally:
                self._http = None
                watches = [sweeper, *self.watching.values()]
                for task in watches:
                    task.cancel()
                await asyncio.gather(*watches, return_exceptions=True)

    async def _sweep(self) -> None:
        while True:
            try:
                for task_id in await self.store.lapsed():
                    self.watch(task_id)
            except Exception as exc:  # a background loop: it logs and goes on
                log.warning("A2A push sweep: %s", exc)
            await asyncio.sleep(self.sweep_seconds)

    async def _watch(self, task_id: str) -> None:
        claimed = None
        try:
            claimed = await self.store.claim(task_id, self.owner)
            if claimed is None:
                return
            self._positions[task_id] = claimed["after"]
            renewing = asyncio.create_task(self._renew(task_id, asyncio.current_task()))
            try:
                await self._push_events(task_id, claimed["base_url"], claimed["after"])
            finally:
                renewing.cancel()
            await self.store.release(task_id, self.owner, self._positions[task_id], done=True)
        except asyncio.CancelledError:
            if claimed is not None:  # stopping: let another process take it over now
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    await asyncio.shield(self.store.release(
                        task_id, self.owner, self._positions.get(task_id), done=False))
            raise
        except Exception:  # Postgres or Redis failing: the lease lapses, a sweep goes on
            log.exception("A2A pushes for task %s stopped", task_id)
        finally:
            self.watching.pop(task_id, None)
            self._positions.pop(task_id, None)

    async def _renew(self, task_id: str, watcher: asyncio.Task[Any] | None) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                if not await self.store.renew(task_id, self.owner, self._positions[task_id]):
                    log.warning("A2A pushes for task %s: another process took them over", task_id)
                    if watcher is not None:
                        watcher.cancel()
                    return

    async def _push_events(self, task_id: str, base_url: str, after: str | None) -> None:
        ended = await self.tasks.ended(task_id)
        if ended is None:
            return
        context_id = str(ended["conversation_id"])
        if ended["status"] in TERMINAL and await self.streams.events.last_id(task_id) is None:
            # The live stream expired while no process watched: say how the task ended.
            await self._send(task_id, TaskStatusUpdateEvent(
                task_id=task_id, context_id=context_id,
                status=TaskStatus(state=STATES[CadreStatus(ended["status"])])))
            return
        # Taken over (`after` set), the files are announced again with the next step that
        # wrote one: which of them the last process sent is not recorded, and a file pushed
        # twice is better than one never pushed (pushes are at least once).
        async for event_id, update in follow(self.streams, self.artifacts, task_id, context_id,
                                             after=after, base_url=base_url, until_input=False):
            await self._send(task_id, update)
            self._positions[task_id] = event_id

    async def _send(self, task_id: str, update: StreamEvent) -> None:
        http = self._http
        if http is None:
            return
        body = MessageToJson(to_stream_response(update), indent=None).encode()
        for config in await self.store.configs(task_id):
            headers = {"content-type": "application/json", "user-agent": "Cadre-a2a/0.1"}
            if config.token:
                headers["X-A2A-Notification-Token"] = config.token
            if config.authentication.scheme and config.authentication.credentials:
                headers["Authorization"] = (f"{config.authentication.scheme} "
                                            f"{config.authentication.credentials}")
            try:
                url = checked_url(config.url)
                addresses = await checked_addresses(url, self.allow_private,
                                                    verb="send push notifications to")
                response = await send_checked(http, url, addresses, method="POST",
                                              headers=headers, content=body)
                await response.aclose()
                if response.status_code >= 300:
                    log.info("A2A push for task %s to %s: the receiver answered %d", task_id,
                             config.url, response.status_code)
            except ToolError as exc:
                log.info("A2A push for task %s to %s refused: %s", task_id, config.url, exc)
            except httpx.HTTPError as exc:
                log.info("A2A push for task %s to %s failed: %s", task_id, config.url,
                         type(exc).__name__)
