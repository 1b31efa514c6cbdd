"""Running the `cadre` command as a person would, from async tests."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

CADRE = [sys.executable, "-m", "app.cli"]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


async def run_cadre(*args: str, env: dict[str, str], cwd: Path | None = None,
                    timeout: float = 120, stdin: bytes | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *CADRE, *args, env=env, cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
