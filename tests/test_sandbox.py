"""The bubblewrap sandbox: stateful, useful (pandas, charts), and each abuse contained with a
clear result while the host stays untouched."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from tools.sandbox.bwrap import SANDBOX_USER, BwrapSandbox, Limits

LIMITS = Limits(wall_seconds=8, cpu_seconds=3, memory_bytes=1536 * 1024**2,
                workspace_bytes=16 * 1024**2, tmp_bytes=16 * 1024**2, file_bytes=8 * 1024**2,
                processes=64, output_chars=2_000)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[BwrapSandbox]:
    box = BwrapSandbox(root=tmp_path / "sandbox", limits=LIMITS)
    yield box
    await box.aclose()


async def test_state_persists_between_calls(sandbox: BwrapSandbox) -> None:
    assert (await sandbox.run("t1", "import statistics\nx = [1, 2, 3]")).error is None
    result = await sandbox.run("t1", "print('mean', statistics.mean(x))\nx + [4]")
    assert result.stdout == "mean 2\n" and result.value == "[1, 2, 3, 4]"
    failed = await sandbox.run("t1", "1 / 0")
    assert failed.error is not None and failed.error.endswith("ZeroDivisionError: division by zero\n")
    assert "kernel.py" not in failed.error, "only the cell's frames are shown"
    assert (await sandbox.run("t1", "len(x)")).value == "3", "an error keeps the state"


async def test_pandas_and_a_chart_become_artifacts(sandbox: BwrapSandbox) -> None:
    code = (
        "import pandas as pd, matplotlib.pyplot as plt\n"
        "df = pd.DataFrame({'month': [1, 2, 3], 'sales': [10, 30, 20]})\n"
        "df.to_csv('sales.csv', index=False)\n"
        "df.plot(x='month', y='sales')\n"
        "df['sales'].sum()"
    )
    result = await sandbox.run("t1", code)
    assert result.error is None, result.error
    assert result.value == "np.int64(60)"
    assert result.files == ["figure-1.png", "sales.csv"]
    png = await asyncio.to_thread((sandbox.artifacts("t1") / "figure-1.png").read_bytes)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


async def test_recovery_after_the_interpreter_is_killed(sandbox: BwrapSandbox) -> None:
    await sandbox.run("t1", "secret = 42")
    died = await sandbox.run("t1", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert died.died is not None and "SIGKILL" in died.died
    after = await sandbox.run("t1", "secret")
    assert after.state_lost is not None and "SIGKILL" in after.state_lost
    assert after.error is not None and "NameError" in after.error
    assert (await sandbox.run("t1", "'alive'")).value == "'alive'"


@pytest.mark.parametrize("code", [
    "import socket\nsocket.getaddrinfo('example.com', 443)",
    "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
    "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
])
async def test_no_network_at_all(sandbox: BwrapSandbox, code: str) -> None:
    result = await sandbox.run("t1", code)
    assert result.error is not None
    assert any(word in result.error for word in ("gaierror", "unreachable", "PermissionError",
                                                   "Operation not permitted"))


async def test_the_host_postgres_on_loopback_is_unreachable(sandbox: BwrapSandbox,
                                                            services: object) -> None:
    port = services.postgres.port  # type: ignore[attr-defined]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
    result = await sandbox.run("t1", code)
    assert result.error is not None and "refused" in result.error.lower()


@pytest.mark.parametrize("path", ["/usr/bin/cadre-was-here", "/sandbox/kernel.py",
                                  sys.prefix + "/cadre-was-here", "/etc/passwd-cadre"])
async def test_nothing_outside_the_workspace_is_writable(sandbox: BwrapSandbox, path: str) -> None:
    result = await sandbox.run("t1", f"open({path!r}, 'w').write('x')")
    assert result.error is not None
    assert any(w in result.error for w in ("Read-only file system", "No such file",
                                           "Permission denied"))
    assert not await asyncio.to_thread(Path(path).exists) or path == "/sandbox/kernel.py"


async def test_host_secrets_are_not_visible(sandbox: BwrapSandbox, tmp_path: Path) -> None:
    project_readme = Path(sys.prefix).parent / "README.md"
    assert await asyncio.to_thread(project_readme.exists)
    os.environ["CADRE_TEST_HOST_SECRET"] = "hunter2"
    try:
        code = (
            "import glob, os\n"
            f"visible = [p for p in ['/etc/shadow', {str(project_readme)!r}, '/root/.bash_history']"
            " if os.path.exists(p)]\n"
            "envs = ''\n"
            "for p in glob.glob('/proc/*/environ'):\n"
            "    try: envs += open(p).read()\n"
            "    except OSError: pass\n"
            "(visible, 'hunter2' in envs, sorted(os.listdir('/proc'))[:3] != [], len(os.environ))"
        )
        result = await sandbox.run("t1", code)
    finally:
        del os.environ["CADRE_TEST_HOST_SECRET"]
    assert result.error is None, result.error
    visible, leaked, _, _ = eval(result.value or "")
    assert visible == [] and leaked is False


async def test_other_tasks_workspaces_are_separate(sandbox: BwrapSandbox) -> None:
    await sandbox.run("t1", "open('mine.txt', 'w').write('t1 data')")
    other = await sandbox.run("t2", "import os\nos.listdir('.')")
    assert other.value == "[]"


def _in_namespace(namespace: str) -> list[int]:
    """Host pids of the processes in one pid namespace (other sandboxes on the host excluded)."""
    found = []
    for proc in psutil.process_iter(["username"]):
        if proc.info["username"] != SANDBOX_USER:
            continue
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/pid") == namespace:
                found.append(proc.pid)
        except OSError:
            pass
    return found


async def test_fork_bomb_is_contained(sandbox: BwrapSandbox) -> None:
    await sandbox.run("t1", "'warm'")
    root_pid = sandbox._kernels["t1"].root_pid
    assert root_pid is not None
    namespace = os.readlink(f"/proc/{root_pid}/ns/pid")
    result = await sandbox.run("t1", "import os\nwhile True:\n    os.fork()")
    assert result.error is not None or result.died is not None
    await sandbox.close("t1")
    async with asyncio.timeout(15):
        while _in_namespace(namespace):
            await asyncio.sleep(0.2)
    assert (await sandbox.run("t1", "'fine'")).value == "'fine'"


async def test_memory_bomb_is_a_memory_error_and_state_survives(sandbox: BwrapSandbox) -> None:
    await sandbox.run("t1", "keep = 7")
    result = await sandbox.run("t1", "hog = bytearray(8 * 1024**3)")
    assert result.error is not None and "MemoryError" in result.error
    assert (await sandbox.run("t1", "keep")).value == "7"


async def test_a_call_after_one_that_used_cpu_runs(sandbox: BwrapSandbox) -> None:
    # The CPU limit of a call counts from what the kernel used before it: a first call
    # that used over a second of CPU must not leave the next one refused (the kernel once
    # exited between the two, so the second call's files were never saved).
    spent = await sandbox.run("t1", "import time\nt = time.process_time()\n"
                                    "while time.process_time() - t < 1.5:\n    pass\n"
                                    "open('out.txt', 'w').write('v1')")
    assert spent.error is None and spent.died is None, spent
    again = await sandbox.run("t1", "open('out.txt', 'w').write('v2')\n'ok'")
    assert (again.value, again.died, again.files) == ("'ok'", None, ["out.txt"])
    assert (sandbox.artifacts("t1") / "out.txt").read_text() == "v2"


async def test_infinite_loops_are_stopped(sandbox: BwrapSandbox) -> None:
    busy = await sandbox.run("t1", "while True:\n    pass")
    assert busy.died is not None and "SIGXCPU" in busy.died
    sleepy = await sandbox.run("t1", "import time\ntime.sleep(60)")
    assert sleepy.died is not None and "longer than 8 s" in sleepy.died


async def test_huge_output_is_capped(sandbox: BwrapSandbox) -> None:
    result = await sandbox.run("t1", "print('x' * 5_000_000)\n'y' * 10_000")
    assert len(result.stdout) < 2_100 and "[output truncated" in result.stdout
    assert result.value is not None and len(result.value) <= 2_000


async def test_disk_fill_is_contained(sandbox: BwrapSandbox) -> None:
    code = ("chunk = b'0' * 1024**2\n"
            "with open('fill.bin', 'wb') as f:\n"
            "    for _ in range(1024):\n"
            "        f.write(chunk)")
    result = await sandbox.run("t1", code)
    assert result.error is not None or result.died is not None
    text = (result.error or "") + (result.died or "")
    assert any(w in text for w in ("No space left", "File too large", "SIGXFSZ"))
    assert (await sandbox.run("t2", "'another task is fine'")).value == "'another task is fine'"


async def test_killing_the_parent_cannot_reach_the_host(sandbox: BwrapSandbox) -> None:
    # The parent inside is the namespace's init, which ignores SIGKILL from within; the real
    # parent (this process) is in another PID namespace and cannot even be named.
    result = await sandbox.run("t1", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                                     "import time\ntime.sleep(0.5)\nos.getppid()")
    assert result.error is None and result.value == "1"
    assert (await sandbox.run("t1", "1 + 1")).value == "2"


async def test_symlinks_cannot_leak_host_files(sandbox: BwrapSandbox) -> None:
    code = ("import os\n"
            "os.symlink('/etc/hostname', 'leak.txt')\n"
            "os.makedirs('d')\n"
            "os.symlink('/etc', 'd/etc')\n"
            "open('real.txt', 'w').write('ok')")
    result = await sandbox.run("t1", code)
    assert result.error is None, result.error
    copied = sorted(p.name for p in await asyncio.to_thread(
        lambda: list(sandbox.artifacts("t1").iterdir())))
    assert copied == ["real.txt"], "links are never followed when files are copied out"
    assert result.files == ["real.txt"]
    assert result.unsaved == {"leak.txt": "a symbolic link"}, "what was not copied says why"


async def test_a_rewritten_file_is_copied_out_as_its_last_version(sandbox: BwrapSandbox) -> None:
    # Same size every time, calls back to back: file times that tick coarsely (a jiffy on
    # many kernels) cannot tell these versions apart; their content can.
    for n in range(30):
        setup = "import os\nos.makedirs('notes', exist_ok=True)\n" if n == 0 else ""
        result = await sandbox.run("t1", f"{setup}open('notes/v.txt', 'w').write('version {n:02d}')")
        assert result.files == ["notes/v.txt"], (n, result)
        copied = await asyncio.to_thread((sandbox.artifacts("t1") / "notes__v.txt").read_text)
        assert copied == f"version {n:02d}"


async def test_copying_out_does_not_depend_on_the_wall_clock(
        sandbox: BwrapSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lost-file defect: the copy read the interpreter's files through a process found by
    # psutil, whose children() drops processes that look older than their parent once the
    # system clock is stepped (psutil #2542). The sandbox now knows its own pid 1.
    await sandbox.run("t1", "open('report.txt', 'w').write('first version')")
    import itertools

    import psutil._pslinux as pslinux

    steps, real = itertools.count(), pslinux.boot_time
    monkeypatch.setattr(pslinux, "boot_time", lambda: real() - next(steps))
    result = await sandbox.run("t1", "open('report.txt', 'w').write('v2')")
    assert result.files == ["report.txt"]
    copied = await asyncio.to_thread((sandbox.artifacts("t1") / "report.txt").read_text)
    assert copied == "v2"


async def test_a_file_that_cannot_be_copied_leaves_no_stale_copy(sandbox: BwrapSandbox) -> None:
    await sandbox.run("t1", "open('out.txt', 'w').write('old')")
    result = await sandbox.run("t1", "import os\nos.remove('out.txt')\n"
                                     "os.symlink('/etc/hostname', 'out.txt')")
    assert result.unsaved == {"out.txt": "a symbolic link"}
    assert not await asyncio.to_thread((sandbox.artifacts("t1") / "out.txt").exists), \
        "an earlier version never stands in for the new one"
    fifo = await sandbox.run("t1", "import os\nos.mkfifo('pipe')")
    assert fifo.unsaved == {"pipe": "not a regular file"}, "and copying it does not hang"


async def test_cadre_sandbox_exec_from_the_shell(clean_env: dict[str, str]) -> None:
    import json

    from tests.cli import run_cadre

    ok = await run_cadre("sandbox", "exec", env=clean_env,
                         stdin=b"import numpy as np\nprint('hi')\nint(np.arange(5).sum())")
    assert ok.code == 0, ok.stderr
    assert json.loads(ok.stdout) == {"stdout": "hi\n", "value": "10",
                                     "duration_ms": json.loads(ok.stdout)["duration_ms"]}
    bad = await run_cadre("sandbox", "exec", env=clean_env, stdin=b"open('/etc/shadow').read()")
    assert bad.code == 1 and "FileNotFoundError" in json.loads(bad.stdout)["error"]


async def test_python_tool_tells_the_model_when_state_was_lost(sandbox: BwrapSandbox) -> None:
    import json

    from tools import ToolContext
    from tools.builtin import ToolDeps, builtin_toolset

    tool = builtin_toolset(with_sql=False, with_python=True).get("python")
    assert tool is not None and tool.risk == "read_only"
    ctx = ToolContext(task_id="task-9", tool_call_id="c1", deps=ToolDeps(sandbox=sandbox))
    first = await tool.invoke(ctx, {"code": "data = [3, 1, 2]\nsorted(data)"})
    assert json.loads(first.content)["value"] == "[1, 2, 3]"
    await tool.invoke(ctx, {"code": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"})
    after = json.loads((await tool.invoke(ctx, {"code": "1"})).content)
    assert "Your earlier Python state is gone" in after["note"]
    missing = await tool.invoke(ToolContext(task_id="t", tool_call_id="c", deps=ToolDeps()),
                                {"code": "1"})
    assert not missing.ok and "no code sandbox is configured" in missing.content


async def test_uploaded_inputs_are_visible_read_only(sandbox: BwrapSandbox) -> None:
    inputs = sandbox.inputs("t1")

    def _upload() -> None:
        inputs.mkdir(parents=True)
        (inputs / "sales.csv").write_text("month,sales\n1,10\n2,30\n")

    await asyncio.to_thread(_upload)
    result = await sandbox.run("t1", "import pandas as pd\n"
                                     "int(pd.read_csv('inputs/sales.csv')['sales'].sum())")
    assert result.value == "40", result.error
    denied = await sandbox.run("t1", "open('inputs/sales.csv', 'a').write('3,99\\n')")
    assert denied.error is not None
    assert "Read-only file system" in denied.error or "Permission denied" in denied.error
    assert await asyncio.to_thread((inputs / "sales.csv").read_text) == "month,sales\n1,10\n2,30\n"
    assert "inputs/sales.csv" not in (result.files or []), "inputs are not reported as outputs"
