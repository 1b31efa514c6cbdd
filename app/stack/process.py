"""Child processes of `cadre up`: started in their own session, stopped in order, never orphaned."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from app.errors import StackError, first_line
from tools.sandbox.users import identity

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (after any setuid, which would clear it):
    # if `cadre up` is killed outright, the kernel sends SIGTERM here, so nothing is orphaned.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(kw_only=True)
class ManagedProcess:
    """One supervised child: its command, environment, log file and how it likes to be stopped."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    echo: Callable[[str], None] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _pump: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        stdout: int | IO[bytes] = subprocess.PIPE if self.echo else log
        self.popen = subprocess.Popen(
            list(self.argv),
            env=self.env,
            cwd=self.cwd,
            **identity(self.user),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if self.echo:
            self._pump = threading.Thread(
                target=self._copy_output, args=(log,), name=f"log-{self.name}", daemon=True
            )
            self._pump.start()
        else:
            log.close()

    def _copy_output(self, log: IO[bytes]) -> None:
        assert self.popen is not None and self.popen.stdout is not None and self.echo
        with log:
            for raw in self.popen.stdout:
                log.write(raw)
                log.flush()
                self.echo(f"{self.name:>9} | {raw.decode(errors='replace').rstrip()}")

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the process to stop, then kill its whole process group if it does not."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever it started in its session (e.g. postgres backends) goes too.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.popen.wait()
        if self._pump is not None:
            self._pump.join(timeout=2)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " / ".join(line.strip() for line in text[-lines:])


def wait_ready(
    proc: ManagedProcess,
    probe: Callable[[], T],
    *,
    what: str,
    errors: tuple[type[BaseException], ...],
    timeout: float,
    interval: float = 0.2,
) -> T:
    """Call `probe` until it returns; any of `errors` means "not yet". Fails early, with the
    log's tail, if the process exits meanwhile."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StackError(f"{what} exited while starting: {proc.log_tail()}")
        try:
            return probe()
        except errors as exc:
            last = first_line(exc)
        time.sleep(interval)
    raise StackError(f"{what} did not become ready in {timeout:.0f}s: {last}")


def wheel_file(package: str, relative: str, *, instead: str) -> Path:
    """A binary shipped inside an installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            f"the embedded {package} is not installed; run `make run` (or "
            f"`pip install -e .[embedded]`), or {instead}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / relative
