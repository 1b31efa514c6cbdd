"""Health checks of each configured service, shared by `GET /healthz` and `cadre doctor`."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import botocore.exceptions
import redis.asyncio as aioredis

from app import migrate
from app.errors import first_line
from app.queue import client_from_settings
from app.settings import Settings, redact_url


@dataclass(frozen=True, kw_only=True)
class Check:
    """One service's verdict: `ok`, and a line a person can act on."""

    name: str
    ok: bool
    detail: str
    required: bool = True


async def check_postgres(settings: Settings) -> Check:
    if not settings.database_url:
        return Check(name="postgres", ok=False,
                     detail="DATABASE_URL is not set (run `cadre up`, or set it)")
    url = settings.database_url
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return Check(name="postgres", ok=False,
                     detail=f"cannot connect to {redact_url(url)}: {first_line(exc)}")
    try:
        version = await conn.fetchval("SHOW server_version")
        has_alembic = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
        revision = await conn.fetchval("SELECT version_num FROM alembic_version") if has_alembic else None
    finally:
        await conn.close()
    head = await asyncio.to_thread(migrate.head_revision)
    if revision != head:
        return Check(name="postgres", ok=False,
                     detail=f"PostgreSQL {version} at {redact_url(url)} is at schema "
                            f"{revision or 'none'}, expected {head}: run `cadre migrate`")
    return Check(name="postgres", ok=True,
                 detail=f"PostgreSQL {version} at {redact_url(url)}, schema {revision}")


async def check_redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check(name="redis", ok=False, detail="REDIS_URL is not set (run `cadre up`, or set it)")
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        info: dict[str, Any] = await client.info("server")
        workers = len([key async for key in client.scan_iter("cadre:workers:*", count=1000)])
    except aioredis.RedisError as exc:
        return Check(name="redis", ok=False,
                     detail=f"cannot reach {redact_url(settings.redis_url)}: {first_line(exc)}")
    finally:
        await client.aclose()
    return Check(name="redis", ok=True,
                 detail=f"Redis {info.get('redis_version', '?')} at {redact_url(settings.redis_url)}, "
                        f"{workers} workers alive")


async def check_sqs(settings: Settings) -> Check:
    if not settings.sqs_queue_url:
        return Check(name="sqs", ok=False, detail="SQS_QUEUE_URL is not set (run `cadre up`, or set it)")

    def _attributes() -> dict[str, str]:
        client = client_from_settings(settings)
        response = client.get_queue_attributes(
            QueueUrl=settings.sqs_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "RedrivePolicy"],
        )
        return dict(response["Attributes"])

    try:
        attributes = await asyncio.to_thread(_attributes)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        return Check(name="sqs", ok=False,
                     detail=f"cannot read queue {settings.sqs_queue_url}: {first_line(exc)}")
    if "RedrivePolicy" not in attributes:
        return Check(name="sqs", ok=False,
                     detail=f"queue {settings.sqs_queue_url} has no dead-letter queue (RedrivePolicy)")
    return Check(name="sqs", ok=True,
                 detail=f"queue {settings.sqs_queue_url}, "
                        f"{attributes.get('ApproximateNumberOfMessages', '?')} messages waiting")


def check_model(settings: Settings) -> Check:
    if settings.offline_model:
        return Check(name="model", ok=False, required=False,
                     detail=f"the tiny offline model {settings.model} at {settings.openai_base_url}: "
                            "fine for trying Cadre out, not for real tasks; set OPENAI_API_KEY "
                            "or OPENAI_BASE_URL")
    if settings.openai_api_key or settings.openai_base_url:
        where = settings.openai_base_url or "api.openai.com"
        return Check(name="model", ok=True,
                     detail=f"OpenAI-compatible endpoint {where}, model {settings.model or 'default'}")
    return Check(name="model", ok=False, required=False,
                 detail="no model configured: set OPENAI_API_KEY or OPENAI_BASE_URL "
                        "(`cadre up` serves a tiny offline model)")


def check_sandbox(settings: Settings) -> Check:
    if settings.e2b_api_key:
        return Check(name="sandbox", ok=True, detail="E2B (E2B_API_KEY is set)")
    if shutil.which("bwrap"):
        return Check(name="sandbox", ok=True, detail=f"bubblewrap at {shutil.which('bwrap')}")
    return Check(name="sandbox", ok=False, required=False,
                 detail="bubblewrap is not installed: `apt-get install bubblewrap` or set E2B_API_KEY")


async def check_smtp(settings: Settings) -> Check:
    if not settings.smtp_url:
        return Check(name="smtp", ok=False, required=False,
                     detail="SMTP_URL is not set: outgoing email is not configured")
    parts = urlsplit(settings.smtp_url)
    host, port = parts.hostname or "localhost", parts.port or (465 if parts.scheme == "smtps" else 25)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    except (OSError, TimeoutError) as exc:
        return Check(name="smtp", ok=False, detail=f"cannot reach {host}:{port}: {first_line(exc)}")
    writer.close()
    await writer.wait_closed()
    return Check(name="smtp", ok=True, detail=f"SMTP server {host}:{port} reachable")


async def service_checks(settings: Settings) -> list[Check]:
    """Postgres, Redis and SQS: the services a task cannot run without."""
    return list(await asyncio.gather(
        check_postgres(settings), check_redis(settings), check_sqs(settings)
    ))


async def all_checks(settings: Settings) -> list[Check]:
    return [
        *await service_checks(settings),
        check_model(settings),
        check_sandbox(settings),
        await check_smtp(settings),
    ]
