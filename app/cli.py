"""The `cadre` command line. Every failure a person can fix ends in one line naming the fix."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from app.errors import CadreError

cli = typer.Typer(
    help="Cadre: durable, observable, guarded agent runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
dlq_cli = typer.Typer(help="Inspect and redrive the dead-letter queue.", no_args_is_help=True)
cli.add_typer(dlq_cli, name="dlq")
sandbox_cli = typer.Typer(help="The code sandbox.", no_args_is_help=True)
cli.add_typer(sandbox_cli, name="sandbox")
policy_cli = typer.Typer(help="The tool policy (guardrails).", no_args_is_help=True)
cli.add_typer(policy_cli, name="policy")
agents_cli = typer.Typer(help="The worker agents' profiles.", no_args_is_help=True)
cli.add_typer(agents_cli, name="agents")
schedules_cli = typer.Typer(help="A user's scheduled tasks (as `/v1/schedules`).",
                            no_args_is_help=True)
cli.add_typer(schedules_cli, name="schedules")


class _Role(StrEnum):
    viewer = "viewer"
    analyst = "analyst"
    operator = "operator"
    admin = "admin"


def _echo(line: str) -> None:
    print(line, flush=True)


@cli.command()
def up(
    workers: Annotated[int, typer.Option(min=0, max=64, help="Worker processes to run.")] = 2,
    traces: Annotated[bool, typer.Option(
        help="Also start a local trace viewer (Arize Phoenix) and send it every task's "
             "spans.")] = False,
) -> None:
    """Start the whole local stack (PostgreSQL, Redis, SQS endpoint, API, workers) and
    supervise it until Ctrl-C or SIGTERM. Services with a configured URL are used, not started."""
    from app.settings import load_settings
    from app.stack import LocalStack

    raise typer.Exit(LocalStack(settings=load_settings(), workers=workers, echo=_echo,
                                traces=traces).run())


@cli.command()
def api() -> None:
    """Serve the HTTP API and the chat UI (production: behind a load balancer, scale
    horizontally)."""
    import uvicorn

    from app.api import create_app
    from app.logs import configure_logging
    from app.settings import load_settings
    from app.telemetry import configure_tracing, shutdown_tracing

    settings = load_settings()
    configure_logging(settings.log_level, redact=settings.redact_logs)
    provider = configure_tracing("cadre-api")
    app = create_app(settings, ui=settings.ui)
    # What is loaded by now (the libraries: about a million objects with the UI) lives as
    # long as the process: keep it out of the collector's full passes, which otherwise took
    # half the CPU of a process serving thousands of streams (bench/streams.py).
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            # uvicorn's own handlers would bypass the root ones, and with them the redaction
            # of access lines (`?access_token=...`): its loggers propagate to ours instead.
            log_config=None,
            proxy_headers=True,
        )
    finally:
        shutdown_tracing(provider)


@cli.command()
def worker() -> None:
    """Consume the task queue (production: scale the number of these on queue depth)."""
    from app.logs import configure_logging
    from app.settings import load_settings
    from app.worker import serve

    settings = load_settings()
    configure_logging(settings.log_level, redact=settings.redact_logs)
    serve(settings)


@cli.command()
def migrate() -> None:
    """Apply database migrations (Cadre's tables and LangGraph's checkpoints); idempotent."""
    from app import migrate as migrations
    from app.deps import require_database_url
    from app.settings import load_settings, redact_url

    url = require_database_url(load_settings())
    migrations.probe(url)
    migrations.upgrade(url)
    _echo(f"database {redact_url(url)} is at schema {migrations.current_revision(url)}")


@cli.command()
def doctor() -> None:
    """Check each configured service and say what is wrong. Exit 1 if a required one fails."""
    from app.health import all_checks
    from app.settings import load_settings

    checks = asyncio.run(all_checks(load_settings()))
    for check in checks:
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        _echo(f"{mark}  {check.name:<9} {check.detail}")
    failed = [c for c in checks if c.required and not c.ok]
    if failed:
        _echo(f"{len(failed)} required service(s) not healthy")
        raise typer.Exit(1)


@cli.command()
def run(
    text: Annotated[str, typer.Argument(help="The task, in plain words.")],
    email: Annotated[str, typer.Option(help="Whose task it is.")] = "admin@localhost",
    conversation: Annotated[
        str | None, typer.Option(help="Continue this conversation (its id).")] = None,
    max_iterations: Annotated[int | None, typer.Option(min=1, help="Act iterations cap.")] = None,
    token_budget: Annotated[int | None, typer.Option(min=1, help="Model token budget.")] = None,
    approve_all: Annotated[bool, typer.Option(help="Approve every held call.")] = False,
    reject_all: Annotated[bool, typer.Option(help="Reject every held call.")] = False,
    mode: Annotated[str, typer.Option(
        help="single: one agent; team: a manager delegates to the worker agent profiles "
             "(CADRE_AGENTS_FILE); auto: the planner chooses.")] = "single",
) -> None:
    """Run one task in this process, printing each step; held calls ask for approval here.
    Exit 0 when the task succeeds, 1 when it fails."""
    from app.runner import run_local
    from app.settings import load_settings
    from graph import ApprovalDecision, ApprovalRequest, TaskStatus

    if approve_all and reject_all:
        raise typer.BadParameter("--approve-all and --reject-all exclude each other")
    if mode not in ("single", "team", "auto"):
        raise typer.BadParameter(f"--mode is single, team or auto, not {mode!r}")

    async def decide(approval: ApprovalRequest) -> ApprovalDecision:
        _echo(f"approval needed: {approval.tool}({approval.arguments}) -- {approval.reason}")
        if approve_all or reject_all:
            return ApprovalDecision(decision="approve" if approve_all else "reject",
                                    comment="by flag")
        if not sys.stdin.isatty():
            return ApprovalDecision(decision="reject",
                                    comment="no one to approve (use --approve-all or a terminal)")
        answer = await asyncio.to_thread(input, "approve? [y/N] ")
        return ApprovalDecision(
            decision="approve" if answer.strip().lower() in ("y", "yes") else "reject",
            comment="from the terminal")

    from app.telemetry import configure_tracing, shutdown_tracing

    provider = configure_tracing("cadre-run")
    try:
        done = asyncio.run(run_local(load_settings(), text, email=email,
                                     conversation_id=conversation, max_iterations=max_iterations,
                                     token_budget=token_budget, decide=decide, echo=_echo,
                                     mode=mode))
    finally:
        shutdown_tracing(provider)
    result = done.result
    succeeded = result.status is TaskStatus.SUCCEEDED
    if succeeded:
        _echo(f"answer: {result.final_answer}")
    else:
        assert result.stop is not None
        _echo(f"failed ({result.stop['kind']}): {result.stop['message']}")
        if result.partial:
            _echo(f"partial result: {result.partial}")
    _echo(f"usage: {result.usage['tokens_in']} tokens in, {result.usage['tokens_out']} out, "
          f"{result.usage['model_calls']} model calls")
    raise typer.Exit(0 if succeeded else 1)


@cli.command()
def probe() -> None:
    """Exit 0 if a `cadre worker` on this host is alive: its heartbeat keeps its liveness key
    in Redis (a Kubernetes liveness probe for worker pods). Exit 1 if none is, 2 if Redis
    cannot be reached."""
    import socket

    from redis.exceptions import RedisError

    from app.deps import redis_client, require_redis_url
    from app.liveness import PREFIX
    from app.settings import load_settings

    settings = load_settings()

    async def _alive() -> bool:
        client = redis_client(require_redis_url(settings), 2)
        try:
            async for _ in client.scan_iter(f"{PREFIX}{socket.gethostname()}:*", count=1000):
                return True
            return False
        finally:
            await client.aclose()

    try:
        alive = asyncio.run(_alive())
    except (OSError, RedisError) as exc:
        print(f"cadre: error: Redis unreachable: {exc}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    _echo("a worker is alive on this host" if alive else "no live worker on this host")
    raise typer.Exit(0 if alive else 1)


@cli.command()
def replay(task_id: str) -> None:
    """Replay an ended task through the current graph, tools and policy (no model or tool
    call); print where the current code decides otherwise. Exit 0 when it reproduces, 1 when
    it diverges."""
    import uuid as _uuid

    from app.deps import connect_db
    from app.problems import Problem
    from app.replays import replay_task, replay_tools
    from app.settings import load_settings
    from app.store import TASK_COLUMNS, task_row

    settings = load_settings()

    async def _replay() -> Any:
        toolset, policy = await asyncio.to_thread(replay_tools, settings)
        db = await connect_db(settings)
        try:
            try:
                key = _uuid.UUID(task_id)
            except ValueError:
                raise Problem("not-found", 404, f"task {task_id} not found") from None
            row = await db.fetchrow(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1", key)
            if row is None:
                raise Problem("not-found", 404, f"task {task_id} not found")
            return await replay_task(db, task_row(row), toolset=toolset, policy=policy)
        finally:
            await db.close()

    try:
        report = asyncio.run(_replay())
    except Problem as problem:
        print(f"cadre: error: {problem.detail}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    _echo(report.describe())
    raise typer.Exit(0 if report.divergence is None else 1)


@keys_cli.command("create")
def keys_create(
    email: Annotated[str, typer.Option(help="The key owner's email; the user is created if new.")],
    role: Annotated[_Role, typer.Option(help="The user's role.")] = _Role.analyst,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
) -> None:
    """Create an API key (printed once; only its hash is stored)."""
    from app.deps import connect_db
    from app.keys import create_key
    from app.settings import load_settings

    async def _create() -> str:
        db = await connect_db(load_settings())
        try:
            issued = await create_key(db, email=email, role=role.value, name=name)
        finally:
            await db.close()
        return issued.secret

    _echo(asyncio.run(_create()))


_Email = Annotated[str, typer.Option(help="The schedule owner's email.")]


def _on_schedules(email: str, work: Any) -> Any:
    """Run `work(store, principal)` as the user with `email`; a problem is one error line."""
    from app.auth import Principal
    from app.deps import connect_db
    from app.problems import Problem
    from app.settings import load_settings
    from app.store.schedules import ScheduleStore

    async def _run() -> Any:
        db = await connect_db(load_settings())
        try:
            user = await db.fetchrow("SELECT id, email, role FROM users WHERE email = $1", email)
            if user is None:
                raise Problem("not-found", 404, f"no user with email {email}")
            who = Principal(user_id=str(user["id"]), email=user["email"], role=user["role"],
                            key_id="cli")
            return await work(ScheduleStore(db), who)
        finally:
            await db.close()

    try:
        return asyncio.run(_run())
    except Problem as problem:
        print(f"cadre: error: {problem.detail}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None


def _schedule_line(s: dict[str, Any]) -> str:
    state = "paused" if s["paused"] else f"next {s['next_run_at'].isoformat()}"
    last = f", last {s['last_run']['outcome']}" if s["last_run"] else ""
    return f"{s['id']}  {s['cron']} ({s['timezone']})  {state}{last}  {s['input'][:60]}"


@schedules_cli.command("list")
def schedules_list(email: _Email) -> None:
    """The user's schedules, newest first."""
    for schedule in _on_schedules(email, lambda store, who: store.list(who)):
        _echo(_schedule_line(schedule))


