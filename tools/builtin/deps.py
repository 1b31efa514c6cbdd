"""What the built-in tools run with: one typed dependencies object, `ctx.deps` of a
`ToolContext[ToolDeps]`. A part left None is not configured here, and the tool that needs it
says so to the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import asyncpg

from tools.contract import ToolContext

if TYPE_CHECKING:
    from tools.artifacts import Artifacts
    from tools.builtin.mail import SmtpMailer
    from tools.builtin.sql import SqlAccess
    from tools.embeddings import Embedder
    from tools.sandbox.bwrap import ExecResult


class Sandbox(Protocol):
    """A code sandbox with one stateful interpreter per session (bubblewrap or E2B)."""

    async def run(self, session: str, code: str) -> ExecResult: ...

    async def close(self, session: str) -> None: ...

    def inputs(self, session: str) -> Path: ...

    def artifacts(self, session: str) -> Path: ...


@dataclass(frozen=True, kw_only=True)
class ToolDeps:
    sql: SqlAccess | None = None
    # Cadre's own database (the knowledge base lives there).
    db: asyncpg.Pool | None = None
    sandbox: Sandbox | None = None
    # Where the files a task writes are kept (and read back to attach to email).
    artifacts: Artifacts | None = None
    # Outgoing mail (SMTP_URL).
    mail: SmtpMailer | None = None
    # Text embeddings (memory, hybrid retrieval); None where no endpoint is configured.
    embedder: Embedder | None = None
    # Long-term memory (`remember`, `recall`) is on for this deployment (CADRE_MEMORY).
    memory: bool = True


Context = ToolContext[ToolDeps]
