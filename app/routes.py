"""The task endpoints under `/v1`, all behind bearer API keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError
from fastapi import (
    APIRouter,
    Depends,
    Header,
    Query,
    Request,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from app.auth import Principal, authenticate
from app.events import ErrorData, Event, FinalData, StatusData
from app.files import FileStore
from app.problems import Problem, too_many_requests
from app.replays import replay_task, replay_tools, report_json
from app.schemas import (
    Approval,
    ArtifactList,
    Task,
    TaskAccepted,
    TaskDetail,
    TaskPage,
    UploadedFile,
    WebhookDeliveries,
    WebhookSecret,
    WebhookSettings,
    problem_responses,
)
from app.service import TaskService
from app.store.webhooks import WebhookStore
from app.streams import StreamHub, StreamsFull, parse_event_id
from app.telemetry import trace_id
from app.webhooks import new_secret
from graph.approvals import ApprovalDecision
from graph.status import TERMINAL, TaskStatus
from guardrails import Policy
from guardrails.limits import LimitExceeded, RequestRate
from guardrails.screening import control_characters
from tools import Toolset
from tools.artifacts import Artifacts

router = APIRouter(prefix="/v1")


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=20_000, description="The task, in plain words.")
    conversation_id: uuid.UUID | None = Field(
        None, description="Continue this conversation; omitted, a new one starts.")
    max_iterations: int | None = Field(None, ge=1, le=100)
    token_budget: int | None = Field(None, ge=1, le=10_000_000)
    files: list[uuid.UUID] = Field(
        default_factory=list, max_length=10,
        description="Ids from POST /v1/files; the task's Python sees them in /workspace/inputs.")
    multitask_strategy: Literal["enqueue", "reject", "interrupt"] = Field(
        "enqueue", description="When the conversation is busy: wait behind it (enqueue), "
                               "refuse with 409 (reject), or cancel it and start (interrupt).")
    speculation: bool | None = Field(
        None, description="false: no speculative tool calls for this task (they are on unless "
                          "the deployment turned them off with CADRE_SPECULATION=false)")
    cache: bool | None = Field(
        None, description="true: answer from the semantic task cache when an earlier task of "
                          "yours meant the same (see docs/caching.md); false: run it anew, "
                          "past the cache (\"run again\"); omitted: the deployment's "
                          "CADRE_SEMANTIC_CACHE")
    mode: Literal["single", "team", "auto"] = Field(
        "single", description="team: a manager agent splits the task among the deployment's "
        "worker agents (CADRE_AGENTS_FILE), independent parts at once, on the task's one "
        "budget (see docs/agents.md); auto: the planner chooses, a team when the task has "
        "independent parts; single: one agent")
    cache_scope: str | None = Field(
        None, max_length=100, description="Share cached answers with everyone who names this "
        "scope, one of the deployment's CADRE_CACHE_SHARED_SCOPES, instead of with yourself "
        "only: the task is answered from, and its answer kept for, that scope")
    webhook_url: str | None = Field(
        None, max_length=2000, description="POST the task's end and its approval requests "
        "here, signed (Standard Webhooks); overrides your default (PUT /v1/webhooks). Needs "
        "your signing secret (POST /v1/webhooks/secret).")


def _plain(value: str | None) -> str | None:
    if value is not None and (found := control_characters(value)):
        raise ValueError(f"contains control or invisible characters ({', '.join(found[:5])})")
    return value


# Free text a person types: no NUL, other control characters or lone surrogates.
PlainText = Annotated[str | None, AfterValidator(_plain)]


class DecisionBody(ApprovalDecision):
    """`ApprovalDecision` as a request body: nothing else in it."""

    model_config = ConfigDict(extra="forbid")




def _service(request: Request) -> TaskService:
    return request.app.state.service  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False, description="An API key from `cadre keys create`")


async def _principal(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> Principal:
    authorization = f"Bearer {credentials.credentials}" if credentials else None
    return await admit(request.app.state, authorization)


async def admit(state: Any, authorization: str | None) -> Principal:
    """The caller of any of the app's doors (REST, WebSocket, MCP, A2A): its bearer key
    checked, and the request counted against the key's rate."""
    who = await authenticate(state.deps.db, authorization)
    await count_request(state.rate, who)
    return who


