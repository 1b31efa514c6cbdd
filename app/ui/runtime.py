"""What the chat UI's handlers reach: the services of the API app the UI is mounted on, and
the users it knows.

Chainlit keeps its callbacks, sessions and data layer in process-wide state, so the handlers
cannot be handed a dependencies object; they look up the one app the UI was last mounted on
(`bind`). Everything behind it is the API's own: the same pools, the same `TaskService`."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from fastapi import FastAPI

from app.auth import Principal
from app.events import EventLog
from app.files import FileStore
from app.keys import hash_key
from app.service import TaskService
from app.settings import Settings
from app.share import ShareLinks
from app.streams import StreamHub
from tools.artifacts import Artifacts

# Requests from the UI are not made with an API key; this stands in for one where a principal
# needs it (request-rate counting is per key and does not apply to the UI).
UI_KEY_ID = "chat-ui"


@dataclass(frozen=True, kw_only=True)
class UIServices:
    app: FastAPI
    settings: Settings

    @property
    def db(self) -> asyncpg.Pool:
        return self.app.state.deps.db

    @property
    def service(self) -> TaskService:
        return self.app.state.service  # type: ignore[no-any-return]

    @property
    def events(self) -> EventLog:
        return self.app.state.events  # type: ignore[no-any-return]

    @property
    def streams(self) -> StreamHub:
        return self.app.state.streams  # type: ignore[no-any-return]

    @property
    def files(self) -> FileStore:
        return self.app.state.files  # type: ignore[no-any-return]

    @property
    def artifacts(self) -> Artifacts:
        return self.app.state.artifacts  # type: ignore[no-any-return]

    @property
    def shares(self) -> ShareLinks:
        return ShareLinks(self.db)

    async def principal(self, email: str) -> Principal | None:
        """The user with this email, if they may still use Cadre (an unrevoked API key)."""
        row = await self.db.fetchrow(
            "SELECT id, email, role FROM users u WHERE email = $1 AND EXISTS "
            "(SELECT 1 FROM api_keys k WHERE k.user_id = u.id AND k.revoked_at IS NULL)", email)
        return _principal(row) if row else None

    async def login(self, email: str, api_key: str) -> Principal | None:
        """Password login: the email and one of that user's unrevoked API keys."""
        row = await self.db.fetchrow(
            "SELECT u.id, u.email, u.role FROM api_keys k JOIN users u ON u.id = k.user_id "
            "WHERE k.key_hash = $1 AND k.revoked_at IS NULL", hash_key(api_key.strip()))
        if row is None or row["email"].lower() != email.strip().lower():
            return None
        return _principal(row)


_bound: list[UIServices] = []


def bind(app: FastAPI, settings: Settings) -> None:
    """Point the UI's handlers at this app (the latest mount wins)."""
    _bound[:] = [UIServices(app=app, settings=settings)]


def services() -> UIServices:
    if not _bound:
        raise RuntimeError("the chat UI is not mounted on an app")
    return _bound[0]


def _principal(row: asyncpg.Record) -> Principal:
    return Principal(user_id=str(row["id"]), email=row["email"], role=row["role"],
                     key_id=UI_KEY_ID)
