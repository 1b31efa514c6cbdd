"""API keys are stored only as digests; the first admin is minted once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.keys import bootstrap_admin, create_key, hash_key


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def test_key_is_stored_hashed(db: asyncpg.Pool) -> None:
    issued = await create_key(db, email="ana@example.com", role="analyst", name="laptop")
    row = await db.fetchrow(
        "SELECT k.key_hash, k.prefix, k.name, u.email, u.role FROM api_keys k "
        "JOIN users u ON u.id = k.user_id WHERE k.id = $1::uuid", issued.key_id)
    assert row["key_hash"] == hash_key(issued.secret)
    assert issued.secret.startswith(row["prefix"])
    assert (row["email"], row["role"], row["name"]) == ("ana@example.com", "analyst", "laptop")
    dump = str(await db.fetch("SELECT * FROM api_keys"))
    assert issued.secret not in dump


async def test_second_key_for_same_user(db: asyncpg.Pool) -> None:
    first = await create_key(db, email="ops@example.com", role="operator")
    second = await create_key(db, email="ops@example.com", role="operator")
    assert first.user_id == second.user_id and first.secret != second.secret
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1::uuid", first.user_id) == 2


async def test_bootstrap_admin_only_on_an_empty_database(db: asyncpg.Pool) -> None:
    results = await asyncio.gather(bootstrap_admin(db), bootstrap_admin(db))
    minted = [r for r in results if r is not None]
    assert len(minted) == 1 and minted[0].role == "admin"
    assert await bootstrap_admin(db) is None
    assert await db.fetchval("SELECT count(*) FROM users WHERE role = 'admin'") == 1