@schedules_cli.command("create")
def schedules_create(
    email: _Email,
    cron: Annotated[str, typer.Option(help="Five cron fields, e.g. '0 9 * * MON'.")],
    input: Annotated[str, typer.Option("--input", help="The task, in plain words.")],
    timezone: Annotated[str, typer.Option(help="An IANA time zone.")] = "UTC",
    missed: Annotated[str, typer.Option(help="skip or catch_up missed occurrences.")] = "skip",
    strategy: Annotated[str, typer.Option(
        help="enqueue, reject or interrupt when the previous run is still going.")] = "enqueue",
) -> None:
    """Schedule a task for the user; prints the new schedule."""
    if missed not in ("skip", "catch_up") or strategy not in ("enqueue", "reject", "interrupt"):
        print("cadre: error: --missed is skip or catch_up; --strategy is enqueue, reject or "
              "interrupt", file=sys.stderr, flush=True)
        raise typer.Exit(2)
    made = _on_schedules(email, lambda store, who: store.create(
        who, cron=cron, timezone=timezone, text=input, missed=missed, strategy=strategy))
    _echo(_schedule_line(made))


@schedules_cli.command("pause")
def schedules_pause(schedule_id: str, email: _Email) -> None:
    """Stop firing a schedule until resumed."""
    _echo(_schedule_line(_on_schedules(
        email, lambda store, who: store.set_paused(who, schedule_id, True))))