async def count_request(rate: RequestRate, who: Principal) -> None:
    """Every authenticated `/v1` request counts against its API key's rate (CADRE_RATE_LIMIT)."""
    try:
        await rate.hit(who.key_id)
    except LimitExceeded as exc:
        raise too_many_requests(exc) from None


Who = Annotated[Principal, Depends(_principal)]
Service = Annotated[TaskService, Depends(_service)]


async def _json_body(request: Request, who: Who) -> None:
    """Bodies of JSON operations must say they are JSON (a form or text is a 415, not a
    puzzling validation error). After authentication: a stranger learns nothing."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise Problem("unsupported-media-type", 415,
                      "send the body as JSON with `Content-Type: application/json`")


JsonBody = Depends(_json_body)


def _links(request: Request, task: dict[str, Any]) -> dict[str, str]:
    base = str(request.base_url).rstrip("/")
    ws = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    task_id = task["id"]
    links = {"self": f"{base}/v1/tasks/{task_id}", "stream": f"{base}/v1/tasks/{task_id}/stream",
             "ws": f"{ws}/v1/tasks/{task_id}/ws"}
    viewer = request.app.state.deps.settings.trace_url
    if viewer and (traced := trace_id(task.get("trace_context"))):
        links["trace"] = viewer.replace("{trace_id}", traced)
    return links


def _accepted(request: Request, task: dict[str, Any]) -> JSONResponse:
    """202 for a task just queued: where it is, and where to follow it."""
    return JSONResponse(
        {"id": task["id"], "status": task["status"], "conversation_id": task["conversation_id"],
         "links": _links(request, task)},
        status_code=202, headers={"Location": f"/v1/tasks/{task['id']}"})


@router.post("/tasks", status_code=202, response_model=TaskAccepted, dependencies=[JsonBody],
             responses=problem_responses(404, 409, 413, 415))
async def create_task(body: TaskCreate, request: Request, who: Who, service: Service) -> JSONResponse:
    """Accept a task: it is queued and runs on a worker; follow it at `links.stream`."""
    task = await service.submit(
        who, body.input, conversation_id=str(body.conversation_id) if body.conversation_id else None,
        max_iterations=body.max_iterations, token_budget=body.token_budget,
        strategy=body.multitask_strategy, files=[str(f) for f in body.files],
        webhook_url=body.webhook_url, speculation=body.speculation, cache=body.cache,
        cache_scope=body.cache_scope, mode=body.mode)
    return _accepted(request, task)


class WebhookDefault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(max_length=2000, description="Your default webhook URL; null "
                                                         "stops webhooks for tasks without one")


@router.get("/webhooks", response_model=WebhookSettings, responses=problem_responses())
async def webhook_settings(who: Who, request: Request) -> dict[str, Any]:
    """Your default webhook URL and whether you have a signing secret."""
    row = await WebhookStore(request.app.state.deps.db).settings_of(who.user_id)
    return {"url": row["webhook_url"], "has_secret": row["has_secret"],
            "secret_created_at": row["webhook_secret_created_at"]}


@router.put("/webhooks", response_model=WebhookSettings, dependencies=[JsonBody],
            responses=problem_responses(409, 413, 415))
async def set_webhook_default(body: WebhookDefault, who: Who, request: Request,
                              service: Service) -> dict[str, Any]:
    """Set (or, with null, clear) the URL your tasks' events go to."""
    url = await service.webhook_url(who, body.url) if body.url is not None else None
    await WebhookStore(request.app.state.deps.db).set_default_url(who.user_id, url)
    return await webhook_settings(who, request)


@router.post("/webhooks/secret", status_code=201, response_model=WebhookSecret,
             responses=problem_responses())
async def rotate_webhook_secret(who: Who, request: Request) -> dict[str, Any]:
    """A new signing secret, shown once; deliveries from now on are signed with it."""
    secret = new_secret()
    created = await WebhookStore(request.app.state.deps.db).set_secret(who.user_id, secret)
    return {"secret": secret, "created_at": created}


@router.get("/webhooks/deliveries", response_model=WebhookDeliveries,
            responses=problem_responses())
