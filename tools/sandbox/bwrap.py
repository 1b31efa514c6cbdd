"""The local code sandbox: bubblewrap around a long-lived Python interpreter per session.

Isolation: every namespace unshared (no network at all), a fresh /proc and a minimal /dev,
the system and the Python installation read-only, size-capped tmpfs for /tmp and for the
session's /workspace (the only writable places), capabilities dropped, uid 65534 inside,
`--die-with-parent` and `--new-session`. Limits: address space, file size, processes (per
sandbox user), open files, CPU seconds per call (set by the kernel), a wall-clock timeout per
call, and output caps. Under root, bwrap itself runs as the unprivileged `cadre-sbx` user so
the process limit counts only sandboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.sandbox.users import ensure_system_user, ensure_traversable, identity

KERNEL = Path(__file__).with_name("kernel.py")
SANDBOX_USER = "cadre-sbx"


class SandboxUnavailable(Exception):
    """bubblewrap is missing or cannot create namespaces here."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    wall_seconds: float = 60.0
    cpu_seconds: int = 60
    memory_bytes: int = 2 * 1024**3
    file_bytes: int = 64 * 1024**2
    processes: int = 256
    open_files: int = 256
    workspace_bytes: int = 256 * 1024**2
    tmp_bytes: int = 64 * 1024**2
    output_chars: int = 20_000
    idle_seconds: float = 900.0


@dataclass(frozen=True, kw_only=True)
class ExecResult:
    stdout: str = ""
    stderr: str = ""
    value: str | None = None
    error: str | None = None
    files: list[str] = field(default_factory=list)
    duration_ms: int = 0
    # Set when the interpreter was (re)started for this call after an earlier one died.
    state_lost: str | None = None
    # Set when this call killed the interpreter (timeout, CPU, memory, exit).
    died: str | None = None
    # Files the call wrote that could not be copied out, with the reason (a link, a device,
    # over the size limit): never an earlier version in their place.
    unsaved: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "", [], {})}


@dataclass
class _Kernel:
    proc: asyncio.subprocess.Process
    # The sandbox's pid 1 as the host sees it (from bwrap's --info-fd): its /proc/<pid>/root
    # is the sandbox's file system for as long as the sandbox lives.
    root_pid: int | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


