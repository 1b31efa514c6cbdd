"""Losing a host: three worker "hosts", each a network namespace joined to this machine by a
veth pair, run 30 tasks with a side effect each against the services on this machine. One
host's link goes down mid-run — its worker process alive and unaware. Its tasks are finished
by the other hosts once its liveness key and leases lapse, every effect happens once at the
receiving end, every task's event stream is complete; and when the link comes back, the cut
host's worker is refused every write (its leases were taken over) and says so.

Root only (network namespaces); skipped elsewhere with the reason."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from app.api import create_app
from app.deps import open_deps
from app.events import EventLog, StatusData
from app.keys import create_key
from app.settings import Settings
from graph.testing import FakeOpenAIServer, serving
from tests.test_crash_resume import Receiver, _agent_policy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TASKS = 30
HOSTS = 3


async def _ip(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.decode().strip()}")


class Host:
    """A network namespace with a veth pair to this machine: 10.77.N.2 inside, 10.77.N.1 here."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.name = f"cadre-{os.getpid()}-{number}"
        self.link = f"cv{os.getpid() % 100000}x{number}"  # the host side (≤ 15 characters)
        self.gateway = f"10.77.{number}.1"

    async def create(self) -> None:
        await _ip("netns", "add", self.name)
        await _ip("link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns",
                  self.name)
        await _ip("addr", "add", f"{self.gateway}/24", "dev", self.link)
        await _ip("link", "set", self.link, "up")
        for command in (("addr", "add", f"10.77.{self.number}.2/24", "dev", "eth0"),
                        ("link", "set", "eth0", "up"), ("link", "set", "lo", "up")):
            await _ip("-n", self.name, *command)

    async def cut(self, up: bool = False) -> None:
        await _ip("link", "set", self.link, "up" if up else "down")

    async def delete(self) -> None:
        for args in (("link", "del", self.link), ("netns", "del", self.name)):
            try:
                await _ip(*args)
            except RuntimeError:
                pass


