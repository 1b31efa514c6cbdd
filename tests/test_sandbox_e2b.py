"""The E2B backend behind the sandbox interface, against a fake E2B client (the real service
cannot be reached from here). The fake keeps E2B's shapes: `Execution`, `Logs`, `Result`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import traceback
from pathlib import Path
from typing import Any

from e2b_code_interpreter.models import Execution, ExecutionError, Logs, Result

from tools.sandbox.e2b import E2BSandbox

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


class FakeFiles:
    def __init__(self) -> None:
        self.written: dict[str, bytes] = {}

    async def write(self, path: str, data: bytes) -> None:
        self.written[path] = data


class FakeBox:
    """Executes code in-process like E2B's kernel: state persists until `kill`."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.files = FakeFiles()
        self.killed = False

    async def run_code(self, code: str, timeout: float | None = None) -> Execution:
        if "sleep_forever" in code:
            await asyncio.sleep(3600)
        out = io.StringIO()
        results: list[Result] = []
        error = None
        lines = code.strip().splitlines()
        try:
            with contextlib.redirect_stdout(out):
                exec("\n".join(lines[:-1]), self.namespace)
                value = eval(lines[-1], self.namespace)
            if value is not None:
                results.append(Result(text=repr(value), is_main_result=True))
            if self.namespace.get("draw"):
                results.append(Result(png=PNG))
        except Exception as exc:
            error = ExecutionError(name=type(exc).__name__, value=str(exc),
                                   traceback="".join(traceback.format_exception_only(exc)))
        return Execution(results=results, logs=Logs(stdout=[out.getvalue()], stderr=[]),
                         error=error)

    async def kill(self) -> None:
        self.killed = True


async def test_e2b_backend_has_the_sandbox_interface(tmp_path: Path) -> None:
    boxes: list[FakeBox] = []

    async def create() -> FakeBox:
        boxes.append(FakeBox())
        return boxes[-1]

    sandbox = E2BSandbox(root=tmp_path, create=create)
    inputs = sandbox.inputs("t1")
    await asyncio.to_thread(inputs.mkdir, parents=True)
    await asyncio.to_thread((inputs / "data.csv").write_text, "a,b\n1,2\n")

    first = await sandbox.run("t1", "x = 41\nprint('hello')\nx + 1")
    assert (first.stdout, first.value, first.error) == ("hello\n", "42", None)
    assert boxes[0].files.written == {"inputs/data.csv": b"a,b\n1,2\n"}
    assert (await sandbox.run("t1", "x")).value == "41", "state persists"

    failed = await sandbox.run("t1", "1 / 0")
    assert failed.error is not None and "ZeroDivisionError: division by zero" in failed.error

    drawn = await sandbox.run("t1", "draw = True\nNone")
    assert drawn.files == ["figure-1.png"]
    assert (await asyncio.to_thread((sandbox.artifacts("t1") / "figure-1.png").read_bytes)
            ).startswith(b"\x89PNG")

    sandbox.limits = sandbox.limits.__class__(wall_seconds=0.2)
    stuck = await sandbox.run("t1", "sleep_forever\nNone")
    assert stuck.died is not None and boxes[0].killed
    again = await sandbox.run("t1", "'new box'")
    assert again.value == "'new box'" and again.state_lost is not None and len(boxes) == 2
    await sandbox.aclose()
    assert boxes[1].killed