class BwrapSandbox:
    """Sessions (one per task) of a stateful Python interpreter in bubblewrap."""

    def __init__(self, *, root: Path, limits: Limits | None = None,
                 python: str = sys.executable) -> None:
        self.root = root
        self.limits = limits or Limits()
        self.python = python
        self._kernels: dict[str, _Kernel] = {}
        self._lost: dict[str, str] = {}
        self._user: str | None = None
        self._prepared = False

    def _prepare(self) -> None:
        if self._prepared:
            return
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap), "
                                     "or set E2B_API_KEY")
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            ensure_system_user(SANDBOX_USER)
            self._user = SANDBOX_USER
            for path in (Path(sys.base_prefix), Path(sys.prefix), KERNEL, Path(self.python)):
                ensure_traversable(path)
        self._prepared = True

    def inputs(self, session: str) -> Path:
        """Files placed here (on the host) appear read-only in /workspace/inputs."""
        return self.root / "inputs" / session

    def _prepared_argv(self, session: str) -> list[str]:
        # File-system checks: run off the event loop.
        self._prepare()
        argv = self._argv()
        inputs = self.inputs(session)
        if inputs.is_dir():
            if self._user is not None:
                ensure_traversable(inputs)
                for path in [inputs, *inputs.rglob("*")]:
                    path.chmod(path.stat().st_mode | (0o005 if path.is_dir() else 0o004))
            at = argv.index("--chdir")
            argv[at:at] = ["--ro-bind", str(inputs), "/workspace/inputs"]
        return argv

    def _argv(self) -> list[str]:
        lim = self.limits
        argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                "--symlink", "usr/lib", "/lib"]
        if Path("/usr/lib64").exists():
            argv += ["--symlink", "usr/lib64", "/lib64"]
        # The only part of /etc the sandbox sees: font configuration, for charts' text. /etc
        # is its own read-only tmpfs, or creating the mount point would leave it writable.
        argv += ["--tmpfs", "/etc", "--ro-bind-try", "/etc/fonts", "/etc/fonts",
                 "--remount-ro", "/etc"]
        # Mounts apply in order: /tmp's tmpfs goes first, or it would hide a Python
        # installation or checkout that lives under /tmp.
        argv += ["--size", str(lim.tmp_bytes), "--tmpfs", "/tmp"]
        for prefix in sorted({str(Path(sys.base_prefix).resolve()), str(Path(sys.prefix))}):
            if not prefix.startswith("/usr/"):
                argv += ["--ro-bind", prefix, prefix]
        argv += ["--ro-bind", str(KERNEL), "/sandbox/kernel.py",
                 "--proc", "/proc", "--dev", "/dev",
                 "--size", str(lim.workspace_bytes), "--tmpfs", "/workspace",
                 "--chdir", "/workspace", "--clearenv",
                 "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                 "--setenv", "XDG_CACHE_HOME", "/tmp/.cache",
                 "--setenv", "MPLBACKEND", "Agg", "--setenv", "MPLCONFIGDIR", "/tmp",
                 "--setenv", "OPENBLAS_NUM_THREADS", "1", "--setenv", "OMP_NUM_THREADS", "1",
                 "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
                 "--setenv", "CADRE_OUTPUT_CAP", str(lim.output_chars),
                 self.python, "-u", "/sandbox/kernel.py"]
        return argv

    def _rlimits(self) -> None:
        # Runs in the child before exec; bwrap and the interpreter inherit these.
        lim = self.limits
        for kind, value in ((resource.RLIMIT_AS, lim.memory_bytes),
                            (resource.RLIMIT_FSIZE, lim.file_bytes),
                            (resource.RLIMIT_NPROC, lim.processes),
                            (resource.RLIMIT_NOFILE, lim.open_files),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(kind, (value, value))

    async def _start(self, session: str) -> _Kernel:
        argv = await asyncio.to_thread(self._prepared_argv, session)
        info_read, info_write = os.pipe()
        try:
            argv[1:1] = ["--info-fd", str(info_write)]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
                # bwrap's own init process stays visible in the sandbox's /proc: it must not
                # carry the host's environment (API keys, database URLs) with it.
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, pass_fds=(info_write,),
                preexec_fn=self._rlimits, limit=4 * 1024 * 1024, **identity(self._user))
            os.close(info_write)
            info_write = -1
            # bwrap writes the info right after creating the namespaces and closes the pipe
            # (or exits, closing it): the read always ends.
            root_pid = await asyncio.to_thread(_read_child_pid, info_read)
        finally:
            if info_write != -1:
                os.close(info_write)
            os.close(info_read)
        kernel = _Kernel(proc=proc, root_pid=root_pid)
        self._kernels[session] = kernel
        return kernel

    async def run(self, session: str, code: str) -> ExecResult:
        """Run `code` in the session's interpreter (started on first use, or again after it
        died, in which case the result says the earlier state was lost)."""
        await self._expire_idle()
        kernel = self._kernels.get(session)
        if kernel is None or kernel.proc.returncode is not None:
            kernel = await self._start(session)
        async with kernel.lock:
            kernel.last_used = time.monotonic()
            lost = self._lost.pop(session, None)
            assert kernel.proc.stdin is not None and kernel.proc.stdout is not None
            request = json.dumps({"code": code, "cpu_seconds": self.limits.cpu_seconds})
            try:
                kernel.proc.stdin.write(request.encode() + b"\n")
                await kernel.proc.stdin.drain()
                line = await asyncio.wait_for(kernel.proc.stdout.readline(),
                                              timeout=self.limits.wall_seconds)
            except TimeoutError:
                await self._kill(session)
                return self._died(session, lost, f"the call ran longer than "
                                                  f"{self.limits.wall_seconds:g} s and was stopped")
            except (BrokenPipeError, ConnectionResetError):
                line = b""
            if not line:
                code_ = await kernel.proc.wait()
                await self._kill(session)
                return self._died(session, lost, _describe_exit(code_))
            data = json.loads(line)
            unsaved = await asyncio.to_thread(self._copy_out, session, kernel, data["files"])
            return ExecResult(stdout=data["stdout"], stderr=data["stderr"], value=data["value"],
                              error=data["error"],
                              files=[n for n in data["files"] if n not in unsaved],
                              unsaved=unsaved, duration_ms=data["duration_ms"], state_lost=lost)

    def _died(self, session: str, lost: str | None, why: str) -> ExecResult:
        self._lost[session] = f"the previous interpreter stopped ({why})"
        return ExecResult(error=why, died=why, state_lost=lost)

    def artifacts(self, session: str) -> Path:
        """Where the session's workspace files are copied after each call (on the host)."""
        return self.root / session

    def _copy_out(self, session: str, kernel: _Kernel, names: list[str]) -> dict[str, str]:
        """Copy the regular files the call wrote out of the sandbox, never following a link.
        A file that cannot be copied loses its earlier copy too, and is returned with why:
        an old version must never stand in for the new one."""
        unsaved: dict[str, str] = {}
        if not names:
            return unsaved
        target = self.artifacts(session)
        target.mkdir(parents=True, exist_ok=True)
        root = Path(f"/proc/{kernel.root_pid}/root/workspace") if kernel.root_pid else None
        for name in names:
            out = target / name.replace("/", "__")
            out.unlink(missing_ok=True)
            if root is None:
                unsaved[name] = "the sandbox's files could not be reached"
                continue
            data, why = _read_inside(root, name, self.limits.file_bytes)
            if data is None:
                unsaved[name] = why
                continue
            partial = out.with_name(out.name + ".partial")
            partial.write_bytes(data)
            partial.replace(out)
        return unsaved

    async def _expire_idle(self) -> None:
        now = time.monotonic()
        for session, kernel in list(self._kernels.items()):
            if not kernel.lock.locked() and now - kernel.last_used > self.limits.idle_seconds:
                await self._kill(session)
                self._lost[session] = "the previous interpreter was idle too long and stopped"

    async def _kill(self, session: str) -> None:
        kernel = self._kernels.pop(session, None)
        if kernel is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(kernel.proc.pid, signal.SIGKILL)
        await kernel.proc.wait()

    async def close(self, session: str) -> None:
        await self._kill(session)
        self._lost.pop(session, None)

    async def aclose(self) -> None:
        for session in list(self._kernels):
            await self._kill(session)


