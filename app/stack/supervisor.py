"""`cadre up`: start the whole local stack, supervise it, and stop all of it cleanly.

Backing services run only where no URL is configured, so the same command also serves a
developer who points Cadre at a shared Postgres but wants a local Redis and queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
import redis
import redis.asyncio as aioredis
from pydantic import SecretStr

from app import kb, migrate
from app.demo_db import ensure_demo_database
from app.deps import connect_db
from app.errors import StackError
from app.events import EventLog
from app.keys import IssuedKey, bootstrap_admin
from app.liveness import alive_key, worker_id
from app.queue import TaskQueue
from app.service import TaskService
from app.settings import Settings, process_started, read_running_stack, redact_url
from app.stack import embeddings, llm
from app.stack.mail import MailCapture
from app.stack.ports import ensure_free
from app.stack.postgres import EmbeddedPostgres
from app.stack.process import ManagedProcess, wait_ready
from app.stack.redis import EmbeddedRedis
from app.stack.secrets import local_secrets
from app.stack.sqs import LOCAL_CREDENTIALS, EmbeddedSQS
from app.stack.traces import TraceViewer, viewer_executable

Echo = Callable[[str], None]

# A crashing API or worker is restarted, but not forever: past this many restarts within
# the window, `cadre up` gives up and says so.
_MAX_RESTARTS = 5
_RESTART_WINDOW_S = 60.0


class _StopRequested(Exception):
    pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _StopRequested(signal.Signals(signum).name)


@dataclass
class _Role:
    proc: ManagedProcess
    restarts: list[float] = field(default_factory=list)


@dataclass
class LocalStack:
    """What `cadre up` started, in start order, so it can stop them in reverse."""

    settings: Settings
    workers: int
    echo: Echo
    traces: bool = False
    services: list[ManagedProcess] = field(default_factory=list)
    apps: list[_Role] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    trace_viewer_url: str | None = None

    @property
    def home(self) -> Path:
        return self.settings.home.resolve()

    def run(self) -> int:
        """Start everything, supervise until SIGINT/SIGTERM, stop everything. Returns the exit code."""
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        code = 0
        try:
            admin_key = self._start()
            self._announce(admin_key)
            code = self._supervise()
        except _StopRequested as stop:
            self.echo(f"cadre up: {stop} received, stopping")
        finally:
            # A second Ctrl-C must not cut the orderly shutdown short.
            for s in previous:
                signal.signal(s, signal.SIG_IGN)
            self._stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return code

    # -- start ------------------------------------------------------------------------------

    def _start(self) -> IssuedKey | None:
        s = self.settings
        running = read_running_stack(self.home / "stack.json")
        if running:
            raise StackError(
                f"a Cadre stack is already running from {self.home} (pid {running['pid']}); "
                "stop it first, or use another directory / CADRE_HOME"
            )
        planned = [("CADRE_API_PORT", s.api_port, "the API")]
        if not s.database_url:
            planned.append(("CADRE_PG_PORT", s.pg_port, "PostgreSQL"))
        if not s.redis_url:
            planned.append(("CADRE_REDIS_PORT", s.redis_port, "Redis"))
        if not s.sqs_queue_url:
            planned.append(("CADRE_SQS_PORT", s.sqs_port, "the SQS endpoint"))
        serve_model = not s.openai_api_key and not s.openai_base_url and llm.available()
        if serve_model:
            planned.append(("CADRE_LLM_PORT", s.llm_port, "the offline model server"))
        serve_embeddings = (not s.embedding_model and not s.embedding_base_url
                            and embeddings.available())
        if serve_embeddings:
            planned.append(("CADRE_EMBEDDING_PORT", s.embedding_port,
                            "the offline embedding model"))
        if not s.smtp_url:
            planned.append(("CADRE_SMTP_PORT", s.smtp_port, "the mail capture server"))
        viewer = None
        if self.traces:
            viewer = TraceViewer(executable=viewer_executable(s.traces_viewer), port=s.traces_port,
                                 grpc_port=s.traces_grpc_port, data_dir=self.home / "phoenix",
                                 log_path=self.home / "logs" / "traces.log")
            planned += [("CADRE_TRACES_PORT", s.traces_port, "the trace viewer"),
                        ("CADRE_TRACES_GRPC_PORT", s.traces_grpc_port, "the trace viewer's OTLP/gRPC")]
        for env_name, port, service in planned:
            ensure_free(port, service=service, env_name=env_name)

        self.home.mkdir(parents=True, exist_ok=True)
        logs = self.home / "logs"
        passwords = local_secrets(self.home)
        env = {"CADRE_HOME": str(self.home), "AWS_REGION": s.aws_region}

        if s.database_url:
            migrate.probe(s.database_url)
            env["DATABASE_URL"] = s.database_url
        else:
            pg = EmbeddedPostgres(data_dir=self.home / "pg", port=s.pg_port,
                                  password=passwords["postgres_password"],
                                  log_path=logs / "postgres.log")
            self.echo(f"starting PostgreSQL on 127.0.0.1:{s.pg_port} (data in {pg.data_dir})")
            pg.initialise()
            proc = self._launch_service(pg.process())
            pg.wait_ready(proc)
            env["DATABASE_URL"] = pg.url

        if s.redis_url:
            env["REDIS_URL"] = s.redis_url
        else:
            rd = EmbeddedRedis(data_dir=self.home / "redis", port=s.redis_port,
                               password=passwords["redis_password"], log_path=logs / "redis.log")
            self.echo(f"starting Redis on 127.0.0.1:{s.redis_port}")
            proc = self._launch_service(rd.process())
            rd.wait_ready(proc)
            env["REDIS_URL"] = rd.url

        if s.sqs_queue_url:
            env["SQS_QUEUE_URL"] = s.sqs_queue_url
            if s.aws_endpoint_url_sqs:
                env["AWS_ENDPOINT_URL_SQS"] = s.aws_endpoint_url_sqs
        else:
            sqs = EmbeddedSQS(port=s.sqs_port, region=s.aws_region, log_path=logs / "sqs.log")
            self.echo(f"starting the SQS endpoint on 127.0.0.1:{s.sqs_port}")
            proc = self._launch_service(sqs.process())
            env["SQS_QUEUE_URL"] = sqs.wait_ready(proc, s.queue_name, s.max_receive_count)
            env["AWS_ENDPOINT_URL_SQS"] = sqs.endpoint
            env.update(LOCAL_CREDENTIALS)

        if serve_model:
            model = llm.EmbeddedLLM(port=s.llm_port, log_path=logs / "llm.log")
            self.echo(f"starting the offline model ({llm.MODEL_ALIAS}) on 127.0.0.1:{s.llm_port}")
            proc = self._launch_service(model.process())
            model.wait_ready(proc)
            env.update(OPENAI_BASE_URL=model.base_url, CADRE_MODEL=llm.MODEL_ALIAS,
                       CADRE_OFFLINE_MODEL="true")
        elif not s.openai_api_key and not s.openai_base_url:
            self.echo("warning: no model configured and the offline model is not installed "
                      "(make run installs it); set OPENAI_API_KEY or OPENAI_BASE_URL")

        if serve_embeddings:
            embedder = embeddings.EmbeddedEmbeddings(port=s.embedding_port,
                                                     log_path=logs / "embeddings.log")
            self.echo(f"starting the offline embedding model ({embeddings.MODEL_NAME}) on "
                      f"127.0.0.1:{s.embedding_port}")
            proc = self._launch_service(embedder.process())
            embedder.wait_ready(proc)
            env["CADRE_EMBEDDING_BASE_URL"] = embedder.base_url
        elif s.embedding_base_url:
            env["CADRE_EMBEDDING_BASE_URL"] = s.embedding_base_url

        if s.smtp_url:
            env["SMTP_URL"] = s.smtp_url
        else:
            capture = MailCapture(port=s.smtp_port, directory=self.home / "mail",
                                  log_path=logs / "mail.log")
            self.echo(f"starting the mail capture server on 127.0.0.1:{s.smtp_port} "
                      f"(mail is kept in {capture.directory}, never delivered)")
            proc = self._launch_service(capture.process(sys.executable))
            capture.wait_ready(proc)
            env.update(SMTP_URL=capture.url, CADRE_DEV_MAILBOX_DIR=str(capture.directory))

        if viewer is not None:
            self.echo(f"starting the trace viewer (Arize Phoenix) on {viewer.url} "
                      f"(data in {viewer.data_dir})")
            proc = self._launch_service(viewer.process())
            viewer.wait_ready(proc)
            env.update(viewer.exporter_env())
            self.trace_viewer_url = viewer.url

        self.echo("applying database migrations")
        migrate.upgrade(env["DATABASE_URL"])
        if s.agent_sql_url:
            env["AGENT_SQL_URL"] = s.agent_sql_url
        elif not s.database_url:
            self.echo("preparing the demo database for the sql tool")
            env["AGENT_SQL_URL"] = ensure_demo_database(env["DATABASE_URL"])
        # The seeded knowledge base: this checkout's README and docs, by section.
        corpus = [p for p in [Path("README.md"), *sorted(Path("docs").glob("*.md"))] if p.is_file()]
        admin_key, requeued = asyncio.run(_bootstrap(corpus, [kb.sections(p) for p in corpus],
                                                     self.settings.model_copy(update={
            "database_url": env["DATABASE_URL"], "sqs_queue_url": env["SQS_QUEUE_URL"],
            "redis_url": env["REDIS_URL"],
            "aws_endpoint_url_sqs": env.get("AWS_ENDPOINT_URL_SQS", s.aws_endpoint_url_sqs),
            "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID", s.aws_access_key_id),
            "aws_secret_access_key": SecretStr(env["AWS_SECRET_ACCESS_KEY"])
            if "AWS_SECRET_ACCESS_KEY" in env else s.aws_secret_access_key,
        })))
        if requeued:
            self.echo(f"sent {requeued} unfinished task(s) to the queue again")

        self.env = env
        # Published before the API answers: a command run the moment /healthz says 200 (a
        # script waiting for the stack) must find the services. Again below with every pid.
        self._publish()
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        api = ManagedProcess(name="api", argv=[sys.executable, "-m", "app.cli", "api"],
                             env=child_env, log_path=logs / "api.log", echo=self.echo)
        api.start()
        self.apps.append(_Role(api))
        self._wait_api(api)
        for n in range(1, self.workers + 1):
            worker = ManagedProcess(name=f"worker-{n}",
                                    argv=[sys.executable, "-m", "app.cli", "worker"],
                                    env=child_env, log_path=logs / f"worker-{n}.log",
                                    echo=self.echo)
            worker.start()
            self.apps.append(_Role(worker))
        self._wait_workers(env["REDIS_URL"])
        self._publish()
        return admin_key

    def _launch_service(self, proc: ManagedProcess) -> ManagedProcess:
        proc.start()
        self.services.append(proc)
        return proc

    def _wait_api(self, api: ManagedProcess, timeout: float = 60.0) -> None:
        def _probe() -> None:
            httpx.get(f"{self.api_url}/healthz", timeout=5).raise_for_status()

        wait_ready(api, _probe, what="the API server", errors=(httpx.HTTPError,), timeout=timeout,
                   interval=0.3)

    def _wait_workers(self, redis_url: str, timeout: float = 90.0) -> None:
        """Until every worker has connected and sent its first heartbeat."""
        if not self.workers:
            return
        workers = [r.proc for r in self.apps if r.proc.name.startswith("worker-")]
        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for proc in workers:
                    if not proc.alive():
                        raise StackError(f"{proc.name} exited while starting: {proc.log_tail()}")
                if len(list(client.scan_iter("cadre:workers:*", count=1000))) >= self.workers:
                    return
                time.sleep(0.2)
        finally:
            client.close()
        raise StackError(f"the workers did not all report ready in {timeout:.0f}s")

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def _publish(self) -> None:
        """Write `stack.json` so other `cadre` commands here find these services."""
        data = {
            "pid": os.getpid(),
            "started": process_started(os.getpid()),
            "api_url": self.api_url,
            "env": self.env,
            "processes": {p.name: p.pid for p in self.services + [r.proc for r in self.apps]},
        }
        path = self.home / "stack.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        tmp.replace(path)

    def _announce(self, admin_key: IssuedKey | None) -> None:
        lines = [
            "",
            "Cadre is up.",
            *([f"  chat UI    {self.api_url}/   (sign in with an email and its API key)"]
              if self.settings.ui else []),
            f"  API        {self.api_url}/v1   (docs: {self.api_url}/docs)",
            f"  health     {self.api_url}/healthz",
            f"  postgres   {redact_url(self.env['DATABASE_URL'])}",
            f"  redis      {redact_url(self.env['REDIS_URL'])}",
            f"  queue      {self.env['SQS_QUEUE_URL']}",
            f"  model      {self._model_line()}",
            f"  embeddings {self._embedding_line()}",
            f"  mail       {self._mail_line()}",
            *([f"  traces     {self.trace_viewer_url}   (Arize Phoenix: every task's spans)"]
              if self.trace_viewer_url else []),
            f"  workers    {self.workers}",
            f"  logs       {self.home / 'logs'}",
        ]
        if admin_key:
            lines += [
                "",
                f"  First start: admin user {admin_key.email}, API key (shown once, keep it):",
                f"    {admin_key.secret}",
            ]
        lines += ["", "Press Ctrl-C to stop everything.", ""]
        for line in lines:
            self.echo(line)

    def _embedding_line(self) -> str:
        s = self.settings
        if s.embedding_model:
            return f"{s.embedding_model} at {s.embedding_base_url or s.openai_base_url or 'OpenAI'}"
        if url := self.env.get("CADRE_EMBEDDING_BASE_URL"):
            served = " (offline, embedded)" if not s.embedding_base_url else ""
            return f"{embeddings.MODEL_NAME} at {url}{served}"
        return "none (no semantic cache, memory or search by meaning; make run installs one)"

    def _mail_line(self) -> str:
        if self.env.get("CADRE_DEV_MAILBOX_DIR"):
            return (f"{self.env['SMTP_URL']} captures every email (none is delivered); "
                    f"read them at {self.api_url}/dev/mailbox")
        return redact_url(self.env["SMTP_URL"])

    def _model_line(self) -> str:
        s = self.settings
        if self.env.get("CADRE_OFFLINE_MODEL"):
            return (f"{llm.MODEL_ALIAS} at {self.env['OPENAI_BASE_URL']} -- a TINY OFFLINE model "
                    "for trying Cadre out; set OPENAI_API_KEY or OPENAI_BASE_URL for real work")
        if s.openai_api_key or s.openai_base_url:
            return f"{s.model or 'default'} at {s.openai_base_url or 'api.openai.com'}"
        return "none configured"

    # -- supervise and stop -----------------------------------------------------------------

    def _supervise(self) -> int:
        while True:
            time.sleep(0.5)
            for proc in self.services:
                if not proc.alive():
                    self.echo(f"cadre up: {proc.name} stopped unexpectedly "
                              f"(exit {proc.exit_code()}): {proc.log_tail()}")
                    return 1
            for role in self.apps:
                if role.proc.alive():
                    continue
                now = time.monotonic()
                role.restarts = [t for t in role.restarts if now - t < _RESTART_WINDOW_S]
                if len(role.restarts) >= _MAX_RESTARTS:
                    self.echo(f"cadre up: {role.proc.name} keeps crashing "
                              f"({_MAX_RESTARTS} restarts in {_RESTART_WINDOW_S:.0f}s); stopping")
                    return 1
                if role.proc.name.startswith("worker-"):
                    self._forget_worker(role.proc)
                self.echo(f"cadre up: {role.proc.name} exited ({role.proc.exit_code()}), restarting")
                role.restarts.append(now)
                role.proc.stop()
                role.proc.start()
                self._publish()

    def _forget_worker(self, proc: ManagedProcess) -> None:
        """A dead worker's leases hold until they lapse; with its liveness key deleted the
        next sweep (within a heartbeat) frees its tasks for the other workers."""
        pid = proc.pid
        if pid is None:
            return
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        try:
            client.delete(alive_key(worker_id(pid)))
        except redis.RedisError as exc:  # the leases still lapse; only slower
            self.echo(f"cadre up: could not clear {proc.name}'s liveness key: {exc}")
        finally:
            client.close()

    def _stop(self) -> None:
        for role in reversed(self.apps):
            role.proc.stop()
        for proc in reversed(self.services):
            proc.stop(timeout=30)
        (self.home / "stack.json").unlink(missing_ok=True)
        if self.services or self.apps:
            self.echo("cadre up: stopped")


async def _bootstrap(corpus: list[Path], sections: list[list[tuple[str, str]]],
                     settings: Settings) -> tuple[IssuedKey | None, int]:
    """First admin on an empty database; the seeded knowledge base; unfinished tasks back on
    the (fresh) queue."""
    db = await connect_db(settings)
    try:
        admin = await bootstrap_admin(db)
        await kb.seed(db, corpus, sections)
        queue = await TaskQueue.connect(settings)
        async with aioredis.Redis.from_url(str(settings.redis_url)) as redis:
            service = TaskService(db=db, queue=queue, events=EventLog(redis))
            return admin, await service.requeue_orphans()
    finally:
        await db.close()
