"""Share links: the owner of a conversation makes a link that shows anyone who has it a
read-only transcript, with secrets and personal data redacted; revoking the link makes it a
404. The token is shown once and stored only as a digest."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse

from app.auth import Principal
from app.history import load_conversation
from app.keys import hash_key
from app.problems import Problem
from app.routes import Who
from app.schemas import ShareCreated, problem_responses
from app.transcript import not_found_page, render_transcript

TOKEN_PREFIX = "shr_"
# The page is self-contained: no scripts, no outside requests, not indexed, not cached.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True, kw_only=True)
class ShareLink:
    id: str
    conversation_id: str
    created_at: datetime
    token: str  # only right after creation; never stored

    def path(self) -> str:
        return f"/share/{self.token}"


class ShareLinks:
    """Creating, revoking and resolving share links; only a conversation's owner may create
    or revoke its links (anyone else gets the same 404 as for a missing conversation)."""

    def __init__(self, db: asyncpg.Pool) -> None:
        self.db = db

    async def create(self, who: Principal, conversation_id: str) -> ShareLink:
        await self._owned(who, conversation_id)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = await self.db.fetchrow(
            "INSERT INTO share_links (token_hash, conversation_id, created_by) "
            "VALUES ($1, $2::uuid, $3::uuid) RETURNING id, created_at",
            hash_key(token), conversation_id, who.user_id)
        return ShareLink(id=str(row["id"]), conversation_id=conversation_id,
                         created_at=row["created_at"], token=token)

    async def revoke(self, who: Principal, conversation_id: str, share_id: str) -> None:
        """Revoke one link; revoking a revoked link again is harmless."""
        await self._owned(who, conversation_id)
        found = await self.db.fetchval(
            "UPDATE share_links SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE id = $1 AND conversation_id = $2::uuid RETURNING id",
            _uuid(share_id, "share link"), conversation_id)
        if found is None:
            raise Problem("not-found", 404, f"share link {share_id} not found")

    async def conversation_for(self, token: str) -> str | None:
        """The conversation an unrevoked link shows, or None."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        conversation = await self.db.fetchval(
            "SELECT conversation_id FROM share_links WHERE token_hash = $1 AND revoked_at IS NULL",
            hash_key(token))
        return str(conversation) if conversation else None

    async def _owned(self, who: Principal, conversation_id: str) -> None:
        owned = await self.db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND user_id = $2::uuid)",
            _uuid(conversation_id, "conversation"), who.user_id)
        if not owned:
            raise Problem("not-found", 404, f"conversation {conversation_id} not found")


async def shared_page(links: ShareLinks, token: str) -> HTMLResponse:
    """The redacted transcript a link shows, or a 404 page for an unknown or revoked link."""
    conversation_id = await links.conversation_for(token)
    conversation = await load_conversation(links.db, conversation_id) if conversation_id else None
    if conversation is None:
        return HTMLResponse(not_found_page(), status_code=404, headers=_PAGE_HEADERS)
    return HTMLResponse(await render_transcript(conversation), headers=_PAGE_HEADERS)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Problem("not-found", 404, f"{what} {value} not found") from None


def _links(request: Request) -> ShareLinks:
    return ShareLinks(request.app.state.deps.db)


Links = Annotated[ShareLinks, Depends(_links)]
router = APIRouter()


@router.post("/v1/conversations/{conversation_id}/share", status_code=201,
             response_model=ShareCreated, responses=problem_responses(404))
async def create_share(conversation_id: str, request: Request, who: Who,
                       links: Links) -> dict[str, Any]:
    """Make a read-only link to this conversation's transcript, with secrets and personal
    data redacted. The token is shown once; anyone who has the link can read it until it is
    revoked."""
    link = await links.create(who, conversation_id)
    base = str(request.base_url).rstrip("/")
    return {"id": link.id, "conversation_id": link.conversation_id, "token": link.token,
            "url": base + link.path(), "created_at": link.created_at}


@router.delete("/v1/conversations/{conversation_id}/share/{share_id}", status_code=204,
               response_class=Response, responses=problem_responses(404))
async def revoke_share(conversation_id: str, share_id: str, who: Who, links: Links) -> Response:
    """Revoke a share link: from now on it answers 404."""
    await links.revoke(who, conversation_id, share_id)
    return Response(status_code=204)


@router.get("/share/{token}", response_class=HTMLResponse, include_in_schema=False)
async def shared(token: str, links: Links) -> HTMLResponse:
    return await shared_page(links, token)
