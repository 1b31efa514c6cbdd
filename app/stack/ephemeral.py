"""Throw-away embedded services on free loopback ports, for the test suite and benchmarks."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.stack.embeddings import EmbeddedEmbeddings
from app.stack.ports import free_port
from app.stack.postgres import EmbeddedPostgres
from app.stack.process import ManagedProcess
from app.stack.redis import EmbeddedRedis
from app.stack.sqs import EmbeddedSQS


@dataclass(frozen=True, kw_only=True)
class Ephemeral:
    postgres: EmbeddedPostgres
    redis_url: str
    sqs_endpoint: str | None
    # The embedded embedding model's OpenAI-compatible base URL, when asked for.
    embeddings_url: str | None = None


@contextmanager
def ephemeral_services(root: Path, *, sqs: bool = True,
                       embeddings: bool = False) -> Iterator[Ephemeral]:
    """PostgreSQL, Redis and (optionally) the SQS endpoint and the embedding model, with data
    under `root`; all stopped on exit."""
    procs: list[ManagedProcess] = []
    try:
        pg = EmbeddedPostgres(data_dir=root / "pg", port=free_port(),
                              password=secrets.token_urlsafe(16), log_path=root / "pg.log")
        pg.initialise()
        procs.append(proc := pg.process())
        proc.start()
        pg.wait_ready(proc)
        rd = EmbeddedRedis(data_dir=root / "redis", port=free_port(),
                           password=secrets.token_urlsafe(16), log_path=root / "redis.log")
        procs.append(proc := rd.process())
        proc.start()
        rd.wait_ready(proc)
        endpoint = None
        if sqs:
            queue = EmbeddedSQS(port=free_port(), region="us-east-1", log_path=root / "sqs.log")
            procs.append(proc := queue.process())
            proc.start()
            queue.wait_ready(proc, "agent_tasks", 5)
            endpoint = queue.endpoint
        embeddings_url = None
        if embeddings:
            model = EmbeddedEmbeddings(port=free_port(), log_path=root / "embeddings.log")
            procs.append(proc := model.process())
            proc.start()
            model.wait_ready(proc)
            embeddings_url = model.base_url
        yield Ephemeral(postgres=pg, redis_url=rd.url, sqs_endpoint=endpoint,
                        embeddings_url=embeddings_url)
    finally:
        for proc in reversed(procs):
            proc.stop()