@schedules_cli.command("resume")
def schedules_resume(schedule_id: str, email: _Email) -> None:
    """Fire a paused schedule again, from its next occurrence."""
    _echo(_schedule_line(_on_schedules(
        email, lambda store, who: store.set_paused(who, schedule_id, False))))


@schedules_cli.command("delete")
def schedules_delete(schedule_id: str, email: _Email) -> None:
    """Delete a schedule (the tasks it made are kept)."""
    _on_schedules(email, lambda store, who: store.delete(who, schedule_id))
    _echo(f"deleted {schedule_id}")


@sandbox_cli.command("exec")
def sandbox_exec(
    wall_seconds: Annotated[float, typer.Option(min=1, help="Wall-clock limit.")] = 60.0,
) -> None:
    """Run Python code from stdin in a fresh sandbox; print the result as JSON. Exit 1 if the
    code raised or the interpreter died."""
    import json
    import tempfile
    from pathlib import Path

    from tools.sandbox.bwrap import BwrapSandbox, Limits, SandboxUnavailable

    code = sys.stdin.read()

    async def _run() -> dict[str, object]:
        with tempfile.TemporaryDirectory(prefix="cadre-sandbox-") as tmp:
            sandbox = BwrapSandbox(root=Path(tmp), limits=Limits(wall_seconds=wall_seconds))
            try:
                return (await sandbox.run("cli", code)).to_json()
            finally:
                await sandbox.aclose()

    try:
        result = asyncio.run(_run())
    except SandboxUnavailable as exc:
        raise CadreError(str(exc)) from None
    print(json.dumps(result, indent=2))
    raise typer.Exit(1 if result.get("error") else 0)


