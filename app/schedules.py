"""Schedules under `/v1/schedules`: a task to run on a cron expression in a time zone,
owned by the key's user and fired by the workers (`app/scheduler.py`). Each schedule runs in
its own conversation (the one given, or one made for it), so its runs come one after another
and see each other's results."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.routes import JsonBody, Who
from app.schemas import problem_responses
from app.store.schedules import ScheduleStore

router = APIRouter(prefix="/v1")


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(max_length=120, description="Five fields, e.g. `0 9 * * MON` (9:00 "
                                                   "every Monday); `@daily` and friends work")
    timezone: str = Field("UTC", max_length=64, description="An IANA zone: Europe/Paris")
    input: str = Field(min_length=1, max_length=20_000, description="The task, in plain words")
    conversation_id: uuid.UUID | None = Field(
        None, description="Run in this conversation of yours; omitted, one is made")
    files: list[uuid.UUID] = Field(default_factory=list, max_length=10,
                                   description="Uploaded files every run gets")
    missed: Literal["skip", "catch_up"] = Field(
        "skip", description="Occurrences missed while no worker ran: skip them, or run once")
    multitask_strategy: Literal["enqueue", "reject", "interrupt"] = Field(
        "enqueue", description="When the previous run is still going: wait behind it, skip "
                               "this one (reject), or cancel it (interrupt)")


class Schedule(BaseModel):
    id: str
    cron: str
    timezone: str
    input: str
    conversation_id: str
    files: list[str]
    missed: str
    multitask_strategy: str
    paused: bool
    next_run_at: datetime = Field(description="The next occurrence (UTC)")
    last_run: ScheduleRun | None = None
    created_at: datetime


class ScheduleRun(BaseModel):
    occurrence_at: datetime
    outcome: Literal["submitted", "skipped", "refused"] = Field(
        description="submitted: a task was made; skipped: missed while no worker ran; "
                    "refused: a quota, a busy conversation under reject, a missing file")
    task_id: str | None
    detail: str | None
    created_at: datetime


class ScheduleList(BaseModel):
    items: list[Schedule]


class ScheduleRuns(BaseModel):
    items: list[ScheduleRun]


Schedule.model_rebuild()


def _store(request: Request) -> ScheduleStore:
    return ScheduleStore(request.app.state.deps.db)


@router.post("/schedules", status_code=201, response_model=Schedule, dependencies=[JsonBody],
             responses=problem_responses(404, 409, 413, 415))
async def create_schedule(body: ScheduleCreate, request: Request, who: Who) -> dict[str, Any]:
    """Run `input` on `cron` in `timezone`, as your task, from the next occurrence on."""
    return await _store(request).create(
        who, cron=body.cron, timezone=body.timezone, text=body.input,
        conversation_id=str(body.conversation_id) if body.conversation_id else None,
        files=[str(f) for f in body.files], missed=body.missed,
        strategy=body.multitask_strategy)


@router.get("/schedules", response_model=ScheduleList, responses=problem_responses())
async def list_schedules(request: Request, who: Who) -> dict[str, Any]:
    """Your schedules, newest first, each with its last run."""
    return {"items": await _store(request).list(who)}


@router.get("/schedules/{schedule_id}", response_model=Schedule, responses=problem_responses(404))
async def get_schedule(schedule_id: str, request: Request, who: Who) -> dict[str, Any]:
    """One schedule and its last run."""
    return await _store(request).owned(who, schedule_id)


@router.get("/schedules/{schedule_id}/runs", response_model=ScheduleRuns,
            responses=problem_responses(404))
async def schedule_runs(schedule_id: str, request: Request, who: Who,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    """Its fired occurrences, newest first: the task each made, or why none was."""
    return {"items": await _store(request).runs(who, schedule_id, limit)}


@router.post("/schedules/{schedule_id}/pause", response_model=Schedule,
             responses=problem_responses(404))
async def pause_schedule(schedule_id: str, request: Request, who: Who) -> dict[str, Any]:
    """Stop firing it until resumed."""
    return await _store(request).set_paused(who, schedule_id, True)


@router.post("/schedules/{schedule_id}/resume", response_model=Schedule,
             responses=problem_responses(404))
async def resume_schedule(schedule_id: str, request: Request, who: Who) -> dict[str, Any]:
    """Fire it again, from its next occurrence after now (what fell due while paused is not
    run)."""
    return await _store(request).set_paused(who, schedule_id, False)


@router.delete("/schedules/{schedule_id}", status_code=204, response_class=Response,
               responses=problem_responses(404))
async def delete_schedule(schedule_id: str, request: Request, who: Who) -> Response:
    """Delete it; tasks it already made are kept."""
    await _store(request).delete(who, schedule_id)
    return Response(status_code=204)
