"""Cadre's built-in tools and what they need to run."""

from __future__ import annotations

from dataclasses import dataclass

from tools.builtin import sql
from tools.builtin.sql import SqlAccess
from tools.contract import Toolset


@dataclass(frozen=True, kw_only=True)
class ToolDeps:
    """Handed to every tool as `ctx.deps`; a tool whose part is None says it is not configured."""

    sql: SqlAccess | None = None


def builtin_toolset(*, with_sql: bool) -> Toolset:
    """The built-in tools available with this configuration."""
    toolset = Toolset()
    if with_sql:
        sql.register(toolset)
    return toolset


__all__ = ["SqlAccess", "ToolDeps", "builtin_toolset"]
