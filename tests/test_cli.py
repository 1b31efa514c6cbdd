"""The `cadre` commands against real services: doctor, migrate, keys, and their error lines."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest

from app import migrate
from app.keys import hash_key
from app.stack.ports import free_port
from tests.cli import run_cadre

HEAD = migrate.head_revision()  # read at import: the tests run on an event loop


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {stderr!r}"
    assert "Traceback" not in stderr
    assert lines[0].startswith("cadre: error:")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


async def test_doctor_reports_healthy_services(service_env: dict[str, str]) -> None:
    result = await run_cadre("doctor", env=service_env)
    assert result.code == 0, result.stdout + result.stderr
    for service in ("postgres", "redis", "sqs"):
        assert any(line.startswith("ok") and service in line for line in result.stdout.splitlines())


async def test_doctor_names_the_broken_service(service_env: dict[str, str]) -> None:
    env = {**service_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    result = await run_cadre("doctor", env=env)
    assert result.code == 1
    [line] = [ln for ln in result.stdout.splitlines() if "redis" in ln and ln.startswith("FAIL")]
    assert "cannot reach" in line
    assert "1 required service(s) not healthy" in result.stdout


async def test_doctor_without_any_configuration(clean_env: dict[str, str], tmp_path: Path) -> None:
    result = await run_cadre("doctor", env=clean_env, cwd=tmp_path)
    assert result.code == 1
    assert "DATABASE_URL is not set" in result.stdout


async def test_migrate_then_keys_create(service_env: dict[str, str], empty_database_url: str) -> None:
    env = {**service_env, "DATABASE_URL": empty_database_url}
    migrated = await run_cadre("migrate", env=env)
    assert migrated.code == 0, migrated.stderr
    assert f"schema {HEAD}" in migrated.stdout and "***" in migrated.stdout
    again = await run_cadre("migrate", env=env)
    assert again.code == 0, "migrate is idempotent"

    created = await run_cadre("keys", "create", "--email", "ops@example.com", "--role", "operator",
                              env=env)
    assert created.code == 0, created.stderr
    secret = created.stdout.strip()
    conn = await asyncpg.connect(empty_database_url)
    try:
        role = await conn.fetchval(
            "SELECT u.role FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1",
            hash_key(secret))
    finally:
        await conn.close()
    assert role == "operator"


async def test_keys_create_rejects_unknown_role(service_env: dict[str, str]) -> None:
    result = await run_cadre("keys", "create", "--email", "x@example.com", "--role", "root",
                             env=service_env)
    assert result.code == 2
    assert "Traceback" not in result.stderr and "root" in result.stderr


@pytest.mark.parametrize("command", [["migrate"], ["keys", "create", "--email", "a@b.c"]])
async def test_unreachable_database_url_is_one_line(clean_env: dict[str, str], tmp_path: Path,
                                                   command: list[str]) -> None:
    env = {**clean_env, "DATABASE_URL": f"postgresql://cadre:hunter2@127.0.0.1:{free_port()}/cadre"}
    result = await run_cadre(*command, env=env, cwd=tmp_path)
    assert result.code == 2
    assert_one_line_error(result.stderr, "DATABASE_URL")
    assert "hunter2" not in result.stderr, "the password is never printed"


async def test_malformed_database_url_is_one_line(clean_env: dict[str, str], tmp_path: Path) -> None:
    env = {**clean_env, "DATABASE_URL": "mysql://root@localhost/cadre"}
    result = await run_cadre("up", env=env, cwd=tmp_path)
    assert result.code == 2
    assert_one_line_error(result.stderr, "DATABASE_URL", "postgresql://")


async def test_up_with_a_taken_port_is_one_line(clean_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**clean_env, "CADRE_PG_PORT": str(port), "CADRE_API_PORT": str(free_port())}
        result = await run_cadre("up", env=env, cwd=tmp_path)
    assert result.code == 2
    assert_one_line_error(result.stderr, f"port {port}", "CADRE_PG_PORT")
    assert not (tmp_path / ".cadre" / "pg").exists(), "nothing was started"


async def test_up_with_unreachable_database_url(clean_env: dict[str, str], tmp_path: Path) -> None:
    env = {**clean_env, "DATABASE_URL": f"postgresql://u:p@127.0.0.1:{free_port()}/x",
           "CADRE_API_PORT": str(free_port())}
    result = await run_cadre("up", env=env, cwd=tmp_path)
    assert result.code == 2
    assert_one_line_error(result.stderr, "DATABASE_URL", "unset it to use the embedded server")


async def test_dlq_list_and_redrive(service_env: dict[str, str], settings: object) -> None:
    import asyncio
    import json as _json

    from app.queue import client_from_settings

    client = await asyncio.to_thread(client_from_settings, settings)  # type: ignore[arg-type]
    dlq_url = service_env["SQS_QUEUE_URL"] + "-dlq"
    await asyncio.to_thread(client.send_message, QueueUrl=dlq_url,
                            MessageBody=_json.dumps({"task_id": "t-dead"}))
    listed = await run_cadre("dlq", "list", env=service_env)
    assert listed.code == 0 and '"task_id": "t-dead"' in listed.stdout
    assert "1 message(s) shown" in listed.stdout
    redriven = await run_cadre("dlq", "redrive", env=service_env)
    assert redriven.code == 0
    assert "moved 1 message(s) back to the task queue" in redriven.stdout
    back = await asyncio.to_thread(client.receive_message, QueueUrl=service_env["SQS_QUEUE_URL"],
                                   WaitTimeSeconds=1)
    assert _json.loads(back["Messages"][0]["Body"]) == {"task_id": "t-dead"}