def _read_child_pid(fd: int) -> int | None:
    """The `child-pid` bwrap reports on its --info-fd (None if it failed before writing)."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        pid = json.loads(data)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) else None


def _read_inside(root: Path, name: str, limit: int) -> tuple[bytes | None, str]:
    """Open `root/name` one component at a time with O_NOFOLLOW: a symlink planted in the
    workspace must not make the host read its own files. Returns the bytes, or None and why."""
    flags = os.O_RDONLY | os.O_NOFOLLOW
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None, "not a path inside the workspace"
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError as exc:
        return None, f"the sandbox's files could not be reached ({exc.strerror})"
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        try:
            info = os.fstat(file_fd)
            if not stat.S_ISREG(info.st_mode):
                return None, "not a regular file"
            if info.st_size > limit:
                return None, f"larger than the {limit} byte limit"
            with os.fdopen(file_fd, "rb", closefd=False) as handle:
                return handle.read(limit), ""
        finally:
            os.close(file_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "a symbolic link"
        if exc.errno == errno.ENOENT:
            return None, "removed before it could be copied"
        return None, f"could not be read ({exc.strerror})"
    finally:
        os.close(fd)


def _describe_exit(code: int) -> str:
    # bwrap reports a child killed by signal N as exit status 128 + N.
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum:
        name = signal.Signals(signum).name
        why = {"SIGXCPU": "it used up its CPU time", "SIGKILL": "it was killed",
               "SIGSEGV": "it crashed"}.get(name, "it was stopped")
        return f"the interpreter ended with {name}: {why}"
    return f"the interpreter exited with status {code}"