async def webhook_deliveries(who: Who, request: Request,
                             task_id: Annotated[uuid.UUID | None, Query()] = None,
                             limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    """Your webhook deliveries, newest first: each event's attempts, last answer and state."""
    store = WebhookStore(request.app.state.deps.db)
    return {"items": await store.deliveries(who.user_id, task_id=task_id, limit=limit)}


@router.post("/files", status_code=201, response_model=UploadedFile,
             responses=problem_responses(413, 415))
async def upload(request: Request, who: Who, file: UploadFile) -> dict[str, Any]:
    """Upload a file (CSV, TSV, text, Markdown, JSON or PDF; up to 25 MiB) to attach to tasks."""
    store: FileStore = request.app.state.files
    return await store.save(who.user_id, file)


@router.get("/tasks", response_model=TaskPage, responses=problem_responses())
async def list_tasks(who: Who, service: Service,
                     status: Annotated[TaskStatus | None, Query()] = None,
                     limit: Annotated[int, Query(ge=1, le=100)] = 20,
                     cursor: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
    """Your tasks, newest first; pass `next_cursor` back as `cursor` for the next page."""
    items, next_cursor = await service.list(who, status=status, limit=limit, cursor=cursor)
    return {"items": [_public(t) for t in items], "next_cursor": next_cursor}


@router.get("/tasks/{task_id}", response_model=TaskDetail, responses=problem_responses(404))
async def get_task(task_id: str, request: Request, who: Who, service: Service) -> dict[str, Any]:
    """Status, input, final output, error, usage, steps and approvals of one task."""
    task = await service.get(who, task_id)
    return {**_public(task), "steps": task["steps"], "approvals": task["approvals"],
            "links": _links(request, task)}


@router.post("/tasks/{task_id}/approvals/{approval_id}", response_model=Approval,
             dependencies=[JsonBody], responses=problem_responses(404, 409, 413, 415))
async def decide(task_id: str, approval_id: str, body: DecisionBody, who: Who,
                 service: Service) -> dict[str, Any]:
    """Approve or reject a held tool call. Repeating the same decision is harmless; a
    different one is a 409."""
    return await service.decide(who, task_id, approval_id, body)


@router.get("/tasks/{task_id}/artifacts", response_model=ArtifactList,
            responses=problem_responses(404))
async def list_artifacts(task_id: str, request: Request, who: Who,
                         service: Service) -> dict[str, Any]:
    """Files the task's code wrote (charts, reports, data), each with a download link."""
    await service.owned(who, task_id)
    artifacts: Artifacts = request.app.state.artifacts
    base = str(request.base_url).rstrip("/")
    return {"items": [{**a.to_json(),
                       "url": f"{base}/v1/tasks/{task_id}/artifacts/{quote(a.name)}"}
                      for a in await artifacts.list(task_id)]}


@router.get("/tasks/{task_id}/artifacts/{name:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "The artifact's bytes, with its content type"},
                       **problem_responses(404)})
async def get_artifact(task_id: str, name: str, request: Request, who: Who,
                       service: Service) -> Response:
    """Download one artifact by name."""
    await service.owned(who, task_id)
    artifacts: Artifacts = request.app.state.artifacts
    artifact = await artifacts.find(task_id, name)
    if artifact is None:
        raise Problem("not-found", 404, f"task {task_id} has no artifact named {name!r}")
    try:
        data = await artifacts.read(artifact)
    except (OSError, BotoCoreError, ClientError) as exc:
        raise Problem("unavailable", 503, f"the artifact store could not be read: "
                                          f"{type(exc).__name__}") from None
    filename = name.rpartition("/")[2]
    return Response(data, media_type=artifact.content_type, headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
        "ETag": f'"{artifact.sha256}"'})


class ForkBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_step: int = Field(ge=0, le=100_000, description="Go on from the task's state as of "
                           "this step (a `number` of its steps; 0: from its start)")
    input: PlainText = Field(None, max_length=20_000, description="An instruction to add as a "
                             "new message at that point (the edited next instruction)")
    note: PlainText = Field(None, max_length=500, description="Why you fork (its title)")
    tool_results: dict[str, Annotated[str, Field(max_length=100_000)]] = Field(
        default_factory=dict, max_length=20, description="Edited tool results: a call id "
        "(`call_id` of a `tool_ran` step before `from_step`) and the content the fork sees")


