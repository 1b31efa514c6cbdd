"""`cadre up` end to end, as a person runs it: start, use, supervise, stop, restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
import redis

from app import liveness
from app.stack.ports import free_port
from graph.testing import FakeOpenAIServer
from tests.cli import CADRE, run_cadre
from tests.stack import UpProcess
from tests.stack import stack_file as _stack_file
from tests.test_csv_email_flow import CSV, csv_flow_model

pytestmark = pytest.mark.slow


def _family(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _running(process: psutil.Process) -> bool:
    """Running and not a zombie. A process can end between the two reads: then it is gone."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _all_gone(processes: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        alive = [p for p in processes if _running(p)]
        if not alive or asyncio.get_running_loop().time() > deadline:
            return alive
        await asyncio.sleep(0.2)


# The tiny offline model answers in tens of seconds per call on two busy cores.
@pytest.mark.timeout(900)
async def test_up_doctor_keys_supervise_stop_restart(
    start_up: object, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    up = await start_up()  # type: ignore[operator]
    assert "Cadre is up." in up.text
    assert "First start: admin user admin@localhost" in up.text
    assert "received" not in up.text
    stack = _stack_file(tmp_path)
    processes = stack["processes"]
    assert set(processes) == {"postgres", "redis", "sqs", "llm", "embeddings", "mail", "api",
                              "worker-1", "worker-2"}  # type: ignore[arg-type]
    assert stack["env"]["CADRE_EMBEDDING_BASE_URL"].startswith(  # type: ignore[index]
        "http://127.0.0.1:")
    assert "TINY OFFLINE model" in up.text
    assert "multilingual-e5-small-q4 at http://127.0.0.1:" in up.text
    assert stack["env"]["CADRE_OFFLINE_MODEL"] == "true"  # type: ignore[index]
    assert "cadre_agent_ro" in stack["env"]["AGENT_SQL_URL"]  # type: ignore[index]
    assert "captures every email (none is delivered)" in up.text

    # Other commands in the same directory find the running stack without any URL set.
    doctor = await run_cadre("doctor", env=clean_env, cwd=tmp_path)
    assert doctor.code == 0, doctor.stdout + doctor.stderr
    assert "2 workers alive" in doctor.stdout
    assert "warn  model     the tiny offline model smollm2-135m-instruct" in doctor.stdout
    created = await run_cadre("keys", "create", "--email", "bob@example.com", env=clean_env,
                              cwd=tmp_path)
    assert created.code == 0, created.stderr

    # A task given to the running stack's offline model reaches a terminal state, steps stored.
    ran = await run_cadre("run", "What is 6 times 7?", "--max-iterations", "2", "--reject-all",
                          env=clean_env, cwd=tmp_path, timeout=300)
    assert ran.code in (0, 1), ran.stdout + ran.stderr
    assert "tiny offline model" in ran.stdout and "[ 2] plan" in ran.stdout, \
        ran.stdout + ran.stderr
    conn = await asyncpg.connect(stack["env"]["DATABASE_URL"])  # type: ignore[index]
    try:
        status, steps = await conn.fetchrow(
            "SELECT t.status, count(l.id) FROM tasks t JOIN agent_logs l ON l.task_id = t.id "
            "GROUP BY t.id")
    finally:
        await conn.close()
    assert status in ("SUCCEEDED", "FAILED") and steps >= 2, (status, steps, ran.stdout)

    # The same through the API, as with curl: submit, then follow the live stream to the end.
    admin_key = next(line.strip() for line in up.lines if line.strip().startswith("cadre_"))
    api = stack["api_url"]  # type: ignore[index]
    headers = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(base_url=str(api), headers=headers, timeout=300) as http:
        created = (await http.post("/v1/tasks", json={"input": "Say hello.",
                                                      "max_iterations": 2})).json()
        types = []
        async with http.stream("GET", created["links"]["stream"]) as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    types.append(line[7:])
                elif line.startswith("data: ") and types[-1] == "approval_required":
                    # The tiny model may reach for a side effect (email): a person says no.
                    held = json.loads(line[6:])
                    await http.post(f"/v1/tasks/{created['id']}/approvals/{held['approval_id']}",
                                    json={"decision": "reject"})
        task = (await http.get(f"/v1/tasks/{created['id']}")).json()
    assert types[0] == "status" and types[-1] == "status" and "plan" in types, (types, task)
    assert task["status"] in ("SUCCEEDED", "FAILED") and task["steps"], task
    assert any(("worker-" in line and created["id"] in line) or "RUNNING" in line
               for line in up.lines) or task["started_at"]

    # A crashed worker is restarted by the supervisor, which first deletes its liveness key
    # (the next sweep frees its tasks without waiting for their leases to lapse).
    old_worker = processes["worker-1"]  # type: ignore[index]
    alive = redis.Redis.from_url(stack["env"]["REDIS_URL"])  # type: ignore[index]
    key = liveness.alive_key(liveness.worker_id(old_worker))  # type: ignore[arg-type]
    assert alive.exists(key)
    os.kill(old_worker, signal.SIGKILL)
    await up.wait_for_line("worker-1 exited", timeout=30)
    assert not alive.exists(key), up.text
    alive.close()
    for _ in range(100):
        new_worker = _stack_file(tmp_path)["processes"]["worker-1"]  # type: ignore[index]
        if new_worker != old_worker and psutil.pid_exists(new_worker):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("worker-1 was not restarted")

    # SIGTERM stops everything, leaving no process behind.
    family = _family(up.proc.pid)
    assert len(family) >= 6, family
    up.proc.send_signal(signal.SIGTERM)
    assert await up.finish() == 0, up.text
    assert await _all_gone(family) == []
    assert not (tmp_path / ".cadre" / "stack.json").exists()
    assert "cadre up: stopped" in up.text

    # Restart: the data written before is still there, and no second admin is minted.
    again = await start_up()  # type: ignore[operator]
    assert "First start" not in again.text
    url = _stack_file(tmp_path)["env"]["DATABASE_URL"]  # type: ignore[index]
    conn = await asyncpg.connect(url)
    try:
        emails = {r["email"] for r in await conn.fetch("SELECT email FROM users")}
    finally:
        await conn.close()
    assert emails == {"admin@localhost", "bob@example.com"}

    # Even `cadre up` killed outright takes its children with it.
    family = _family(again.proc.pid)
    again.proc.kill()
    await again.finish()
    assert await _all_gone(family) == []


async def test_commands_work_once_healthy_and_a_second_up_is_refused(
    tmp_path: Path, stack_env: dict[str, str], clean_env: dict[str, str]
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CADRE, "up", "--workers", "1", env=stack_env, cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    up = UpProcess(proc)
    try:
        await _second_up_refused(up, tmp_path, stack_env, clean_env)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _second_up_refused(up: UpProcess, tmp_path: Path, stack_env: dict[str, str],
                             clean_env: dict[str, str]) -> None:
    # A script waiting for the stack runs its next command the moment /healthz says 200
    # (before `cadre up` has announced itself): the command finds the services.
    health = f"http://127.0.0.1:{stack_env['CADRE_API_PORT']}/healthz"
    async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(300):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(health)).status_code == 200:
                    break
            assert up.proc.returncode is None, up.text
            await asyncio.sleep(0.05)
    created = await run_cadre("keys", "create", "--email", "early@example.com", env=clean_env,
                              cwd=tmp_path)
    assert created.code == 0, created.stdout + created.stderr
    await up.wait_for_line("Press Ctrl-C to stop everything.")
    env = {**stack_env, "CADRE_API_PORT": str(free_port()), "CADRE_PG_PORT": str(free_port()),
           "CADRE_REDIS_PORT": str(free_port()), "CADRE_SQS_PORT": str(free_port()),
           "CADRE_LLM_PORT": str(free_port()), "CADRE_SMTP_PORT": str(free_port())}
    second = await run_cadre("up", env=env, cwd=tmp_path)
    assert second.code == 2
    assert "already running" in second.stderr and str(up.proc.pid) in second.stderr
    up.proc.send_signal(signal.SIGINT)
    assert await up.finish() == 0


def test_python_is_311() -> None:
    assert sys.version_info[:2] == (3, 11)


async def _spans_in_the_viewer(viewer: str, task: dict[str, object]) -> None:
    """The task's spans reached the trace viewer `cadre up --traces` started, as one trace."""
    link = str(task["links"]["trace"])  # type: ignore[index]
    assert link.startswith(f"{viewer}/redirects/traces/")
    trace_id = link.rsplit("/", 1)[1]
    async with httpx.AsyncClient(base_url=viewer, timeout=10) as http:
        assert (await http.get(link)).status_code == 200
        # Every process (the API and each worker) exports its spans in its own batches, each
        # on its own schedule: wait for the spans of all of them.
        async with asyncio.timeout(60):
            while True:
                found = (await http.get("/v1/projects/default/spans", params={
                    "trace_id": trace_id, "limit": 1000})).json()["data"]
                names = [s["name"] for s in found]
                if names.count("invoke_agent cadre") == 2 and {
                        "approval_wait send_email", "POST /v1/tasks"} <= set(names):
                    break
                await asyncio.sleep(0.5)
    kinds = {s["name"]: s["span_kind"] for s in found}
    assert kinds["invoke_agent cadre"] == "AGENT", "the viewer reads the GenAI conventions"
    assert kinds["chat scripted"] == "LLM"
    assert {"execute_tool python", "execute_tool send_email", "POST /v1/tasks"} <= set(kinds)
    chat = next(s for s in found if s["name"] == "chat scripted")
    assert chat["attributes"]["gen_ai.request.model"] == "scripted"
    assert chat["attributes"]["gen_ai.usage.input_tokens"] > 0


async def test_the_csv_to_email_task_on_the_running_stack(start_up: object, tmp_path: Path,
                                                          stack_env: dict[str, str]) -> None:
    """`cadre up` with a scripted model: upload a CSV, approve the email, read it in the dev
    mailbox -- what a person does with `make run`, minus the typing."""
    async with FakeOpenAIServer() as model:
        model.responder = csv_flow_model
        # With the trace viewer: the task's spans are read back from it at the end.
        up = await start_up("--traces", OPENAI_BASE_URL=model.base_url,  # type: ignore[operator]
                            CADRE_MODEL="scripted")
        assert "TINY OFFLINE" not in up.text and "/dev/mailbox" in up.text
        viewer = f"http://127.0.0.1:{stack_env['CADRE_TRACES_PORT']}"
        assert f"traces     {viewer}" in up.text
        admin_key = next(line.strip() for line in up.lines if line.strip().startswith("cadre_"))
        api = str(_stack_file(tmp_path)["api_url"])
        async with httpx.AsyncClient(base_url=api, timeout=60,
                                     headers={"Authorization": f"Bearer {admin_key}"}) as http:
            upload = await http.post("/v1/files", files={"file": ("sales.csv", CSV.encode())})
            assert upload.status_code == 201, upload.text
            created = (await http.post("/v1/tasks", json={
                "input": "Analyse this CSV and email the summary with a chart to boss@example.com",
                "files": [upload.json()["id"]]})).json()
            async with asyncio.timeout(120):
                while (task := (await http.get(f"/v1/tasks/{created['id']}")).json())[
                        "status"] != "PENDING_APPROVAL":
                    assert task["status"] in ("QUEUED", "RUNNING"), task
                    await asyncio.sleep(0.2)
                [approval] = task["approvals"]
                assert approval["tool"] == "send_email"
                await http.post(f"/v1/tasks/{created['id']}/approvals/{approval['id']}",
                                json={"decision": "approve"})
                while (task := (await http.get(f"/v1/tasks/{created['id']}")).json())[
                        "status"] not in ("SUCCEEDED", "FAILED"):
                    await asyncio.sleep(0.2)
            assert task["status"] == "SUCCEEDED", task["error"]
            artifacts = (await http.get(f"/v1/tasks/{created['id']}/artifacts")).json()["items"]
            assert [a["name"] for a in artifacts] == ["chart.png"]
            [mail] = (await http.get("/dev/mailbox.json")).json()["items"]
            page = (await http.get("/dev/mailbox")).text
        assert mail["subject"] == "Sales summary" and mail["task_id"] == created["id"]
        assert [a["filename"] for a in mail["attachments"]] == ["chart.png"]
        assert "Sales summary" in page and "chart.png" in page
        await _spans_in_the_viewer(viewer, task)
        up.proc.send_signal(signal.SIGTERM)
        assert await up.finish() == 0, up.text
