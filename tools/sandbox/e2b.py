"""The hosted backend: E2B's code interpreter behind the same interface as the local
bubblewrap sandbox (`run`, `close`, `inputs`, `artifacts`). Chosen when E2B_API_KEY is set."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tools.contract import cap_text
from tools.sandbox.bwrap import ExecResult, Limits

Create = Callable[[], Awaitable[Any]]


class E2BSandbox:
    """One E2B sandbox per session, with internet access off."""

    def __init__(self, *, root: Path, api_key: str | None = None, limits: Limits | None = None,
                 create: Create | None = None) -> None:
        self.root = root
        self.limits = limits or Limits()
        if create is None:
            from e2b_code_interpreter import AsyncSandbox

            async def create() -> Any:
                return await AsyncSandbox.create(api_key=api_key, allow_internet_access=False,
                                                 timeout=int(self.limits.idle_seconds))
        self._create = create
        self._boxes: dict[str, Any] = {}
        self._lost: dict[str, str] = {}

    def inputs(self, session: str) -> Path:
        return self.root / "inputs" / session

    def artifacts(self, session: str) -> Path:
        return self.root / session

    async def _start(self, session: str) -> Any:
        box = await self._create()
        inputs = self.inputs(session)
        files = await asyncio.to_thread(lambda: sorted(inputs.glob("*")) if inputs.is_dir() else [])
        for path in files:
            data = await asyncio.to_thread(path.read_bytes)
            await box.files.write(f"inputs/{path.name}", data)
        self._boxes[session] = box
        return box

    async def run(self, session: str, code: str) -> ExecResult:
        box = self._boxes.get(session) or await self._start(session)
        lost = self._lost.pop(session, None)
        try:
            execution = await asyncio.wait_for(
                box.run_code(code, timeout=self.limits.wall_seconds),
                timeout=self.limits.wall_seconds * 1.2 + 2)  # E2B enforces its own; this is a net
        except TimeoutError:
            await self.close(session)
            why = f"the call ran longer than {self.limits.wall_seconds:g} s and was stopped"
            self._lost[session] = f"the previous interpreter stopped ({why})"
            return ExecResult(error=why, died=why, state_lost=lost)
        cap = self.limits.output_chars
        value = next((r.text for r in execution.results if r.is_main_result and r.text), None)
        figures = [r.png for r in execution.results if getattr(r, "png", None)]
        names = await asyncio.to_thread(self._save_figures, session, figures)
        error = None
        if execution.error is not None:
            error = cap_text(f"{execution.error.traceback or ''}\n{execution.error.name}: "
                         f"{execution.error.value}".strip() + "\n", cap)
        return ExecResult(stdout=cap_text("".join(execution.logs.stdout), cap),
                          stderr=cap_text("".join(execution.logs.stderr), cap),
                          value=cap_text(value, cap) if value else None, error=error, files=names,
                          state_lost=lost)

    def _save_figures(self, session: str, figures: list[str]) -> list[str]:
        if not figures:
            return []
        target = self.artifacts(session)
        target.mkdir(parents=True, exist_ok=True)
        names = []
        for number, png in enumerate(figures, start=len(list(target.glob("figure-*.png"))) + 1):
            name = f"figure-{number}.png"
            (target / name).write_bytes(base64.b64decode(png))
            names.append(name)
        return names

    async def close(self, session: str) -> None:
        box = self._boxes.pop(session, None)
        if box is not None:
            await box.kill()

    async def aclose(self) -> None:
        for session in list(self._boxes):
            await self.close(session)
