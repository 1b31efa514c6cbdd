"""Cadre as an MCP server at `/mcp` (streamable HTTP, bearer API keys), so an MCP client — a
desktop assistant, an IDE — can hand Cadre tasks. Tools: `run_task` (progress notifications
per step, the answer as its result), `get_task`, `list_tasks`, `cancel_task`, `approve`;
resources: a task's transcript and its artifacts. A held tool call is asked through MCP
elicitation when the client supports it, so the user decides in their own client; otherwise
the tool returns the pending approval's id for `approve`.

Everything goes through `TaskService` with the caller's principal, as the REST API does: the
same ownership, limits, policy and redaction. Sessions live in the API process that opened
them (the MCP SDK keeps them in memory): behind several API replicas, route `/mcp` with
sticky sessions on the `mcp-session-id` header."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import quote, unquote

from fastapi import FastAPI
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ResourceError, ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ClientCapabilities, ElicitationCapability, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from app.auth import Principal
from app.events import (
    AgentData,
    AnyEventData,
    ApprovalRequiredData,
    CacheData,
    ErrorData,
    Event,
    FinalData,
    ModelCallData,
    PlanData,
    StatusData,
    ThoughtData,
    TokenData,
    ToolCallData,
    ToolResultData,
    agent_text,
    cache_text,
)
from app.history import load_conversation
from app.problems import Problem, problem_response
from app.routes import admit
from app.service import TaskService
from app.streams import StreamHub, StreamsFull
from app.transcript import render_markdown
from graph.approvals import ApprovalDecision
from graph.status import TERMINAL, TaskStatus
from tools.artifacts import Artifacts

log = logging.getLogger("cadre.mcp")

PATH = "/mcp"
# Unparametrised: FastMCP validates a resource function's arguments, and a parametrised
# Context class would make pydantic copy the instance, losing its request.
if TYPE_CHECKING:
    Ctx = Context[Any, Any, Any]
else:
    Ctx = Context
_PRINCIPAL = "cadre_principal"


class PendingApproval(BaseModel):
    approval_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    reason: str


class TaskOutcome(BaseModel):
    """Where a task stands: its answer or error once it ended, or the approval it waits for."""

    task_id: str
    conversation_id: str
    status: TaskStatus
    output: str | None = None
    error: str | None = None
    approval: PendingApproval | None = Field(
        None, description="Decide it with the `approve` tool (the client could not be asked)")


class Decision(BaseModel):
    """What the user is asked when a task's tool call needs approval (elicitation)."""

    approve: bool = Field(description="Let the tool call run")
    comment: str = Field("", description="Why (optional; the agent sees it)")


def mount_mcp(app: FastAPI) -> None:
    """Serve MCP at `/mcp` on `app`; the server and its sessions live in the app's lifespan."""
    gate = _Gate()

    @contextlib.asynccontextmanager
    async def lifetime() -> AsyncIterator[None]:
        # FastMCP reads its settings from the environment and a .env file: not on the loop.
        server = await asyncio.to_thread(_server)
        async with server.session_manager.run():
            gate.handle = server.session_manager.handle_request
            try:
                yield
            finally:
                gate.handle = None

    app.state.lifetimes.append(lifetime)
    # An ASGI app as the endpoint (not a request handler): the transport writes the response.
    app.router.routes.append(Route(PATH, gate, include_in_schema=False))


