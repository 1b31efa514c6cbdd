"""A running task service in the test process: the real ASGI app served by uvicorn on
loopback, one in-process worker with a scripted model, and API keys for two users."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from app.api import create_app
from app.deps import Deps, open_deps
from app.keys import create_key
from app.settings import Settings
from app.worker import run_worker
from graph.testing import ScriptedModel, serving
from tests.agent import Outbox, make_toolset
from tools import Toolset


@dataclass
class Service:
    deps: Deps
    base_url: str
    http: httpx.AsyncClient
    model: ScriptedModel
    outbox: Outbox
    key: str
    other_key: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def submit(self, text: str, **body: Any) -> dict[str, Any]:
        response = await self.http.post("/v1/tasks", json={"input": text, **body},
                                        headers=self.auth())
        assert response.status_code == 202, response.text
        return response.json()  # type: ignore[no-any-return]

    async def task(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/tasks/{task_id}", headers=self.auth())
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def wait_status(self, task_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                task = await self.task(task_id)
                if task["status"] in statuses:
                    return task
                await asyncio.sleep(0.1)

    async def sse(self, task_id: str, last_event_id: str | None = None,
                  stop_after: str | None = None) -> list[dict[str, Any]]:
        """Read the task's SSE stream to its end (or until an event of type `stop_after`)."""
        headers = self.auth()
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        events: list[dict[str, Any]] = []
        async with self.http.stream("GET", f"/v1/tasks/{task_id}/stream", headers=headers,
                                    timeout=60) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            current: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    current["id"] = line[4:]
                elif line.startswith("event: "):
                    current["type"] = line[7:]
                elif line.startswith("data: "):
                    current["data"] = json.loads(line[6:])
                elif line == "" and current:
                    events.append(current)
                    if current["type"] == stop_after:
                        break
                    current = {}
        return events


@asynccontextmanager
async def running_service(settings: Settings, *,
                          toolset: Toolset | None = None) -> AsyncIterator[Service]:
    model = ScriptedModel()
    outbox = Outbox()
    stop = asyncio.Event()
    async with open_deps(settings) as deps, AsyncExitStack() as stack:
        key = (await create_key(deps.db, email="ana@example.com", role="analyst")).secret
        other = (await create_key(deps.db, email="eve@example.com", role="analyst")).secret
        toolset = toolset or make_toolset(outbox)
        app = create_app(deps=deps, toolset=toolset)
        # The lifespan runs the MCP and A2A servers and closes the streams at the end.
        port = await stack.enter_async_context(serving(app, lifespan=True))
        worker = asyncio.create_task(run_worker(settings, stop=stop, model=model,
                                                toolset=toolset))
        async with asyncio.timeout(30):  # a worker that fails to start fails the test now
            while not [k async for k in deps.redis.scan_iter("cadre:workers:*")]:
                if worker.done():
                    worker.result()
                await asyncio.sleep(0.05)
        base_url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                yield Service(deps=deps, base_url=base_url, http=http, model=model,
                              outbox=outbox, key=key, other_key=other)
        finally:
            stop.set()
            await asyncio.wait_for(worker, timeout=90)
