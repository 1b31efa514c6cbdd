"""The A2A endpoints on the app: the card (public) and JSON-RPC behind bearer API keys, each
request counted against its key's rate as on `/v1`; and, for the app's lifetime, the pusher."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from a2a.server.context import ServerCallContext
from a2a.server.routes import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.a2a.card import CARD_PATH, RPC_PATH, card_endpoint
from app.a2a.handler import BASE_URL, PRINCIPAL, CadreHandler
from app.a2a.push import Pusher
from app.problems import Problem
from app.routes import admit


def mount_a2a(app: FastAPI) -> None:
    """Serve A2A on `app`: `GET /.well-known/agent-card.json` and `POST /a2a`."""
    dispatcher = JsonRpcDispatcher(CadreHandler(app.state), context_builder=_Context(),
                                   enable_v0_3_compat=True)

    async def rpc(request: Request) -> Response:
        # Read first: a body over the limit is the API's 413, not a JSON-RPC parse error.
        body = await request.body()
        try:
            who = await admit(app.state, request.headers.get("authorization"))
        except Problem as problem:
            return _refused(problem, body)
        request.scope.setdefault("state", {})[PRINCIPAL] = who
        return await dispatcher.handle_requests(request)

    @contextlib.asynccontextmanager
    async def lifetime() -> AsyncIterator[None]:
        state = app.state
        pusher = Pusher(db=state.deps.db, streams=state.streams, artifacts=state.artifacts,
                        allow_private=state.service.webhook_allow_private,
                        timeout=state.deps.settings.webhook_timeout)
        async with pusher.running():
            state.a2a_pusher = pusher
            try:
                yield
            finally:
                state.a2a_pusher = None

    app.state.lifetimes.append(lifetime)
    app.add_route(CARD_PATH, card_endpoint, methods=["GET"], include_in_schema=False)
    app.add_route(RPC_PATH, rpc, methods=["POST"], include_in_schema=False)


class _Context(DefaultServerCallContextBuilder):
    """The SDK's call context, with the caller's principal and the base URL links start with."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[PRINCIPAL] = request.scope["state"][PRINCIPAL]
        context.state[BASE_URL] = str(request.base_url).rstrip("/")
        return context


def _refused(problem: Problem, body: bytes) -> JSONResponse:
    """A missing or revoked key (401) or the rate limit (429): the HTTP status a client's
    transport acts on, and a JSON-RPC error saying why."""
    try:
        sent = json.loads(body)
        request_id = sent.get("id") if isinstance(sent, dict) else None
    except ValueError:
        request_id = None
    if not isinstance(request_id, str | int) or isinstance(request_id, bool):
        request_id = None
    return JSONResponse(
        {"jsonrpc": "2.0", "id": request_id, "error": {
            "code": -32600, "message": problem.detail,
            "data": {"problem": problem.kind, "status": problem.status}}},
        status_code=problem.status, headers=problem.headers)
