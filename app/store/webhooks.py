"""Every statement on `webhook_deliveries` and on the users' webhook settings."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg

Db: TypeAlias = "asyncpg.Pool | asyncpg.Connection"

# Ids of deliveries: the same event of the same task always gets the same `webhook-id`.
_IDS = uuid.UUID("5b0f3c1e-8d2a-4f7e-9c61-0a4f2e7d9b13")


def delivery_id(task_id: str, event: str, key: str = "") -> str:
    return f"msg_{uuid.uuid5(_IDS, f'{task_id}:{event}:{key}').hex}"


class WebhookStore:
    def __init__(self, db: Db) -> None:
        self.db = db

    # -- settings ------------------------------------------------------------------------------

    async def settings_of(self, user_id: str) -> asyncpg.Record:
        row = await self.db.fetchrow(
            "SELECT webhook_url, webhook_secret IS NOT NULL AS has_secret, "
            "webhook_secret_created_at FROM users WHERE id = $1::uuid", user_id)
        assert row is not None
        return row

    async def set_secret(self, user_id: str, secret: str) -> datetime:
        created: datetime = await self.db.fetchval(
            "UPDATE users SET webhook_secret = $2, webhook_secret_created_at = now() "
            "WHERE id = $1::uuid RETURNING webhook_secret_created_at", user_id, secret)
        return created

    async def set_default_url(self, user_id: str, url: str | None) -> None:
        await self.db.execute("UPDATE users SET webhook_url = $2 WHERE id = $1::uuid",
                              user_id, url)

    # -- deliveries ----------------------------------------------------------------------------

    async def task_ended(self, task_id: Any, status: str, *, output: str | None,
                         error: dict[str, Any] | None, usage: dict[str, Any] | None = None
                         ) -> bool:
        """`task.succeeded`, `task.failed` or `task.cancelled`, with the task's end."""
        return await self.enqueue(task_id, f"task.{status.lower()}", {
            "status": status, "final_output": output, "error": error, "usage": usage})

    async def enqueue(self, task_id: Any, event: str, data: dict[str, Any], *,
                      key: str = "") -> bool:
        """Record `event` of the task for delivery to its webhook URL (its own, else its
        owner's default); once per (task, event, key). Made with the caller's connection, in
        its transaction. False when the task has no webhook or its owner no secret."""
        msg_id = delivery_id(str(task_id), event, key)
        payload = json.dumps({
            "type": event, "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "data": {"task_id": str(task_id), **data}}, default=str, separators=(",", ":"))
        return bool(await self.db.fetchval(
            """
            INSERT INTO webhook_deliveries (id, user_id, task_id, event, url, payload)
            SELECT $1, t.user_id, t.id, $3, coalesce(t.options->>'webhook_url', u.webhook_url), $4
            FROM tasks t JOIN users u ON u.id = t.user_id
            WHERE t.id = $2::uuid AND u.webhook_secret IS NOT NULL
              AND coalesce(t.options->>'webhook_url', u.webhook_url) IS NOT NULL
            ON CONFLICT (id) DO NOTHING
            RETURNING true
            """, msg_id, str(task_id), event, payload))

    async def claim_due(self, limit: int, hold_seconds: float) -> list[asyncpg.Record]:
        """Deliveries whose attempt is due, each claimed for `hold_seconds` (so that no other
        worker sends it meanwhile; one that dies mid-attempt leaves it to be retried then),
        with their attempt counted and the owner's current secret."""
        return list(await self.db.fetch(
            """
            UPDATE webhook_deliveries d
               SET attempts = d.attempts + 1,
                   next_attempt_at = now() + make_interval(secs => $2)
            FROM (SELECT id FROM webhook_deliveries
                  WHERE status = 'PENDING' AND next_attempt_at <= now()
                  ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due, users u
            WHERE d.id = due.id AND u.id = d.user_id
            RETURNING d.id, d.url, d.payload, d.attempts, u.webhook_secret AS secret
            """, limit, hold_seconds))

    async def delivered(self, msg_id: str, status: int) -> None:
        await self.db.execute(
            "UPDATE webhook_deliveries SET status = 'DELIVERED', last_status = $2, "
            "last_error = NULL, delivered_at = now() WHERE id = $1", msg_id, status)

    async def failed(self, msg_id: str, *, status: int | None, error: str,
                     retry_in: float | None) -> None:
        """An attempt failed: tried again in `retry_in` seconds, or (None) never again."""
        await self.db.execute(
            """
            UPDATE webhook_deliveries SET last_status = $2, last_error = $3,
                   status = CASE WHEN $4::float8 IS NULL THEN 'FAILED' ELSE 'PENDING' END,
                   next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                                     ELSE now() + make_interval(secs => $4) END
            WHERE id = $1
            """, msg_id, status, error[:1000], retry_in)

    async def deliveries(self, user_id: str, *, task_id: uuid.UUID | None, limit: int
                         ) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            """
            SELECT id, task_id, event, url, status, attempts, next_attempt_at, last_status,
                   last_error, created_at, delivered_at
            FROM webhook_deliveries
            WHERE user_id = $1::uuid AND ($2::uuid IS NULL OR task_id = $2)
            ORDER BY created_at DESC, id LIMIT $3
            """, user_id, task_id, limit)
        return [{**dict(r), "task_id": str(r["task_id"]) if r["task_id"] else None,
                 "next_attempt_at": r["next_attempt_at"] if r["status"] == "PENDING" else None}
                for r in rows]
