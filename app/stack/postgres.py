"""PostgreSQL 16 from the `pgserver` wheel's binaries, run as a plain child process.

The wheel's own launcher is not used: it serves over a Unix socket in a shared runtime
directory and outlives its caller, while `cadre up` wants a loopback TCP port, a data
directory under `.cadre/pg` and a process it can stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from app.errors import StackError
from app.stack.process import ManagedProcess, wait_ready, wheel_file
from tools.sandbox.users import (
    UserSetupError,
    chown,
    ensure_system_user,
    ensure_traversable,
    identity,
)

# PostgreSQL refuses to run as root; under root the server runs as this system user.
SERVICE_USER = "cadre"
DATABASE = "cadre"
SUPERUSER = "cadre"


def bin_dir() -> Path:
    """Where the `pgserver` wheel keeps `initdb` and `postgres`."""
    return wheel_file("pgserver", "pginstall/bin", instead="set DATABASE_URL to an existing server")


@dataclass(kw_only=True)
class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir` and persists across restarts."""

    data_dir: Path
    port: int
    password: str
    log_path: Path

    @property
    def url(self) -> str:
        return self.admin_url(DATABASE)

    def admin_url(self, database: str = "postgres") -> str:
        # The embedded server has no TLS; saying so spares every client a certificate search.
        return (f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"
                "?sslmode=disable")

    def _run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            ensure_system_user(SERVICE_USER)
        except UserSetupError as exc:
            raise StackError(f"PostgreSQL cannot run as root and {exc}; run cadre as a "
                             "normal user") from None
        return SERVICE_USER

    def initialise(self) -> None:
        """Create the cluster on first use (idempotent), with password auth on loopback."""
        user = self._run_as()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            ensure_traversable(self.data_dir)
            chown(self.data_dir, user, recursive=True)
        self.data_dir.chmod(0o700)
        if (self.data_dir / "PG_VERSION").exists():
            return
        # initdb reads the password from a file: a private one, readable by the server's user.
        pwfile = self.data_dir.parent / f".initdb-{os.getpid()}"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.password)
        try:
            if user is not None:
                chown(pwfile, user)
            result = subprocess.run(
                [
                    str(bin_dir() / "initdb"),
                    "-D", str(self.data_dir),
                    "-U", SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
                **identity(user),
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise StackError(f"initdb failed in {self.data_dir}: {detail[-1] if detail else '?'}")

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="postgres",
            argv=[
                str(bin_dir() / "postgres"),
                "-D", str(self.data_dir),
                "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "unix_socket_directories=",
                "-c", "max_connections=300",
                "-c", "fsync=on",
            ],
            log_path=self.log_path,
            user=self._run_as(),
            # SIGINT is PostgreSQL's "fast" shutdown: abort sessions, checkpoint, exit.
            stop_signal=signal.SIGINT,
        )

    def wait_ready(self, proc: ManagedProcess, timeout: float = 60.0) -> None:
        """Block until the server accepts connections, then make sure the `cadre` database exists."""

        def _probe() -> None:
            with psycopg.connect(self.admin_url(), connect_timeout=2, autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')

        wait_ready(proc, _probe, what="PostgreSQL", errors=(psycopg.OperationalError,),
                   timeout=timeout)
