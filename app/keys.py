"""API keys: random bearer tokens, stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

import asyncpg

from guardrails.redaction import KEY_PREFIX

Role = Literal["viewer", "analyst", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "analyst", "operator", "admin")


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast digest is enough; a slow KDF would only slow
    # every authenticated request down.
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class IssuedKey:
    """A freshly created key. `secret` is shown once and never stored."""

    user_id: str
    email: str
    role: Role
    key_id: str
    secret: str


async def create_key(db: asyncpg.Pool, *, email: str, role: Role, name: str = "") -> IssuedKey:
    """Create the user if new (or set its role), and issue a new API key for it."""
    async with db.acquire() as conn, conn.transaction():
        return await _issue(conn, email=email, role=role, name=name)


async def bootstrap_admin(db: asyncpg.Pool, email: str = "admin@localhost") -> IssuedKey | None:
    """On a database with no users yet, create the first admin and its key; otherwise None."""
    async with db.acquire() as conn, conn.transaction():
        # Two first starts against one database must not both mint an admin.
        await conn.execute("SELECT pg_advisory_xact_lock(7271202)")
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
            return None
        return await _issue(conn, email=email, role="admin", name="bootstrap")


async def _issue(conn: asyncpg.Connection, *, email: str, role: Role, name: str) -> IssuedKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    user_id = await conn.fetchval(
        """
        INSERT INTO users (email, role) VALUES ($1, $2)
        ON CONFLICT (email) DO UPDATE SET role = EXCLUDED.role
        RETURNING id
        """,
        email,
        role,
    )
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4) "
        "RETURNING id",
        user_id,
        name,
        secret[: len(KEY_PREFIX) + 6],
        hash_key(secret),
    )
    return IssuedKey(user_id=str(user_id), email=email, role=role, key_id=str(key_id), secret=secret)
