"""The HTTP application: the task API under `/v1`, health and metrics, share links, and the
chat UI at `/`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, Union

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, Field, TypeAdapter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import kb, problems
from app.a2a import mount_a2a
from app.deps import Deps, open_deps
from app.events import EventLog, event_schemas
from app.files import MAX_FILE_BYTES, FileStore
from app.health import service_checks
from app.mailbox import mailbox_router
from app.mcp_server import mount_mcp
from app.memories import mount_memories
from app.metrics import RunMetricsCollector
from app.routes import router
from app.schedules import router as schedules_router
from app.service import TaskService
from app.settings import Settings, load_settings
from app.share import router as share_router
from app.store import TaskStore
from app.streams import StreamHub
from app.tooling import artifact_store, open_embedder
from graph.status import TaskStatus
from guardrails.limits import RequestRate
from tools import Toolset
from tools.artifacts import Artifacts

MAX_BODY_BYTES = 1024 * 1024


class HealthCheck(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    status: str
    checks: dict[str, HealthCheck]


def create_app(settings: Settings | None = None, *, deps: Deps | None = None,
               ui: bool = False, toolset: Toolset | None = None) -> FastAPI:
    """Build the ASGI app; `cadre api` serves it with uvicorn. Pass `deps` to reuse open pools
    (tests); otherwise the app opens its own at start-up. `ui` also serves the chat UI at `/`
    (Chainlit is process-wide: tests that build many apps leave it off)."""
    resolved = settings or (deps.settings if deps else load_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # One embeddings client for the process: memory search and the indexer.
            app.state.embedder = await stack.enter_async_context(open_embedder(resolved))
            if deps is None:
                opened = await stack.enter_async_context(open_deps(resolved))
                indexer = await stack.enter_async_context(
                    kb.indexing(opened.db, app.state.embedder))
                _attach(app, opened, indexer)
            for lifetime in app.state.lifetimes:  # the protocol servers' session managers
                await stack.enter_async_context(lifetime())
            try:
                yield
            finally:
                await app.state.streams.aclose()

    app = FastAPI(title="Cadre", version="0.1.0", lifespan=lifespan)
    app.state.lifetimes = []
    app.state.embedder = None  # open while the app runs (the lifespan)
    # The tools a replay runs against; None: the deployment's (built on first use).
    app.state.replay_toolset = toolset
    app.state.replay_policy = None
    # Uploads may be larger than JSON bodies; the store enforces the per-file limit itself.
    app.add_middleware(problems.BodyLimit, limit=MAX_BODY_BYTES,
                       larger={"/v1/files": MAX_FILE_BYTES + 64 * 1024,
                               # A2A sends a message's files inline, base64-encoded.
                               "/a2a": MAX_FILE_BYTES * 4 // 3 + 64 * 1024,
                               "/project/file": MAX_FILE_BYTES + 64 * 1024})
    if deps is not None:
        _attach(app, deps)
    problems.install(app)
    app.include_router(router)
    app.include_router(share_router)
    app.include_router(schedules_router)
    mount_memories(app)
    if resolved.dev_mailbox_dir is not None:
        app.include_router(mailbox_router(resolved.dev_mailbox_dir))
    registry = CollectorRegistry()
    requests = Counter("cadre_http_requests_total", "HTTP requests answered",
                       ["method", "status"], registry=registry)
    tasks_by_status = Gauge("cadre_tasks", "Tasks by status", ["status"], registry=registry)
    queue_depth = Gauge("cadre_queue_messages", "Messages in the task queue", ["state"],
                        registry=registry)
    workers = Gauge("cadre_workers_alive", "Workers with a live heartbeat", registry=registry)
    waiting = Gauge("cadre_approvals_waiting", "Tool calls waiting for a person's decision",
                    registry=registry)
    runs = RunMetricsCollector()
    registry.register(runs)

    app.add_middleware(_CountRequests, counter=requests)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """Postgres, Redis and the SQS queue, each reachable and ready; 503 if any is not."""
        checks = await service_checks(resolved)
        body = Health(
            status="ok" if all(c.ok for c in checks) else "unavailable",
            checks={c.name: HealthCheck(ok=c.ok, detail=c.detail) for c in checks},
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)

    @app.get("/metrics", response_class=Response, responses={200: {
        "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
        "description": "Prometheus text format"}})
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: requests, tasks by status, queue depth, live workers, approvals
        waiting, and, across all workers, step latency by node, model tokens and tool calls."""
        opened: Deps = request.app.state.deps
        store = TaskStore(opened.db)
        counts = await store.counts_by_status()
        for status in TaskStatus:
            tasks_by_status.labels(status).set(counts.get(status, 0))
        attributes = await opened.queue.attributes()
        queue_depth.labels("visible").set(int(attributes.get("ApproximateNumberOfMessages", 0)))
        queue_depth.labels("in_flight").set(
            int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)))
        workers.set(len([k async for k in opened.redis.scan_iter("cadre:workers:*", count=1000)]))
        waiting.set(await store.approvals_waiting())
        await runs.refresh(opened.redis)
        payload = await asyncio.to_thread(generate_latest, registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    mount_mcp(app)
    mount_a2a(app)
    if ui:
        from app.ui import mount_ui

        mount_ui(app, resolved)  # last: the UI answers every path nothing above claimed
    return app


class _CountRequests:
    """Counts answered requests by method and status. Plain ASGI: Starlette's
    `BaseHTTPMiddleware` would pass every chunk of every event stream through a memory
    channel (a large share of a busy API's CPU, measured with bench/streams.py)."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counter.labels(scope["method"], str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with error bodies under the media type they are sent as."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                             description=_DESCRIPTION)
        for item in schema["paths"].values():
            for operation in item.values():
                for response in operation.get("responses", {}).values():
                    content = response.get("content", {})
                    body = content.get("application/json", {})
                    if body.get("schema", {}).get("$ref", "").endswith("/ProblemDetail"):
                        response["content"] = {problems.MEDIA_TYPE: content.pop("application/json")}
                    if "text/event-stream" in content:
                        content["text/event-stream"]["schema"] = _add_event_schemas(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def _add_event_schemas(schema: dict[str, Any]) -> dict[str, Any]:
    """Put the stream's event models in the document's components; returns the schema of one
    event (`StreamEvent`, one of them by `type`)."""
    envelopes, _ = event_schemas()
    union: Any = Union[tuple(envelopes)]  # noqa: UP007 - built at run time from a list
    generated = TypeAdapter(Annotated[union, Field(discriminator="type")]).json_schema(
        ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(generated.pop("$defs", {}))
    components["StreamEvent"] = {
        **generated, "description": "One event of a task's stream: the WebSocket sends it as "
        "this JSON; an SSE frame carries `id:`, `event:` (the type) and `data:` (the data as "
        "JSON). `data.schema_version` changes only when a model changes incompatibly."}
    return {"$ref": "#/components/schemas/StreamEvent"}


_DESCRIPTION = (
    "Cadre's task API. Authenticate with `Authorization: Bearer <API key>` (`cadre keys "
    "create`). Errors are RFC 9457 problem documents (`application/problem+json`) with a "
    "stable `type` per kind of error.")


def _attach(app: FastAPI, deps: Deps, indexer: kb.Indexer | None = None) -> None:
    events = EventLog(deps.redis)
    app.state.deps = deps
    app.state.events = events
    app.state.files = FileStore(deps.settings.home / "files", deps.db, indexer)
    app.state.artifacts = Artifacts(deps.db, artifact_store(deps.settings))
    app.state.streams = StreamHub(
        url=deps.settings.redis_url or "", control=deps.redis, events=events,
        readers=deps.settings.stream_readers, limit=deps.settings.stream_limit)
    app.state.rate = RequestRate(deps.limits_redis, deps.settings.rate_limit)
    app.state.service = TaskService.of(deps, events)
