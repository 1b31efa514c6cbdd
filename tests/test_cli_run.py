"""`cadre run`: a task run from the terminal against real services and an HTTP model."""

from __future__ import annotations

import asyncpg

from graph.testing import FakeOpenAIServer, FakeResponse, completion
from tests.cli import run_cadre


async def _admin(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO users (email, role) VALUES ('admin@localhost', 'admin')")
    finally:
        await conn.close()


async def test_run_prints_steps_and_stores_the_task(service_env: dict[str, str],
                                                    database_url: str) -> None:
    await _admin(database_url)
    async with FakeOpenAIServer() as server:
        server.queue(
            FakeResponse(body=completion(tool_calls=[("submit_plan", '{"steps": ["Compute"]}')])),
            FakeResponse(body=completion("6 x 7 = 42")),
            FakeResponse(body=completion(tool_calls=[
                ("submit_verdict", '{"goal_met": true, "reason": "computed"}')])),
        )
        env = {**service_env, "OPENAI_BASE_URL": server.base_url, "CADRE_MODEL": "fake"}
        result = await run_cadre("run", "What is 6 times 7?", env=env)
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"model: fake at {server.base_url}"
    assert any(line.startswith("[ 1] plan") and "Compute" in line for line in lines)
    assert "answer: 6 x 7 = 42" in lines
    assert "usage: 36 tokens in, 21 out, 3 model calls" in lines

    conn = await asyncpg.connect(database_url)
    try:
        task = await conn.fetchrow("SELECT * FROM tasks")
        nodes = [r["node"] for r in await conn.fetch(
            "SELECT node FROM agent_logs WHERE task_id = $1 ORDER BY id", task["id"])]
    finally:
        await conn.close()
    assert (task["status"], task["final_output"]) == ("SUCCEEDED", "6 x 7 = 42")
    assert nodes == ["plan", "act", "verify"]


async def test_run_reports_failure_with_its_reason(service_env: dict[str, str],
                                                   database_url: str) -> None:
    await _admin(database_url)
    async with FakeOpenAIServer() as server:
        server.default = FakeResponse(status=503)
        env = {**service_env, "OPENAI_BASE_URL": server.base_url, "CADRE_MODEL_MAX_RETRIES": "1"}
        result = await run_cadre("run", "Anything", env=env)
    assert result.code == 1
    assert "failed (model_unavailable): the model endpoint answered 503 after retries" in result.stdout
    conn = await asyncpg.connect(database_url)
    try:
        task = await conn.fetchrow("SELECT status, error FROM tasks")
    finally:
        await conn.close()
    assert task["status"] == "FAILED" and '"model_unavailable"' in task["error"]


async def test_run_without_a_model_or_user_is_one_line(service_env: dict[str, str]) -> None:
    env = {k: v for k, v in service_env.items() if not k.startswith("OPENAI")}
    no_model = await run_cadre("run", "x", env=env)
    assert no_model.code == 2 and "no model is configured" in no_model.stderr
    assert "Traceback" not in no_model.stderr
    no_user = await run_cadre("run", "x", "--email", "ghost@example.com",
                              env={**env, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert no_user.code == 2 and "no user 'ghost@example.com'" in no_user.stderr