def _server() -> FastMCP:
    server = FastMCP(
        name="Cadre", instructions=_INSTRUCTIONS, streamable_http_path=PATH,
        # Bearer keys are not ambient browser credentials, so DNS rebinding gains nothing.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    _register(server)
    server.streamable_http_app()  # creates the session manager
    return server


_INSTRUCTIONS = (
    "Cadre runs multi-step tasks with tools (web search, Python, SQL, files, email). Call "
    "run_task with the task in plain words; it reports each step as progress and returns the "
    "answer. A risky step needs the user's approval: you are asked if your client supports "
    "elicitation, otherwise run_task returns the approval for the approve tool.")


class _Gate:
    """Bearer authentication and the request rate before the MCP transport, as on `/v1`. A
    session belongs to the user who opened it: another key presenting its id is told it does
    not exist."""

    def __init__(self, remembered: int = 10_000, idle_seconds: float = 30 * 60) -> None:
        self.handle: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
        self.owners: OrderedDict[str, str] = OrderedDict()
        self.remembered = remembered
        # When each session last sent a request: the sessions a user has open are those
        # active within the transport's idle timeout (after it, the SDK ends them).
        self.seen: dict[str, float] = {}
        self.idle_seconds = idle_seconds

    def _open_sessions(self, user_id: str, now: float) -> int:
        return sum(1 for session, owner in self.owners.items() if owner == user_id
                   and now - self.seen.get(session, 0.0) < self.idle_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["app"]
        headers = Headers(scope=scope)
        try:
            who = await admit(app.state, headers.get("authorization"))
            if self.handle is None:
                raise Problem("unavailable", 503, "the MCP server is not running in this "
                              "process (the app was started without its lifespan)")
            session = headers.get("mcp-session-id")
            now = time.monotonic()
            # A session this gate did not see open (another user's, or one forgotten after
            # 10,000 newer ones) is refused: the client starts a new one.
            if session is not None and self.owners.get(session) != who.user_id:
                raise Problem("not-found", 404, "no such MCP session: initialize a new one")
            limit = app.state.deps.settings.mcp_sessions_per_user
            if session is None and scope["method"] == "POST" and \
                    self._open_sessions(who.user_id, now) >= limit:
                raise Problem("rate-limited", 429, f"you have {limit} MCP sessions open "
                              "(CADRE_MCP_SESSIONS_PER_USER): end one (DELETE /mcp with its "
                              "mcp-session-id) or let an idle one time out",
                              headers={"Retry-After": "60"}, limit="mcp_sessions")
            if session is not None:
                self.seen[session] = now
        except Problem as problem:
            response = problem_response(problem.kind, problem.status, problem.detail,
                                        instance=PATH, headers=problem.headers, **problem.extra)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[_PRINCIPAL] = who

        if scope["method"] == "DELETE" and session is not None:
            self.owners.pop(session, None)  # the client ends its session
            self.seen.pop(session, None)

        async def remember(message: Message) -> None:
            # (The answer to a DELETE names the session it ended: nothing to remember.)
            if message["type"] == "http.response.start" and scope["method"] != "DELETE":
                for name, value in message.get("headers", []):
                    if name.lower() == b"mcp-session-id":
                        opened = value.decode()
                        self.owners[opened] = who.user_id
                        self.seen.setdefault(opened, time.monotonic())
                        while len(self.owners) > self.remembered:
                            forgotten, _ = self.owners.popitem(last=False)
                            self.seen.pop(forgotten, None)
            await send(message)

        await self.handle(scope, receive, remember)


# -- tools and resources -------------------------------------------------------------------------


def _register(server: FastMCP) -> None:
    read_only = ToolAnnotations(readOnlyHint=True, openWorldHint=False)

    @server.tool(annotations=ToolAnnotations(openWorldHint=True))
    async def run_task(input: str, ctx: Ctx, conversation_id: str | None = None,
                       ) -> TaskOutcome:
        """Run a task in plain words ("analyse sales.csv and email me a summary") and wait for
        its answer, with a progress notification per step. Pass `conversation_id` to continue
        an earlier task's conversation."""
        service, who = _caller(ctx)
        _admit(ctx)  # before the task exists: a full process refuses, it does not orphan it
        task = await _call(service.submit(who, input, conversation_id=conversation_id))
        return await _follow(ctx, str(task["id"]))

    @server.tool(annotations=read_only)
    async def get_task(task_id: str, ctx: Ctx) -> TaskOutcome:
        """A task's status and, once it ended, its answer or error."""
        service, who = _caller(ctx)
        return _outcome(await _call(service.get(who, task_id)))

    @server.tool(annotations=read_only)
    async def list_tasks(ctx: Ctx, status: TaskStatus | None = None,
                         limit: int = Field(20, ge=1, le=100),
                         cursor: str | None = None) -> dict[str, Any]:
        """Your tasks, newest first; pass `next_cursor` back as `cursor` for more."""
        service, who = _caller(ctx)
        rows, next_cursor = await _call(service.list(who, status=status, limit=limit,
                                                     cursor=cursor))
        return {"items": [{"task_id": str(r["id"]), "status": r["status"], "input": r["input"],
                           "created_at": r["created_at"].isoformat()} for r in rows],
                "next_cursor": next_cursor}

    @server.tool(annotations=ToolAnnotations(destructiveHint=True, idempotentHint=True,
                                             openWorldHint=False))
    async def cancel_task(task_id: str, ctx: Ctx) -> TaskOutcome:
        """Cancel a task: a queued or waiting one ends now, a running one at its next step."""
        service, who = _caller(ctx)
        await _call(service.cancel(who, task_id))
        return _outcome(await _call(service.get(who, task_id)))

    @server.tool(annotations=ToolAnnotations(openWorldHint=True))
    async def approve(task_id: str, approval_id: str, approved: bool, ctx: Ctx,
                      comment: str = "") -> TaskOutcome:
        """Approve (or, with approved=false, reject) a held tool call, then follow the task to
        its end or its next approval, like run_task."""
        service, who = _caller(ctx)
        _admit(ctx)
        streams: StreamHub = _request(ctx).app.state.streams
        await _call(service.owned(who, task_id))
        # From the stream's end now: what happened before the decision is not progress.
        after = await streams.events.last_id(task_id)
        await _call(service.decide(who, task_id, approval_id, ApprovalDecision(
            decision="approve" if approved else "reject", comment=comment,
            approval_id=approval_id)))
        return await _follow(ctx, task_id, after)

    @server.resource("cadre://tasks/{task_id}/transcript", mime_type="text/markdown",
                     description="The task's steps, tool calls, approvals and answer, redacted")
    async def transcript(task_id: str, ctx: Ctx) -> str:
        service, who = _caller(ctx)
        task = await _read(service.owned(who, task_id))
        conversation = await load_conversation(service.db, str(task["conversation_id"]))
        if conversation is None:
            raise ResourceError(f"task {task_id} not found")
        return await render_markdown(conversation, str(task["id"]))

    @server.resource("cadre://tasks/{task_id}/artifacts", mime_type="application/json",
                     description="The files the task wrote: name, type, size and resource URI")
    async def artifacts(task_id: str, ctx: Ctx) -> list[dict[str, Any]]:
        service, who = _caller(ctx)
        await _read(service.owned(who, task_id))
        return [{**a.to_json(), "uri": f"cadre://tasks/{task_id}/artifacts/{quote(a.name, '')}"}
                for a in await _artifacts(ctx).list(task_id)]

    @server.resource("cadre://tasks/{task_id}/artifacts/{name}",
                     mime_type="application/octet-stream",
                     description="One file the task wrote (its name URL-encoded); its real "
                                 "type is in the task's artifact list")
    async def artifact(task_id: str, name: str, ctx: Ctx) -> bytes:
        service, who = _caller(ctx)
        await _read(service.owned(who, task_id))
        store = _artifacts(ctx)
        found = await store.find(task_id, unquote(name))
        if found is None:
            raise ResourceError(f"task {task_id} has no artifact named {unquote(name)!r}")
        return await store.read(found)


def _request(ctx: Ctx) -> Request:
    return cast(Request, ctx.request_context.request)


def _caller(ctx: Ctx) -> tuple[TaskService, Principal]:
    request = _request(ctx)
    return request.app.state.service, request.scope["state"][_PRINCIPAL]


def _artifacts(ctx: Ctx) -> Artifacts:
    return cast(Artifacts, _request(ctx).app.state.artifacts)


async def _call(work: Any, error: type[Exception] = ToolError) -> Any:
    """A service call, its problem (404, 409, 429...) told to the client as `error` (a tool
    error, or a resource error for a resource read); anything else only as "internal error"
    (the details go to the log)."""
    try:
        return await work
    except Problem as problem:
        raise error(problem.detail) from None
    except Exception:
        log.exception("MCP request failed")
        raise error("internal error; the server logged it") from None


async def _read(work: Any) -> Any:
    return await _call(work, ResourceError)


def _admit(ctx: Ctx) -> None:
    try:
        _request(ctx).app.state.streams.admit()
    except StreamsFull as full:
        raise ToolError(str(full)) from None


def _outcome(task: dict[str, Any], approval: ApprovalRequiredData | None = None) -> TaskOutcome:
    error = task.get("error") or {}
    return TaskOutcome(
        task_id=str(task["id"]), conversation_id=str(task["conversation_id"]),
        status=task["status"], output=task.get("final_output"),
        error=str(error.get("message", "")) or None if task["status"] != TaskStatus.SUCCEEDED
        else None,
        approval=PendingApproval(approval_id=approval.approval_id, tool=approval.tool,
                                 arguments=approval.arguments, reason=approval.reason)
        if approval is not None else None)


async def _follow(ctx: Ctx, task_id: str, after: str | None = None) -> TaskOutcome:
    """Follow the task's events (after `after`) to its end, a progress notification per step.
    An approval it waits for is asked through elicitation when the client can answer;
    otherwise (or when the user dismisses the question) the outcome carries it, pending."""
    service, who = _caller(ctx)
    streams: StreamHub = _request(ctx).app.state.streams
    task = await _call(service.get(who, task_id))
    if task["status"] in TERMINAL:
        return _outcome(task)  # ended already (its stream may have expired): nothing to follow
    reported = 0
    try:
        # As long as an SSE response may last: then the client asks again (get_task).
        async with asyncio.timeout(_request(ctx).app.state.deps.settings.sse_max_seconds):
            while True:
                held = await _until_held(ctx, streams, task_id, after, reported)
                if held is None:
                    return _outcome(await _call(service.get(who, task_id)))
                after, reported, event = held
                task = await _call(service.get(who, task_id))
                if task["status"] in TERMINAL:
                    return _outcome(task)
                if not any(a["id"] == event.approval_id and a["status"] == "PENDING"
                           for a in task["approvals"]):
                    continue  # decided already (an earlier event, or elsewhere): follow on
                answer = await _ask(ctx, event)
                if answer is None:
                    return _outcome(task, event)
                with contextlib.suppress(Problem):  # decided elsewhere meanwhile: follow on
                    await service.decide(who, task_id, event.approval_id, answer)
    except TimeoutError:
        return _outcome(await _call(service.get(who, task_id)))


async def _until_held(ctx: Ctx, streams: StreamHub, task_id: str, after: str | None,
                      reported: int) -> tuple[str | None, int, ApprovalRequiredData] | None:
    """Report the task's steps after `after` until it ends (None) or asks for an approval:
    then where it got to, the progress count, and the approval."""
    following = cast(AsyncGenerator[list[Event] | None], streams.batches(task_id, after))
    async with contextlib.aclosing(following) as batches:
        async for batch in batches:
            for event in batch or ():
                after = event.id or after
                if (message := _progress(event.data)) is not None:
                    reported += 1
                    await ctx.report_progress(reported, message=message)
                if isinstance(event.data, ApprovalRequiredData):
                    return after, reported, event.data
    return None


async def _ask(ctx: Ctx, held: ApprovalRequiredData) -> ApprovalDecision | None:
    """The user's decision through elicitation; None when the client cannot ask or the user
    dismissed the question (the approval stays pending)."""
    if not ctx.session.check_client_capability(
            ClientCapabilities(elicitation=ElicitationCapability())):
        return None
    result = await ctx.elicit(
        f"Cadre wants to run {held.tool} with {held.arguments}. {held.reason} Allow it?",
        schema=Decision)
    decision: Literal["approve", "reject"]
    if result.action == "accept":
        decision, comment = ("approve" if result.data.approve else "reject"), result.data.comment
    elif result.action == "decline":
        decision, comment = "reject", "declined in the MCP client"
    else:
        return None
    return ApprovalDecision(decision=decision, comment=comment, approval_id=held.approval_id)


def _progress(data: AnyEventData) -> str | None:
    """One line for a progress notification; None for events that are not a step."""
    match data:
        case StatusData():
            return f"status: {data.status.lower()}"
        case PlanData():
            return ("revised plan: " if data.revised else "plan: ") + "; ".join(
                f"{item.number}. {item.description}" for item in data.plan)
        case ThoughtData():
            return _short(data.text)
        case ToolCallData():
            return f"calling {data.name}"
        case ToolResultData():
            return f"{data.name}: " + ("done" if data.ok else _short(data.content))
        case ModelCallData():
            return f"model call ({data.node}): {data.tokens_in + data.tokens_out} tokens"
        case ApprovalRequiredData():
            return f"waiting for approval to run {data.tool}"
        case FinalData():
            return "answered"
        case CacheData():
            return cache_text(data)
        case AgentData():
            return agent_text(data)
        case ErrorData():
            return f"{data.type}: {_short(data.message)}"
        case TokenData():
            return None
    return None


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"
