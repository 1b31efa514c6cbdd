"""Long-term memories under `/v1/memories`: what the agent remembered for the key's user
(`remember`), listed newest first or searched by meaning, and deleted one by one or all at
once. Only ever the caller's own: another user's memory is a 404, like a missing one.

With memory turned off (CADRE_MEMORY=false) the agent neither remembers nor recalls; the
list still shows what was stored before (with `enabled: false`) and deleting still works,
but a search (`q`) is a 409 problem saying memory is off."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from pydantic import AfterValidator

from app.problems import Problem
from app.routes import Who
from app.schemas import MemoriesDeleted, MemoryList, problem_responses
from guardrails.screening import control_characters
from tools.builtin.memory import MAX_PER_USER, MemoryStore
from tools.embeddings import Embedder, EmbeddingUnavailable

router = APIRouter(prefix="/v1")


def mount_memories(app: FastAPI) -> None:
    """The routes; `q` searches with the app's embeddings client (`app.state.embedder`)."""
    app.include_router(router)


def _plain(value: str | None) -> str | None:
    if value is not None and (found := control_characters(value)):
        raise ValueError(f"contains control or invisible characters ({', '.join(found[:5])})")
    if value is not None and not value.strip():
        raise ValueError("give a few words to search for")
    return value


SearchText = Annotated[str | None, AfterValidator(_plain)]


def _store(request: Request) -> MemoryStore:
    embedder: Embedder | None = request.app.state.embedder if _enabled(request) else None
    return MemoryStore(request.app.state.deps.db, embedder)


def _enabled(request: Request) -> bool:
    return bool(request.app.state.deps.settings.memory)


@router.get("/memories", response_model=MemoryList, responses=problem_responses(409))
async def list_memories(
        request: Request, who: Who,
        q: Annotated[SearchText, Query(max_length=1000, description=(
            "Search by meaning instead: the closest memories first, each with its "
            "`similarity` (409 when memory is turned off)"))] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PER_USER)] = 100) -> dict[str, Any]:
    """Your memories, newest first: what the agent remembered, the untrusted sources it was
    learned from, and the task that remembered it."""
    store = _store(request)
    if q is None:
        return {"enabled": _enabled(request), "items": await store.list(who.user_id, limit=limit)}
    if not _enabled(request):
        raise Problem("conflict", 409, "long-term memory is turned off on this deployment "
                      "(CADRE_MEMORY=false): memories are not searched; list them without `q`, "
                      "and delete them with DELETE /v1/memories")
    if store.embedder is None:
        raise Problem("unavailable", 503, "searching memories needs an embeddings endpoint, "
                      "and none is configured (CADRE_EMBEDDING_BASE_URL or "
                      "CADRE_EMBEDDING_MODEL); list them without `q`")
    try:
        items = await store.search(who.user_id, q, limit=limit)
    except EmbeddingUnavailable as exc:
        raise Problem("unavailable", 503, f"memories cannot be searched right now: {exc}",
                      headers={"Retry-After": "5"}) from None
    return {"enabled": True, "items": items}


@router.delete("/memories/{memory_id}", status_code=204, response_class=Response,
               responses=problem_responses(404))
async def delete_memory(memory_id: uuid.UUID, request: Request, who: Who) -> Response:
    """Delete one of your memories: the agent no longer recalls it."""
    if not await _store(request).delete(who.user_id, str(memory_id)):
        raise Problem("not-found", 404, f"you have no memory {memory_id}")
    return Response(status_code=204)


@router.delete("/memories", response_model=MemoriesDeleted, responses=problem_responses())
async def delete_memories(request: Request, who: Who) -> dict[str, Any]:
    """Delete all your memories."""
    return {"deleted": await _store(request).delete_all(who.user_id)}
