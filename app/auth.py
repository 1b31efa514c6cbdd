"""Bearer API keys: the key's digest finds its user; revoked keys and unknown keys are 401."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from app.keys import hash_key
from app.problems import Problem


@dataclass(frozen=True, kw_only=True)
class Principal:
    user_id: str
    email: str
    role: str
    key_id: str


async def authenticate(db: asyncpg.Pool, authorization: str | None) -> Principal:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem("unauthorized", 401, "send `Authorization: Bearer <API key>`",
                      headers={"WWW-Authenticate": "Bearer"})
    row = await db.fetchrow(
        """
        UPDATE api_keys k SET last_used_at = now()
        FROM users u
        WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.id = k.user_id
        RETURNING k.id, u.id AS user_id, u.email, u.role
        """,
        hash_key(token.strip()),
    )
    if row is None:
        raise Problem("unauthorized", 401, "the API key is unknown or revoked",
                      headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return Principal(user_id=str(row["user_id"]), email=row["email"], role=row["role"],
                     key_id=str(row["id"]))
