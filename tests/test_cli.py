"""The `cadre` commands against real services: doctor, migrate, keys, and their error lines."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import pytest

from app.keys import hash_key
from app.stack.ports import free_port
from tests.cli import run_cadre


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
    assert "schema 0002" in migrated.stdout and "***" in migrated.stdout
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
