"""`cadre api` with the chat UI mounted: the API keeps its own errors and routes, sign-in uses
the API's users and keys, and a user reaches only their own threads and files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.stack.ports import free_port
from app.tooling import artifact_store
from graph.testing import plan, reply, verdict
from tests.cli import CADRE
from tests.service import Service
from tools.artifacts import Artifacts

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
async def start_ui(service: Service, service_env: dict[str, str],
                   tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Starts `cadre api` (UI on) in its own process, on the same database and CADRE_HOME as
    the in-process test service (Chainlit is one per process); returns its URL."""
    started: list[tuple[asyncio.subprocess.Process, Any]] = []

    async def _start(**env: str) -> str:
        port = free_port()
        log_path = tmp_path / f"api-{port}.log"
        log = await asyncio.to_thread(log_path.open, "wb")
        proc = await asyncio.create_subprocess_exec(
            *CADRE, "api", env={**service_env, "CADRE_API_PORT": str(port), "CADRE_UI": "true",
                                "PYTHONPATH": str(ROOT), **env},
            cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL, stdout=log,
            stderr=asyncio.subprocess.STDOUT)
        started.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http, asyncio.timeout(60):
            while True:
                assert proc.returncode is None, await asyncio.to_thread(log_path.read_text)
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)

    yield _start
    for proc, log in started:
        proc.terminate()
        await proc.wait()
        await asyncio.to_thread(log.close)


@pytest.fixture
async def ui_url(start_ui: Callable[..., Awaitable[str]]) -> str:
    return await start_ui()


async def _login(client: httpx.AsyncClient, email: str, key: str) -> None:
    response = await client.post("/login", data={"username": email, "password": key})
    assert response.status_code == 200, response.text
    assert client.cookies.get("access_token")


async def test_the_api_keeps_its_routes_and_errors_under_the_ui(ui_url: str) -> None:
    async with httpx.AsyncClient(base_url=ui_url) as http:
        unknown = await http.get("/v1/no/such/thing")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"
        assert unknown.json()["type"] == "https://cadre.dev/problems/not-found"
        posted = await http.post("/v1/tasks/x/nope", json={})
        assert posted.status_code == 404 and posted.json()["status"] == 404
        anonymous = await http.get("/v1/tasks")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert (await http.get("/openapi.json")).json()["info"]["title"] == "Cadre"
        share = await http.get("/share/shr_unknown")
        assert share.status_code == 404 and "has been revoked" in share.text, \
            "share links are Cadre's page, not Chainlit's"
        page = await http.get("/")
        assert page.status_code == 200 and "<title>Cadre</title>" in page.text
        thread = await http.get("/thread/3b8a2f1e-9f5c-4f7e-8d2a-6c1e0b7a9d10")
        assert thread.status_code == 200 and "<title>Cadre</title>" in thread.text
        config = (await http.get("/auth/config")).json()
        assert config["requireLogin"] and config["passwordAuth"] and not config["headerAuth"]


async def test_sign_in_threads_and_files_belong_to_their_user(ui_url: str,
                                                              service: Service) -> None:
    service.model.add(plan("Answer"), reply("Hello Ana."), verdict(True))
    task = await service.submit("Say hello to Ana.")
    task = await service.wait_status(task["id"], "SUCCEEDED")
    conversation = task["conversation_id"]
    await Artifacts(service.deps.db, artifact_store(service.deps.settings)).save(
        task["id"], "chart.png", PNG)
    chart = f"/ui/artifacts/{task['id']}/chart.png"

    async with httpx.AsyncClient(base_url=ui_url) as anonymous:
        wrong = await anonymous.post("/login", data={"username": "ana@example.com",
                                                     "password": service.other_key})
        assert wrong.status_code == 401, "eve's key does not sign ana in"
        assert (await anonymous.post("/login", data={"username": "ana@example.com",
                                                     "password": "cadre_nope"})).status_code == 401
        assert (await anonymous.get(chart)).status_code == 401
        assert (await anonymous.get(f"/project/thread/{conversation}")).status_code == 401

    async with httpx.AsyncClient(base_url=ui_url) as ana, \
            httpx.AsyncClient(base_url=ui_url) as eve:
        await _login(ana, "ANA@example.com ", service.key)
        await _login(eve, "eve@example.com", service.other_key)
        listed = (await ana.post("/project/threads", json={"pagination": {"first": 20},
                                                           "filter": {}})).json()
        assert [t["id"] for t in listed["data"]] == [conversation]
        thread = (await ana.get(f"/project/thread/{conversation}")).json()
        assert [s["output"] for s in thread["steps"] if s["type"] == "user_message"] == [
            "Say hello to Ana."]
        image = await ana.get(chart)
        assert image.status_code == 200 and image.content == PNG
        assert image.headers["content-type"] == "image/png"
        assert image.headers["content-disposition"].startswith("inline")

        theirs = (await eve.post("/project/threads", json={"pagination": {"first": 20},
                                                           "filter": {}})).json()
        assert theirs["data"] == []
        assert (await eve.get(f"/project/thread/{conversation}")).status_code == 401
        assert (await eve.get(chart)).status_code == 404

        # Revoking ana's key ends her UI access too, cookie or not.
        await service.deps.db.execute("UPDATE api_keys SET revoked_at = now() "
                                      "WHERE user_id = (SELECT id FROM users WHERE email = $1)",
                                      "ana@example.com")
        assert (await ana.get(chart)).status_code == 401
        gone = await ana.post("/project/threads", json={"pagination": {"first": 20},
                                                        "filter": {}})
        assert gone.status_code == 404


async def test_header_sign_in_behind_a_proxy(start_ui: Callable[..., Awaitable[str]],
                                             service: Service) -> None:
    url = await start_ui(CADRE_UI_AUTH_HEADER="X-Forwarded-Email")
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/auth/config")).json()["headerAuth"] is True
        signed = await http.post("/auth/header", headers={"X-Forwarded-Email": "eve@example.com"})
        assert signed.status_code == 200 and http.cookies.get("access_token")
        assert (await http.get("/user")).json()["identifier"] == "eve@example.com"
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/auth/header")).status_code == 401
        unknown = await http.post("/auth/header",
                                  headers={"X-Forwarded-Email": "mallory@example.com"})
        assert unknown.status_code == 401, "only users Cadre knows"
