"""`sql` and `describe_schema`: read-only queries against AGENT_SQL_URL.

Safety does not rest on parsing the query. The connection's role may only SELECT, every
query runs in a READ ONLY transaction with a statement timeout, the extended protocol runs
exactly one statement (so `SELECT 1; DROP ...` is refused by the server), and a row cap
bounds what comes back."""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass
from typing import Any

import asyncpg

from tools.builtin.deps import Context
from tools.contract import ToolError, Toolset


@dataclass(frozen=True, kw_only=True)
class SqlAccess:
    pool: asyncpg.Pool
    statement_timeout_ms: int = 5_000
    max_rows: int = 200


def _access(ctx: Context) -> SqlAccess:
    access = ctx.deps.sql
    if not isinstance(access, SqlAccess):
        raise ToolError("no database is configured for the sql tool (AGENT_SQL_URL)")
    return access


def _cell(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return value


def register(toolset: Toolset) -> None:
    @toolset.tool(risk="read_only", timeout=30, max_output_chars=40_000)
    async def sql(ctx: Context, query: str, max_rows: int = 50) -> dict[str, Any]:
        """Run one read-only SQL query (PostgreSQL) and get its rows. Use describe_schema
        first to see the tables. Only SELECT-style queries work; results are capped.

        Args:
            query: One SELECT (or WITH ... SELECT) statement.
            max_rows: How many rows to return at most.
        """
        access = _access(ctx)
        limit = max(1, min(max_rows, access.max_rows))
        try:
            async with access.pool.acquire() as conn, conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {int(access.statement_timeout_ms)}")
                statement = await conn.prepare(query)
                columns = [a.name for a in statement.get_attributes()]
                # A cursor, so a huge result is never pulled into memory past the cap.
                rows = await (await statement.cursor()).fetch(limit + 1)
        except asyncpg.QueryCanceledError:
            raise ToolError(f"the query ran longer than {access.statement_timeout_ms} ms and "
                            "was cancelled; narrow it down") from None
        except asyncpg.PostgresError as exc:
            raise ToolError(f"the database refused the query: {exc}") from None
        return {"columns": columns,
                "rows": [[_cell(v) for v in row.values()] for row in rows[:limit]],
                "truncated": len(rows) > limit}

    @toolset.tool(risk="read_only", timeout=30)
    async def describe_schema(ctx: Context) -> dict[str, Any]:
        """List the tables you can query, with their columns, types and descriptions."""
        access = _access(ctx)
        async with access.pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT c.table_schema, c.table_name, c.column_name, c.data_type,
                       obj_description(format('%I.%I', c.table_schema, c.table_name)::regclass)
                           AS comment
                FROM information_schema.columns c
                JOIN information_schema.tables t
                  ON t.table_schema = c.table_schema AND t.table_name = c.table_name
                WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema')
                  AND has_table_privilege(format('%I.%I', c.table_schema, c.table_name), 'SELECT')
                ORDER BY c.table_schema, c.table_name, c.ordinal_position
                """)
        tables: dict[str, dict[str, Any]] = {}
        for r in rows:
            name = r["table_name"] if r["table_schema"] == "public" \
                else f"{r['table_schema']}.{r['table_name']}"
            table = tables.setdefault(name, {"description": r["comment"] or "", "columns": []})
            table["columns"].append(f"{r['column_name']} {r['data_type']}")
        return {"tables": tables}
