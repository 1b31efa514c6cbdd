"""`cadre run`: a task run from the terminal against real services and an HTTP model."""

from __future__ import annotations

import json

import asyncpg

from app.stack.mail import MailCapture
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
    assert lines[1].startswith("tools: ") and "python" in lines[1], "the workers' tools"
    assert any(line.startswith("[ 1] model     plan:") for line in lines)
    assert any(line.startswith("[ 2] plan") and "1. Compute" in line for line in lines)
    assert any(line.startswith("[ 5] check") and "goal met: True. computed" in line
               for line in lines)
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
    assert nodes == ["plan", "plan", "act", "verify", "verify"]


async def test_run_uses_the_configured_tools_and_policy(
        service_env: dict[str, str], database_url: str, mail_capture: MailCapture) -> None:
    # The same tools and policy as a worker: SMTP_URL gives `send_email`, a side effect the
    # policy holds for a person, asked on the terminal; rejected, nothing is sent.
    await _admin(database_url)
    mail = {"to": ["ops@example.com"], "subject": "Q3", "body": "numbers"}
    async with FakeOpenAIServer() as server:
        server.queue(
            FakeResponse(body=completion(tool_calls=[("submit_plan", '{"steps": ["Mail ops"]}')])),
            FakeResponse(body=completion(tool_calls=[("send_email", json.dumps(mail))])),
            FakeResponse(body=completion(tool_calls=[
                ("submit_plan", '{"steps": ["Say it was not sent"]}')])),
            FakeResponse(body=completion("I did not send it.")),
            FakeResponse(body=completion(tool_calls=[
                ("submit_verdict", '{"goal_met": true, "reason": "told"}')])),
        )
        env = {**service_env, "OPENAI_BASE_URL": server.base_url, "CADRE_MODEL": "fake",
               "SMTP_URL": mail_capture.url}
        result = await run_cadre("run", "Mail the Q3 numbers to ops@example.com.",
                                 "--reject-all", env=env)
    assert result.code == 0, result.stdout + result.stderr
    assert "send_email" in result.stdout.splitlines()[1]
    assert "approval needed: send_email(" in result.stdout
    assert any("held      send_email for approval" in line for line in result.stdout.splitlines())
    assert any("not run   send_email: a person rejected this call: by flag" in line
               for line in result.stdout.splitlines())
    assert not list(mail_capture.directory.glob("*.eml")), "nothing was sent"
    conn = await asyncpg.connect(database_url)
    try:
        decision = await conn.fetchrow("SELECT tool, verdict FROM policy_decisions")
    finally:
        await conn.close()
    assert (decision["tool"], decision["verdict"]) == ("send_email", "approve")


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


async def test_run_as_a_team_prints_each_agent_s_steps(service_env: dict[str, str],
                                                        database_url: str) -> None:
    await _admin(database_url)
    plan = json.dumps({"steps": [{"task": "Write one line about tea", "agent": "writer"}]})
    async with FakeOpenAIServer() as server:
        server.queue(
            FakeResponse(body=completion(tool_calls=[("submit_team_plan", plan)])),
            FakeResponse(body=completion("Tea steeps; time slows.")),
            FakeResponse(body=completion("Tea steeps; time slows.")),
            FakeResponse(body=completion(tool_calls=[
                ("submit_verdict", '{"goal_met": true, "reason": "a line"}')])),
        )
        env = {**service_env, "OPENAI_BASE_URL": server.base_url, "CADRE_MODEL": "fake"}
        result = await run_cadre("run", "--mode", "team", "A line about tea.", env=env)
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("agents: researcher, analyst, writer") for line in lines)
    assert any("delegate  manager/writer#1: Write one line about tea" in line for line in lines)
    assert any("manager/writer#1 model     act:" in line for line in lines)
    assert any("returned  manager/writer#1: Tea steeps; time slows." in line for line in lines)
    assert "answer: Tea steeps; time slows." in lines
