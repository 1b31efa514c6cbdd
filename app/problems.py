"""RFC 9457 problem details: every API error is `application/problem+json` with a stable
`type` per kind of error."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrails.limits import LimitExceeded

log = logging.getLogger("cadre.api")

TYPE_BASE = "https://cadre.dev/problems/"
MEDIA_TYPE = "application/problem+json"

_TITLES = {
    "invalid-request": "The request is not valid",
    "unauthorized": "Missing or invalid API key",
    "forbidden": "Not allowed",
    "not-found": "Not found",
    "conflict": "Conflict with the current state",
    "payload-too-large": "The request body is too large",
    "unsupported-media-type": "This media type is not accepted",
    "rate-limited": "Too many requests",
    "unavailable": "A backing service is unavailable",
    "internal": "Internal error",
}


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(self, kind: str, status: int, detail: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.kind, self.status, self.detail = kind, status, detail
        self.headers = headers or {}
        self.extra = extra


def too_many_requests(exc: LimitExceeded) -> Problem:
    """A 429 for a rate limit or quota, with `Retry-After` and which limit it was."""
    return Problem("rate-limited", 429, exc.detail,
                   headers={"Retry-After": str(exc.retry_after)}, limit=exc.limit)


def problem_response(kind: str, status: int, detail: str, *, instance: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": TYPE_BASE + kind, "title": _TITLES.get(kind, kind), "status": status,
            "detail": detail, **({"instance": instance} if instance else {}), **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


_HTTP_KINDS = {400: "invalid-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
               405: "invalid-request", 409: "conflict", 413: "payload-too-large",
               422: "invalid-request", 429: "rate-limited", 503: "unavailable"}


def install(app: FastAPI) -> None:
    """Route every error through the problem format."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.kind, exc.status, exc.detail, instance=request.url.path,
                                headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return problem_response("invalid-request", 422, detail, instance=request.url.path,
                                errors=errors)

    @app.exception_handler(RedisError)
    async def _redis(request: Request, exc: RedisError) -> JSONResponse:
        # Redis down, or every pooled connection busy for REDIS_WAIT_SECONDS.
        log.warning("%s %s: Redis: %s", request.method, request.url.path, exc)
        return problem_response("unavailable", 503, "the event and limit store (Redis) is "
                                "unavailable or busy; retry shortly", instance=request.url.path,
                                headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Logged in full here; the client gets no stack trace, only where to look.
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response("internal", 500, "the server failed to answer this request; "
                                "the error is in its log", instance=request.url.path)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        kind = _HTTP_KINDS.get(exc.status_code, "internal" if exc.status_code >= 500
                               else "invalid-request")
        return problem_response(kind, exc.status_code, str(exc.detail), instance=request.url.path,
                                headers=dict(exc.headers or {}))


class BodyLimit:
    """Refuses request bodies over `limit` bytes with a 413 problem, whether announced by
    Content-Length or sent chunked (counted as it arrives). Paths in `larger` get their own
    limit (uploads)."""

    def __init__(self, app: ASGIApp, limit: int, larger: dict[str, int] | None = None) -> None:
        self.app, self.default, self.larger = app, limit, larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.default)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(scope, receive, send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _refuse(scope, receive, send, limit)


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = problem_response("payload-too-large", 413, f"the request body is over {limit} bytes",
                                instance=scope.get("path"))
    await response(scope, receive, send)


class _TooLarge(Exception):
    pass
