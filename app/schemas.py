"""The API's response bodies, as models: what the OpenAPI document promises and FastAPI checks
on the way out, so generated clients get real types. Error bodies are `ProblemDetail`
(RFC 9457, `application/problem+json`); `problem_responses` lists them per operation."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from graph.status import TaskStatus
from graph.steps import Step


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class ProblemDetail(BaseModel):
    """An error (RFC 9457). `type` is stable per kind of error; `errors` lists invalid fields
    (422); `limit` names the limit that was hit (429)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["https://cadre.dev/problems/not-found"])
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None
    limit: str | None = None


_PROBLEMS = {
    400: "The request is malformed: a body that is not JSON, a bad Last-Event-ID",
    401: "Missing, unknown or revoked API key",
    404: "No such resource for this user (another user's is indistinguishable from a missing one)",
    409: "Conflicts with the current state",
    413: "The request body is too large",
    415: "This media type is not accepted: a file that is not text or PDF, a body not sent as JSON",
    422: "The request body or parameters are not valid",
    429: "A rate limit or quota was hit; see Retry-After",
    503: "A backing service is unavailable or at its limit; see Retry-After",
}
# Every authenticated operation can answer these.
_ALWAYS = (400, 401, 422, 429, 503)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses of an operation (400, 401, 422, 429 and 503 always), for `responses=`.
    `app.api` moves them to `application/problem+json` in the OpenAPI document."""
    return {code: {"model": ProblemDetail, "description": _PROBLEMS[code]}
            for code in sorted({*_ALWAYS, *codes})}


class TaskLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self", description="This task")
    stream: str = Field(description="Server-Sent Events of its steps")
    ws: str = Field(description="The same events over a WebSocket, with commands")
    trace: str | None = Field(None, description="The task's trace in the trace viewer "
                                                "(when CADRE_TRACE_URL is set)")


class TaskAccepted(BaseModel):
    id: uuid.UUID
    status: TaskStatus
    conversation_id: uuid.UUID
    links: TaskLinks


class TaskError(BaseModel):
    """Why a task failed or was cancelled."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["budget_exceeded"])
    message: str = ""


class CachedFrom(BaseModel):
    task_id: uuid.UUID
    at: datetime
    similarity: float


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    tokens_in: int = 0
    tokens_out: int = 0
    model_calls: int = 0
    agents: dict[str, dict[str, int]] | None = Field(
        None, description="A team task's usage per agent path (the manager's own and each "
                          "worker agent's); the fields above are the team's total")


class Task(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    status: TaskStatus
    input: str
    final_output: str | None
    error: TaskError | None
    usage: Usage
    options: dict[str, Any] = Field(description="max_iterations, token_budget, and flags "
                                                "the input screen raised")
    cached_from: CachedFrom | None = Field(
        None, description="Answered from the semantic task cache: the earlier task whose "
                          "answer this is, when it answered, and how alike the two requests are")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TaskPage(BaseModel):
    items: list[Task]
    next_cursor: str | None = Field(description="Pass back as `cursor` for the next page")


class Approval(BaseModel):
    id: uuid.UUID
    task_id: uuid.UUID
    tool_call_id: str
    agent: str = Field("cadre", description="Which agent asks: a team's worker by its path "
                                            "(manager/analyst#1), whose call id it prefixes")
    tool: str
    arguments: Any
    risk: str
    reason: str | None
    status: Literal["PENDING", "APPROVED", "REJECTED"]
    comment: str | None
    created_at: datetime
    decided_at: datetime | None


class TaskDetail(Task):
    steps: list[Step] = Field(description="The run's typed record, one entry per step "
                                          "(`kind` tells which)")
    approvals: list[Approval]
    links: TaskLinks


class UploadedFile(BaseModel):
    id: uuid.UUID
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    created_at: datetime


class ArtifactInfo(BaseModel):
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    url: str


class ArtifactList(BaseModel):
    items: list[ArtifactInfo]


class ShareCreated(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    token: str = Field(description="Shown once; only its digest is stored")
    url: str
    created_at: datetime


class WebhookSettings(BaseModel):
    url: str | None = Field(description="Where your tasks' events go when a task names no "
                                        "webhook_url of its own")
    has_secret: bool = Field(description="Whether you have a signing secret (without one no "
                                         "webhook is sent)")
    secret_created_at: datetime | None


class WebhookSecret(BaseModel):
    secret: str = Field(description="The signing secret (`whsec_` and base64), shown only "
                                    "this once; the previous one stops signing at once")
    created_at: datetime


class WebhookDelivery(BaseModel):
    id: str = Field(description="The `webhook-id` header every attempt repeats")
    task_id: uuid.UUID | None
    event: Literal["task.succeeded", "task.failed", "task.cancelled", "approval.required"]
    url: str
    status: Literal["PENDING", "DELIVERED", "FAILED"] = Field(
        description="FAILED: every attempt failed; it is not tried again")
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None = Field(description="The receiver's last HTTP status")
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookDeliveries(BaseModel):
    items: list[WebhookDelivery]


class Memory(BaseModel):
    id: uuid.UUID
    content: str = Field(description="What the agent remembered (`remember`)")
    tainted_by: list[str] = Field(description="The untrusted sources in the conversation's "
                                  "context when it was learned (e.g. `fetch_url output`); "
                                  "non-empty: `recall` returns it as untrusted content")
    task_id: uuid.UUID | None = Field(description="The task that remembered it (null once "
                                                  "that task is deleted)")
    created_at: datetime
    similarity: float | None = Field(None, description="With `q`: cosine similarity to it, "
                                                       "-1 to 1 (higher is closer)")


class MemoryList(BaseModel):
    enabled: bool = Field(description="Whether the agent uses memory on this deployment "
                                      "(CADRE_MEMORY); memories stored before it was turned "
                                      "off are still listed and can be deleted")
    items: list[Memory]


class MemoriesDeleted(BaseModel):
    deleted: int = Field(description="How many memories were deleted")