async def _forward(listen: str, port: int) -> asyncio.Server:
    """Accept on `listen:port` and relay each connection to the service on 127.0.0.1:port."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    return await asyncio.start_server(relay, listen, port)


def _netns_ready() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if shutil.which("ip") is None:
        return "needs the `ip` command (Debian's iproute2)"
    return None


async def test_a_host_cut_off_mid_run_loses_nothing_and_writes_nothing_after(
        settings: Settings, service_env: dict[str, str], tmp_path: Path) -> None:
    if (why := _netns_ready()) is not None:
        pytest.skip(why)
    hosts = [Host(n) for n in range(1, HOSTS + 1)]
    try:
        for host in hosts:
            await host.create()
    except RuntimeError as exc:
        for host in hosts:
            await host.delete()
        pytest.skip(f"network namespaces are not available here: {exc}")
    receiver = Receiver()
    async with AsyncExitStack() as stack:
        for host in reversed(hosts):
            stack.push_async_callback(host.delete)
        r_port = await stack.enter_async_context(serving(Starlette(
            routes=[Route("/effect", receiver.effect, methods=["POST"])])))
        model = await stack.enter_async_context(FakeOpenAIServer())
        model.responder = _agent_policy
        deps = await stack.enter_async_context(open_deps(settings.model_copy(
            update={"max_concurrent_tasks": TASKS})))
        key = (await create_key(deps.db, email="ops@example.com", role="operator")).secret
        app = create_app(deps=deps)
        stack.push_async_callback(app.state.streams.aclose)
        a_port = await stack.enter_async_context(serving(app))

        base_env = {**service_env, "OPENAI_BASE_URL": model.base_url, "CADRE_MODEL": "fake",
                    "CADRE_TOOLS": "tests.plugins:toolset",
                    "CADRE_TEST_RECEIVER": f"http://127.0.0.1:{r_port}",
                    "CADRE_SQS_WAIT_SECONDS": "1", "CADRE_WORKER_CONCURRENCY": "4",
                    "PYTHONPATH": str(ROOT)}
        ports = {urlsplit(base_env[name]).port for name in (
            "DATABASE_URL", "REDIS_URL", "AWS_ENDPOINT_URL_SQS", "OPENAI_BASE_URL",
            "CADRE_TEST_RECEIVER")}
        for host in hosts:
            for port in ports:
                assert port is not None
                server = await _forward(host.gateway, port)
                stack.push_async_callback(server.wait_closed)
                stack.callback(server.close)

        logs = tmp_path / "workers"
        logs.mkdir()
        workers: list[asyncio.subprocess.Process] = []
        for host in hosts:
            env = {name: value.replace("127.0.0.1", host.gateway).replace(
                "localhost", host.gateway) for name, value in base_env.items()}
            log = (logs / f"{host.name}.log").open("wb")
            workers.append(await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", host.name, sys.executable, "-m", "app.cli", "worker",
                env=env, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                stderr=asyncio.subprocess.STDOUT))
        victim, victim_id = hosts[0], f"{os.uname().nodename}:{workers[0].pid}"
        headers = {"Authorization": f"Bearer {key}"}
        cut_holding: list[str] = []
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a_port}", headers=headers,
                                         timeout=30) as http:
                ids = []
                for n in range(TASKS):
                    response = await http.post("/v1/tasks", json={"input": f"effect-{n}"})
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["id"])
                async with asyncio.timeout(240):
                    while True:
                        listing = (await http.get("/v1/tasks?limit=100")).json()["items"]
                        for task in listing:
                            if task["status"] == "PENDING_APPROVAL":
                                await _approve(http, task["id"])
                        if sum(t["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")
                               for t in listing) == TASKS:
                            break
                        if not cut_holding:
                            # Cut the victim while it is in the middle of tasks.
                            holding = [str(r["id"]) for r in await deps.db.fetch(
                                "SELECT id FROM tasks WHERE status = 'RUNNING' AND "
                                "lease_owner = $1", victim_id)]
                            if holding:
                                await victim.cut()
                                cut_holding = holding
                        await asyncio.sleep(0.2)
                final = {t["id"]: t for t in (await http.get("/v1/tasks?limit=100")).json()["items"]}
            # Every task was finished elsewhere: now the link comes back, and the cut
            # worker's stalled writes reach Postgres, which refuses them.
            await victim.cut(up=True)
            victim_log = logs / f"{victim.name}.log"
            async with asyncio.timeout(90):
                while "writes nothing more to the task" not in victim_log.read_text():
                    await asyncio.sleep(0.5)
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(60):
                    await asyncio.gather(*(w.wait() for w in workers))
            except TimeoutError:
                for worker in workers:
                    if worker.returncode is None:
                        worker.kill()
                await asyncio.gather(*(w.wait() for w in workers))
        events = EventLog(deps.redis)
        histories = {task_id: await events.history(task_id) for task_id in ids}
        ledger = await deps.db.fetch(
            "SELECT task_id, count(*) AS n, min(status) AS status FROM tool_calls "
            "WHERE tool_name = 'record_effect' GROUP BY task_id")
        owners = {r["id"]: r["lease_owner"] for r in await deps.db.fetch(
            "SELECT id, lease_owner FROM tasks WHERE id = ANY($1::uuid[])", cut_holding)}

    print(f"\nhost {victim.name} cut while holding {len(cut_holding)} task(s); receiver got "
          f"{receiver.requests} requests for {len(receiver.applied)} effects")
    assert cut_holding, "the victim must have been cut mid-task"
    assert {final[i]["status"] for i in ids} == {"SUCCEEDED"}, \
        [(i, final[i]["status"], final[i]["error"]) for i in ids if final[i]["status"] != "SUCCEEDED"]
    assert len(receiver.applied) == TASKS, "each effect once, under its task's key"
    assert sorted(k.split(":")[0] for k in receiver.applied) == sorted(ids)
    assert all(r["n"] == 1 and r["status"] == "SUCCEEDED" for r in ledger) and len(ledger) == TASKS
    assert victim_id not in owners.values(), "the cut worker holds none of its old tasks"
    for task_id, history in histories.items():
        types = [e.type for e in history]
        assert history[0].data == StatusData(status="QUEUED")
        assert history[-1].data == StatusData(status="SUCCEEDED") and types[-2] == "final"
        for needed in ("plan", "tool_call", "approval_required", "tool_result"):
            assert needed in types, f"{task_id} has no {needed} event: {types}"
        assert len({e.id for e in history}) == len(history)
        # Nothing after the end: the cut worker's late writes never reached the stream.
        assert Counter(t for t in types if t == "final") == Counter({"final": 1})


async def _approve(http: httpx.AsyncClient, task_id: str) -> None:
    detail: dict[str, Any] = (await http.get(f"/v1/tasks/{task_id}")).json()
    for approval in detail["approvals"]:
        if approval["status"] == "PENDING":
            await http.post(f"/v1/tasks/{task_id}/approvals/{approval['id']}",
                            json={"decision": "approve"})