@router.post("/tasks/{task_id}/fork", status_code=202, response_model=TaskAccepted,
             dependencies=[JsonBody], responses=problem_responses(404, 409, 413, 415))
async def fork(task_id: str, body: ForkBody, request: Request, who: Who,
               service: Service) -> JSONResponse:
    """A new task in a new conversation that goes on from this task's state at `from_step`:
    what the original did by then is kept (its tool calls are replayed, not run again), and
    anything the fork does anew is decided by the policy as usual."""
    task = await service.fork(who, task_id, from_step=body.from_step, instruction=body.input,
                              note=body.note, tool_results=body.tool_results)
    return _accepted(request, task)


class Divergence(BaseModel):
    step: int = Field(description="The recorded step where the current code decides otherwise")
    recorded: str = Field(description="What the run did there")
    replayed: str = Field(description="What the current code does instead")


class ReplayResult(BaseModel):
    reproduced: bool = Field(description="Every step the same")
    compared: int = Field(description="Steps that matched before any difference")
    divergence: Divergence | None
    summary: str


@router.post("/tasks/{task_id}/replay", response_model=ReplayResult,
             responses=problem_responses(404, 409))
async def replay(task_id: str, request: Request, who: Who, service: Service) -> dict[str, Any]:
    """Run this ended task's recorded model answers and tool results through the current
    graph, tools and policy — no model call, no tool call — and say at which step the
    current code would decide otherwise."""
    task = await service.owned(who, task_id)
    toolset, policy = await _replay_tools(request.app)
    return report_json(await replay_task(request.app.state.deps.db, task, toolset=toolset,
                                         policy=policy))


async def _replay_tools(app: Any) -> tuple[Toolset, Policy]:
    """The tools replays run against (the app's, else the deployment's as a worker builds
    them, MCP servers' left out) and the policy the workers load, built once per app."""
    state = app.state
    if getattr(state, "replay_policy", None) is None:
        state.replay_toolset, state.replay_policy = await asyncio.to_thread(
            replay_tools, state.deps.settings, state.replay_toolset)
    return state.replay_toolset, state.replay_policy


@router.post("/tasks/{task_id}/cancel", response_model=Task, responses=problem_responses(404))
async def cancel(task_id: str, who: Who, service: Service) -> dict[str, Any]:
    """Cancel: a queued or waiting task ends now, a running one at its next step boundary."""
    return _public(await service.cancel(who, task_id))


@router.get("/tasks/{task_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "`id:`, `event:` (the event type) and `data:` "
                                            "(its JSON) per event"},
                       **problem_responses(400, 404)})
