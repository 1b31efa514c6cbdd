"""The HTTP application. In this foundation: health and the OpenAPI docs; the task endpoints
arrive with the task service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.health import service_checks
from app.settings import Settings, load_settings


class HealthCheck(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    status: str
    checks: dict[str, HealthCheck]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app; `cadre api` serves it with uvicorn."""
    resolved = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = resolved
        yield

    app = FastAPI(title="Cadre", version="0.1.0", lifespan=lifespan)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """Postgres, Redis and the SQS queue, each reachable and ready; 503 if any is not."""
        checks = await service_checks(resolved)
        body = Health(
            status="ok" if all(c.ok for c in checks) else "unavailable",
            checks={c.name: HealthCheck(ok=c.ok, detail=c.detail) for c in checks},
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)

    return app