@agents_cli.command("check")
def agents_check(
    file: Annotated[str | None, typer.Argument(
        help="The profiles file; default: CADRE_AGENTS_FILE, else the bundled one.")] = None,
) -> None:
    """Validate an agent profiles file against the tools this configuration knows and show
    each profile. Exit 2 naming the line if invalid."""
    from pathlib import Path

    from app.settings import load_settings
    from app.tooling import worker_agents, worker_toolset

    settings = load_settings()
    if file is not None:
        settings = settings.model_copy(update={"agents_file": Path(file)})
    agents = worker_agents(settings, asyncio.run(worker_toolset(settings)))
    _echo(f"{agents.source}: valid -- {len(agents)} agent(s)")
    for profile in agents:
        tools = ", ".join(profile.tools) or "no tools"
        _echo(f"  {profile.name:<12} {tools}; model {profile.model or 'the default'}; "
              f"at most {profile.max_iterations} iterations")
        _echo(f"  {'':<12} {profile.description}")


@policy_cli.command("check")
def policy_check(
    file: Annotated[str | None, typer.Argument(
        help="The policy file; default: CADRE_POLICY_FILE, else the bundled default.")] = None,
) -> None:
    """Validate a policy file against the tools this configuration offers (built-in ones,
    plug-ins, MCP servers) and show what each role gets. Exit 2 naming the line if invalid."""
    from pathlib import Path

    from app.settings import load_settings
    from app.tooling import worker_policy, worker_toolset
    from guardrails.policy import RISKS

    settings = load_settings()
    if file is not None:
        settings = settings.model_copy(update={"policy_file": Path(file)})
    policy = worker_policy(settings, asyncio.run(worker_toolset(settings)))
    _echo(f"{policy.source}: valid -- {len(policy.roles)} roles, {len(policy.rules)} rule(s)")
    for role in policy.roles.values():
        by_risk = ", ".join(f"{risk} {role.risk.get(risk, policy.risk[risk])}" for risk in RISKS)
        tools = ", ".join(f"{tool} {verdict}" for tool, verdict in role.tools.items())
        _echo(f"  {role.name:<9} {by_risk}" + (f"; {tools}" if tools else ""))
    for rule in policy.rules:
        roles = ", ".join(sorted(rule.roles))
        _echo(f"  rule {rule.name}: {'/'.join(rule.tools)} -> {rule.verdict} for {roles}"
              + (f" when {dict(rule.when)}" if rule.when else "")
              + (f" unless {dict(rule.unless)}" if rule.unless else ""))


@dlq_cli.command("list")
def dlq_list(limit: Annotated[int, typer.Option(min=1, max=10)] = 10) -> None:
    """Show messages in the dead-letter queue (they stay there)."""
    from app import dlq
    from app.settings import load_settings

    messages = dlq.peek(load_settings(), limit)
    for m in messages:
        _echo(f"{m['message_id']}  receives={m['receives']}  {m['body'][:200]}")
    _echo(f"{len(messages)} message(s) shown")


@dlq_cli.command("redrive")
def dlq_redrive() -> None:
    """Move every dead message back to the task queue; tasks that failed for lack of
    deliveries are queued again."""
    from app import dlq
    from app.settings import load_settings

    moved, reopened = dlq.redrive_and_reopen(load_settings())
    _echo(f"moved {moved} message(s) back to the task queue; {reopened} task(s) queued again")


def main() -> None:
    """Console entry point: run the CLI, turning Cadre's errors into one line and an exit code."""
    try:
        cli(prog_name="cadre")
    except CadreError as exc:
        print(f"cadre: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("CADRE_DEBUG"):
            raise
        print(f"cadre: internal error: {type(exc).__name__}: {exc} "
              "(set CADRE_DEBUG=1 to see the traceback)", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
