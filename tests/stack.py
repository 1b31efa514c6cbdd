"""`cadre up` run as a person runs it, for tests that need the whole stack (fixtures
`stack_env` and `start_up` in conftest.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path


class UpProcess:
    """A running `cadre up` whose output is drained continuously into `lines`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(self, needle: str, timeout: float = 180) -> None:
        async def _poll() -> None:
            while not any(needle in line for line in self.lines):
                if self.proc.returncode is not None:
                    raise AssertionError(f"cadre up exited ({self.proc.returncode}):\n{self.text}")
                await asyncio.sleep(0.2)
        try:
            await asyncio.wait_for(_poll(), timeout)
        except TimeoutError:
            raise AssertionError(f"no line with {needle!r} from cadre up in {timeout:g}s:\n"
                                 f"{self.text}") from None

    async def finish(self, timeout: float = 90) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code


def stack_file(cwd: Path) -> dict[str, object]:
    """The running stack's `stack.json` under `cwd`."""
    return json.loads((cwd / ".cadre" / "stack.json").read_text())  # type: ignore[no-any-return]
