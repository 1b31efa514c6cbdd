"""Signed webhooks: `task.succeeded`, `task.failed`, `task.cancelled` and
`approval.required`, POSTed to a task's `webhook_url` (or its owner's default) from the
workers, signed the Standard Webhooks way.

Each request carries `webhook-id` (the same on every attempt of one event: receivers dedupe
on it), `webhook-timestamp` (Unix seconds) and `webhook-signature`: `v1,` and the base64
HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed with the base64-decoded part of the owner's
`whsec_` secret. A 2xx answer is a delivery; anything else, or no answer within the timeout,
is tried again after 1, 4, 16 … s (up to an hour between tries) until
`CADRE_WEBHOOK_MAX_ATTEMPTS`; the row then stays `FAILED`. Addresses are checked as
`fetch_url` checks them, at submit and again at every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time

import asyncpg
import httpx

from app.problems import Problem
from app.store.webhooks import WebhookStore
from tools.builtin.fetch import FetchPolicy
from tools.contract import ToolError
from tools.net import checked_addresses, checked_url, send_checked

log = logging.getLogger("cadre.webhooks")

SECRET_PREFIX = "whsec_"
EVENTS = ("task.succeeded", "task.failed", "task.cancelled", "approval.required")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 1, 4, 16 … up to an hour."""
    return float(min(4 ** (attempts - 1), 3600))


async def check_url(url: str, allow_private: frozenset[str]) -> str:
    """`url` if webhooks may go there (http or https, no private address unless allowed);
    otherwise a 422 problem saying why."""
    try:
        await checked_addresses(checked_url(url), allow_private, verb="send webhooks to")
    except ToolError as exc:
        raise Problem("invalid-request", 422, f"webhook_url: {exc}") from None
    return url


class Deliverer:
    """Sends the deliveries that are due; any number of workers run one (each delivery is
    claimed by one of them)."""

    def __init__(self, db: asyncpg.Pool, *, allow_private: str = "", timeout: float = 10.0,
                 max_attempts: int = 8) -> None:
        self.store = WebhookStore(db)
        self.allow_private = FetchPolicy.parse_hosts(allow_private)
        self.timeout = timeout
        self.max_attempts = max_attempts

    async def deliver_due(self, limit: int = 20) -> int:
        due = await self.store.claim_due(limit, hold_seconds=self.timeout + 30)
        await asyncio.gather(*(self._attempt(row) for row in due))
        return len(due)

    async def _attempt(self, row: asyncpg.Record) -> None:
        msg_id, body = row["id"], row["payload"].encode()
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "user-agent": "Cadre-webhooks/0.1",
                   "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(row["secret"], msg_id, timestamp, body)}
        status: int | None = None
        try:
            url = checked_url(row["url"])
            addresses = await checked_addresses(url, self.allow_private,
                                                verb="send webhooks to")
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                         timeout=self.timeout) as client:
                response = await send_checked(client, url, addresses, method="POST",
                                              headers=headers, content=body)
                await response.aclose()
            status = response.status_code
            if 200 <= status < 300:
                await self.store.delivered(msg_id, status)
                return
            error = f"the receiver answered {status}"
        except ToolError as exc:
            error = str(exc)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        last = row["attempts"] >= self.max_attempts
        retry_in = None if last else retry_delay(row["attempts"])
        await self.store.failed(msg_id, status=status, error=error, retry_in=retry_in)
        if last:
            log.warning("webhook %s to %s failed %d times and is given up (%s)", msg_id,
                        row["url"], row["attempts"], error)
        else:
            log.info("webhook %s to %s: attempt %d failed (%s); next in %.0f s", msg_id,
                     row["url"], row["attempts"], error, retry_in)
