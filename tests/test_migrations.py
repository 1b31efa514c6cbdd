"""Migrations build the whole schema on an empty database, and running them again changes nothing."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from app import migrate

TABLES = {
    "users", "api_keys", "conversations", "tasks", "agent_logs", "approvals", "tool_calls",
    "artifacts", "tool_outputs",
}
CHECKPOINT_TABLES = {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"}


async def _schema(url: str) -> tuple[set[str], dict[str, set[str]], list[str]]:
    conn = await asyncpg.connect(url)
    try:
        tables = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        columns: dict[str, set[str]] = {}
        for r in await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ):
            columns.setdefault(r["table_name"], set()).add(r["column_name"])
        indexes = [r["indexdef"] for r in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'")]
    finally:
        await conn.close()
    return tables, columns, indexes


async def test_migrations_build_the_schema_on_an_empty_database(empty_database_url: str) -> None:
    tables, _, _ = await _schema(empty_database_url)
    assert tables == set()

    await asyncio.to_thread(migrate.upgrade, empty_database_url)

    tables, columns, indexes = await _schema(empty_database_url)
    assert TABLES | CHECKPOINT_TABLES | {"alembic_version"} <= tables
    assert columns["tasks"] >= {
        "id", "user_id", "conversation_id", "status", "input", "final_output", "error", "usage",
        "created_at", "updated_at", "lease_owner", "lease_expires_at",
    }
    assert columns["agent_logs"] >= {
        "id", "task_id", "step_number", "node", "thought", "tool_name", "tool_input",
        "tool_output", "tokens_in", "tokens_out", "latency_ms", "created_at",
    }
    assert "key_hash" in columns["api_keys"]
    assert any("ON public.tasks USING btree (user_id" in i for i in indexes)
    assert any("ON public.tasks USING btree (status)" in i for i in indexes)
    assert any("ON public.conversations USING btree (user_id" in i for i in indexes)
    assert await asyncio.to_thread(migrate.current_revision, empty_database_url) == await asyncio.to_thread(
        migrate.head_revision
    )


async def test_migrations_are_idempotent(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        user_id = await conn.fetchval("INSERT INTO users (email) VALUES ('a@example.com') RETURNING id")
    finally:
        await conn.close()
    before = await _schema(database_url)

    await asyncio.to_thread(migrate.upgrade, database_url)
    await asyncio.to_thread(migrate.upgrade, database_url)

    assert await _schema(database_url) == before
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT email FROM users WHERE id = $1", user_id) == "a@example.com"
    finally:
        await conn.close()


async def test_task_status_is_constrained(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        user_id = await conn.fetchval("INSERT INTO users (email) VALUES ('b@example.com') RETURNING id")
        conv_id = await conn.fetchval(
            "INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user_id)
        task_id = await conn.fetchval(
            "INSERT INTO tasks (user_id, conversation_id, input) VALUES ($1, $2, 'hi') RETURNING id",
            user_id, conv_id)
        assert await conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id) == "QUEUED"
        try:
            await conn.execute("UPDATE tasks SET status = 'DONE' WHERE id = $1", task_id)
        except asyncpg.CheckViolationError:
            pass
        else:
            raise AssertionError("an unknown status was accepted")
    finally:
        await conn.close()


async def test_a_downgrade_that_would_lose_stored_tool_results_is_refused(
        database_url: str) -> None:
    from alembic import command

    config = migrate._alembic_config(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO tool_outputs (digest, task_id, chars, content) "
                           "VALUES ('d', gen_random_uuid(), 4, 'text')")
        with pytest.raises(Exception, match="would lose them"):
            await asyncio.to_thread(command.downgrade, config, "0015")
        assert await conn.fetchval("SELECT content FROM tool_outputs") == "text"

        await conn.execute("DELETE FROM tool_outputs")
        await asyncio.to_thread(command.downgrade, config, "0015")
        assert await conn.fetchval("SELECT to_regclass('tool_outputs')") is None
    finally:
        await conn.close()
    await asyncio.to_thread(migrate.upgrade, database_url)
    assert await asyncio.to_thread(migrate.current_revision, database_url) == migrate.head_revision()
