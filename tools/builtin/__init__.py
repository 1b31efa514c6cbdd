"""Cadre's built-in tools and what they need to run."""

from __future__ import annotations

from tools.builtin import fetch, mail, memory, python, search, sql
from tools.builtin.deps import Sandbox, ToolDeps
from tools.builtin.fetch import FetchPolicy
from tools.builtin.mail import SmtpMailer
from tools.builtin.sql import SqlAccess
from tools.builtin.web_search import WebSearchConfig
from tools.contract import Toolset


def builtin_toolset(*, with_sql: bool, with_python: bool = False, with_search: bool = True,
                    with_email: bool = False, with_memory: bool = False,
                    web: WebSearchConfig | None = None,
                    fetch_policy: FetchPolicy | None = None,
                    sandbox_wall_seconds: float = 60.0) -> Toolset:
    """The built-in tools available with this configuration (`web`: a web search provider
    for `search` instead of the knowledge base; `fetch_policy`: adds `fetch_url`;
    `with_memory`: `remember` and `recall`)."""
    toolset = Toolset()
    if with_search:
        search.register(toolset, web=web)
    if fetch_policy is not None:
        fetch.register(toolset, policy=fetch_policy)
    if with_python:
        python.register(toolset, wall_seconds=sandbox_wall_seconds)
    if with_sql:
        sql.register(toolset)
    if with_email:
        mail.register(toolset)
    if with_memory:
        memory.register(toolset)
    return toolset


__all__ = ["FetchPolicy", "Sandbox", "SmtpMailer", "SqlAccess", "ToolDeps", "WebSearchConfig",
           "builtin_toolset"]
