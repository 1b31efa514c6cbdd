"""Artifacts for the browser: the API serves them to bearer keys, but an `<img>` in the chat
sends only cookies, so the UI serves the owner's artifacts on the strength of its own login
cookie (the JWT Chainlit issues at sign-in, checked against the database on every request)."""

from __future__ import annotations

from urllib.parse import quote

import jwt
from botocore.exceptions import BotoCoreError, ClientError
from chainlit.auth.cookie import get_token_from_cookies
from chainlit.auth.jwt import decode_jwt
from fastapi import APIRouter, Request, Response

from app.problems import Problem
from app.ui.runtime import services

# Shown inline; anything else (an HTML or SVG file the agent wrote could carry script) is a
# download, and sandboxed even if a browser tried to render it.
_INLINE = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

router = APIRouter(include_in_schema=False)


@router.get("/ui/artifacts/{task_id}/{name:path}")
async def artifact(task_id: str, name: str, request: Request) -> Response:
    ui = services()
    token = get_token_from_cookies(request.cookies)
    try:
        user = decode_jwt(token) if token else None
    except (jwt.PyJWTError, TypeError, ValueError):  # forged, expired or malformed
        user = None
    who = await ui.principal(user.identifier) if user else None
    if who is None:
        raise Problem("unauthorized", 401, "sign in to the chat UI first")
    await ui.service.owned(who, task_id)
    found = await ui.artifacts.find(task_id, name)
    if found is None:
        raise Problem("not-found", 404, f"task {task_id} has no artifact named {name!r}")
    try:
        data = await ui.artifacts.read(found)
    except (OSError, BotoCoreError, ClientError) as exc:
        raise Problem("unavailable", 503, f"the artifact store could not be read: "
                                          f"{type(exc).__name__}") from None
    filename = quote(name.rpartition("/")[2])
    inline = found.content_type in _INLINE
    return Response(data, media_type=found.content_type, headers={
        "Content-Disposition": f"{'inline' if inline else 'attachment'}; "
                               f"filename*=UTF-8''{filename}",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "X-Content-Type-Options": "nosniff",
        # The URL carries the content's digest: a new version is a new URL.
        "Cache-Control": "private, max-age=86400",
    })