async def stream(task_id: str, request: Request, who: Who, service: Service,
                 last_event_id: Annotated[str | None, Header(max_length=64)] = None,
                 ) -> StreamingResponse:
    """Server-Sent Events of every step. Reconnect with `Last-Event-ID` to get what you
    missed (resuming at or past the end replays the final status and ends); a comment line
    every 15 s (CADRE_SSE_HEARTBEAT_SECONDS) keeps proxies from closing the connection. The
    stream ends after the task's terminal status, or after CADRE_SSE_MAX_SECONDS, when the
    client reconnects with `Last-Event-ID`. 503 with `Retry-After` when this API process
    serves its limit of live streams (CADRE_STREAM_LIMIT)."""
    after = _event_id(last_event_id, "Last-Event-ID")
    task = await service.owned(who, task_id)
    streams: StreamHub = request.app.state.streams
    _admit(streams)
    settings = request.app.state.deps.settings

    async def body() -> AsyncIterator[bytes]:
        # `retry` tells EventSource how soon to reconnect when the stream is cut short.
        yield b"retry: 1000\n\n"
        async with asyncio.timeout(settings.sse_max_seconds):
            async for batch in _batches(streams, task, after, settings.sse_heartbeat_seconds):
                # Every event waiting for this client goes out in one write.
                yield b"".join(e.sse for e in batch) if batch is not None else b": keep-alive\n\n"

    async def bounded() -> AsyncIterator[bytes]:
        with contextlib.suppress(TimeoutError):
            async for chunk in body():
                yield chunk

    return StreamingResponse(bounded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event_id(value: str | None, name: str) -> str | None:
    """A resume point from a client, checked: Redis would refuse a malformed one mid-stream."""
    if value is None or value.strip() == "":
        return None
    try:
        parse_event_id(value)
    except ValueError:
        raise Problem("invalid-request", 400,
                      f"{name} must be the id of an event of this stream, like "
                      f"1700000000000-0 (got {value[:40]!r})") from None
    return value.strip()


def _admit(streams: StreamHub) -> None:
    try:
        streams.admit()
    except StreamsFull as full:
        raise Problem("unavailable", 503, str(full),
                      headers={"Retry-After": str(full.retry_after)}) from None


async def _batches(streams: StreamHub, task: dict[str, Any], after: str | None,
                   heartbeat: float) -> AsyncIterator[list[Event] | None]:
    if task["status"] in TERMINAL and \
            await streams.events.last_id(task["id"]) is None:
        # The live stream expired: tell the outcome from Postgres.
        error = task["error"] or {}
        ending = Event(id="", data=FinalData(output=task["final_output"])) \
            if task["status"] == TaskStatus.SUCCEEDED else \
            Event(id="", data=ErrorData(type=str(error.get("type", "failed")),
                                        message=str(error.get("message", "")),
                                        partial=task["final_output"]))
        yield [ending, Event(id="", data=StatusData(status=TaskStatus(task["status"])))]
        return
    async for batch in streams.batches(task["id"], after, heartbeat_seconds=heartbeat):
        yield batch


@router.websocket("/tasks/{task_id}/ws")
async def websocket(ws: WebSocket, task_id: str) -> None:
    """The same events as the stream; the client may send `{"type": "approve" | "reject",
    "approval_id", "comment"}` or `{"type": "cancel"}`. Authenticate with the
    `Authorization` header or, from browsers, `?access_token=`."""
    app = ws.app
    authorization = ws.headers.get("authorization")
    if authorization is None and ws.query_params.get("access_token"):
        authorization = f"Bearer {ws.query_params['access_token']}"
    try:
        after = _event_id(ws.query_params.get("last_event_id"), "last_event_id")
        who = await admit(app.state, authorization)
        service: TaskService = app.state.service
        task = await service.owned(who, task_id)
        _admit(app.state.streams)
    except Problem as problem:
        # Accept first: a browser cannot read why a handshake failed, but it gets a close code.
        await ws.accept()
        await ws.close(code=4000 + problem.status, reason=problem.detail[:120])
        return
    await ws.accept()

    async def send_events() -> None:
        async for batch in _batches(app.state.streams, task, after,
                                    app.state.deps.settings.sse_heartbeat_seconds):
            if batch is None:
                await ws.send_json({"type": "heartbeat"})
            for event in batch or ():
                await ws.send_text(event.json_text)

    async def receive_commands() -> None:
        while True:
            try:
                message = await ws.receive_json()
            except (WebSocketDisconnect, json.JSONDecodeError, KeyError):
                return
            try:
                command = _Command.model_validate(message)
                if command.type == "cancel":
                    await service.cancel(who, task_id)
                elif command.approval_id is None:
                    raise Problem("invalid-request", 422, "approve/reject need approval_id")
                else:
                    await service.decide(who, task_id, command.approval_id, ApprovalDecision(
                        decision=command.type, comment=command.comment or "",
                        approval_id=command.approval_id))
                await ws.send_json({"type": "ack", "command": command.type})
            except ValidationError as exc:
                await ws.send_json({"type": "problem", "detail": str(exc.errors()[0]["msg"])})
            except Problem as problem:
                await ws.send_json({"type": "problem", "status": problem.status,
                                    "detail": problem.detail})

    sender = asyncio.create_task(send_events())
    receiver = asyncio.create_task(receive_commands())
    done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
    for task_ in pending:
        task_.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task_ in done:
        task_.exception()  # a send to a socket the client closed: nothing left to tell
    with contextlib.suppress(RuntimeError):
        await ws.close()


class _Command(BaseModel):
    type: Literal["approve", "reject", "cancel"]
    approval_id: str | None = Field(None, max_length=100)
    comment: PlainText = Field(None, max_length=2_000)


def _public(task: dict[str, Any]) -> dict[str, Any]:
    return {k: task.get(k) for k in ("id", "conversation_id", "status", "input", "final_output",
                                     "error", "usage", "options", "cached_from", "created_at",
                                     "updated_at", "started_at", "finished_at")}
