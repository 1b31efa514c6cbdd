"""`python`: run code in the task's sandboxed, stateful interpreter (variables, imports and
files persist between calls; pandas, numpy and matplotlib are there; no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tools.builtin.deps import Context
from tools.contract import ToolError, Toolset, Untrusted


def register(toolset: Toolset, *, wall_seconds: float) -> None:
    # The code runs in a sandbox with no network and a throw-away workspace: its effects stay
    # there, so the call is read-only as far as the world is concerned.
    # Computation on the task's own inputs: the same code gives the same result.
    @toolset.tool(risk="read_only", timeout=wall_seconds + 15, max_output_chars=30_000,
                  live_data=False)
    async def python(ctx: Context, code: str) -> dict[str, Any] | Untrusted[dict[str, Any]]:
        """Run Python code in your own sandboxed interpreter. State persists between calls
        (like a notebook). pandas, numpy and matplotlib are installed; uploaded files and
        your outputs live in /workspace; figures you draw are saved as PNG files there. The
        value of the last expression is returned. There is no network access.

        Args:
            code: Python source to run, as in a notebook cell; files it writes in
                /workspace become the task's artifacts.
        """
        sandbox = ctx.deps.sandbox
        if sandbox is None:
            raise ToolError("no code sandbox is configured (install bubblewrap or set E2B_API_KEY)")
        result = await sandbox.run(ctx.task_id, code)
        body: dict[str, Any] = result.to_json()
        artifacts = ctx.deps.artifacts
        if artifacts is not None and result.files:
            saved = await artifacts.collect(ctx.task_id, sandbox.artifacts(ctx.task_id),
                                            result.files)
            body.pop("files", None)
            if saved:
                body["artifacts"] = [a.name for a in saved]
        if result.state_lost:
            body["note"] = (f"Your earlier Python state is gone: {result.state_lost}. "
                            "Re-run imports and setup before using earlier variables.")
        if await asyncio.to_thread(_has_inputs, sandbox.inputs(ctx.task_id)):
            return Untrusted(body)  # the output may carry text from the uploaded files
        return body


def _has_inputs(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())
