"""The `sql` tool: real read-only queries on the demo database; every way to write refused,
slow queries cut off, the data unchanged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from app.demo_db import ensure_demo_database
from tests.conftest import Services
from tools import ToolContext, ToolOutcome, Toolset
from tools.builtin import SqlAccess, ToolDeps, builtin_toolset


@pytest.fixture(scope="session")
def demo_url(services: Services) -> Iterator[str]:
    yield ensure_demo_database(services.postgres.admin_url())


@pytest.fixture
async def run(demo_url: str) -> AsyncIterator[object]:
    pool = await asyncpg.create_pool(demo_url, min_size=1, max_size=2)
    toolset: Toolset = builtin_toolset(with_sql=True)
    ctx = ToolContext(task_id="t", tool_call_id="c",
                      deps=ToolDeps(sql=SqlAccess(pool=pool, statement_timeout_ms=500, max_rows=20)))

    async def _run(name: str, **args: object) -> ToolOutcome:
        tool = toolset.get(name)
        assert tool is not None
        return await tool.invoke(ctx, args)

    yield _run
    await pool.close()


async def _counts(services: Services) -> dict[str, int]:
    conn = await asyncpg.connect(services.postgres.admin_url("cadre_demo"))
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}")
                for t in ("customers", "products", "orders", "order_items")}
    finally:
        await conn.close()


async def test_describe_schema_shows_the_tables(run) -> None:  # type: ignore[no-untyped-def]
    result = await run("describe_schema")
    tables = json.loads(result.content)["tables"]
    assert set(tables) == {"customers", "products", "orders", "order_items"}
    assert "unit_price numeric" in tables["products"]["columns"]
    assert tables["orders"]["description"] == "One row per checkout"


async def test_a_real_analytical_query(run) -> None:  # type: ignore[no-untyped-def]
    result = await run("sql", query="""
        SELECT p.category, round(sum(p.unit_price * i.quantity), 2) AS revenue
        FROM order_items i JOIN products p ON p.id = i.product_id
        GROUP BY p.category ORDER BY revenue DESC""")
    assert result.ok, result.content
    body = json.loads(result.content)
    assert body["columns"] == ["category", "revenue"] and not body["truncated"]
    assert {row[0] for row in body["rows"]} == {"coffee", "equipment", "tea", "accessories", "milk"}
    assert all(isinstance(row[1], float) and row[1] > 0 for row in body["rows"])


async def test_rows_are_capped(run) -> None:  # type: ignore[no-untyped-def]
    body = json.loads((await run("sql", query="SELECT id, email FROM customers", max_rows=500)).content)
    assert len(body["rows"]) == 20 and body["truncated"] is True


@pytest.mark.parametrize(("query", "why"), [
    ("DROP TABLE orders", "read-only"),
    ("UPDATE products SET unit_price = 0.01", "read-only"),
    ("DELETE FROM customers", "read-only"),
    ("INSERT INTO products (name, category, unit_price) VALUES ('x', 'y', 1)", "read-only"),
    ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/cadre-pwned'", "permission denied"),
    ("SELECT 1; DROP TABLE orders", "multiple commands"),
    ("CREATE TABLE notes (x int)", "read-only"),
    ("SELECT pg_read_file('/etc/passwd')", "permission denied"),
    ("ALTER ROLE cadre_agent_ro SUPERUSER", "read-only"),
])
async def test_writes_are_refused_and_nothing_changes(run, services: Services, query: str,  # type: ignore[no-untyped-def]
                                                      why: str) -> None:
    before = await _counts(services)
    result = await run("sql", query=query)
    assert not result.ok
    assert result.content.startswith("the database refused the query")
    assert why in result.content
    assert await _counts(services) == before
    assert not await asyncio.to_thread(Path("/tmp/cadre-pwned").exists)


async def test_slow_query_is_cut_off(run, services: Services) -> None:  # type: ignore[no-untyped-def]
    result = await run("sql", query="SELECT pg_sleep(10)")
    assert result == ToolOutcome(ok=False, content="the query ran longer than 500 ms and was "
                                                    "cancelled; narrow it down")


async def test_even_with_write_grants_missing_the_role_cannot_reach_other_databases(
    demo_url: str, services: Services
) -> None:
    other = demo_url.rsplit("/", 1)[0] + "/postgres"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await asyncpg.connect(other)
    conn = await asyncpg.connect(demo_url)
    try:
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("TRUNCATE orders")
        await conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM orders")  # grants stop it even then
    finally:
        await conn.close()


async def test_tool_without_a_database_says_so() -> None:
    tool = builtin_toolset(with_sql=True).get("sql")
    assert tool is not None
    result = await tool.invoke(ToolContext(task_id="t", tool_call_id="c", deps=ToolDeps()),
                               {"query": "SELECT 1"})
    assert result == ToolOutcome(ok=False, content="no database is configured for the sql tool "
                                                    "(AGENT_SQL_URL)")
