"""Approvals as data: what a held tool call asks a person (`ApprovalRequest`, the graph's
interrupt payload) and what the person answers (`ApprovalDecision`, the resume value). The
same two models travel through the checkpoint, the queue, the REST and WebSocket bodies, the
chat UI and `cadre run`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from graph.steps import MAIN_AGENT, is_worker
from guardrails import Risk
from guardrails.screening import control_characters


class ApprovalRequest(BaseModel):
    """A tool call the policy holds for a person."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    tool_call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    risk: Risk = "side_effect"
    reason: str = ""
    rule: str | None = None
    # Which agent asks: "cadre" for a single agent, a team's worker by its path (its
    # `tool_call_id` is then prefixed with the path, unique in the task).
    agent: str = "cadre"


def asking_agent(tool_call_id: str) -> str:
    """The agent an approval's call belongs to: a team worker's call id carries its path
    (`manager/analyst#1:call_1`); any other is the single agent's."""
    head, colon, _ = tool_call_id.partition(":")
    return head if colon and is_worker(head) else MAIN_AGENT


class ApprovalDecision(BaseModel):
    """A person's answer to an `ApprovalRequest`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    decision: Literal["approve", "reject"]
    comment: str = Field(default="", max_length=2_000)
    # The `approvals` row decided, when the decision came through the task service.
    approval_id: str | None = Field(default=None, max_length=100)

    @field_validator("comment", mode="before")
    @classmethod
    def _plain(cls, value: object) -> object:
        # What a person types: no NUL, control characters or lone surrogates (PostgreSQL
        # cannot store some of them, and the others hide text from whoever reads it).
        if value is None:
            return ""
        if isinstance(value, str) and (found := control_characters(value)):
            raise ValueError(f"contains control or invisible characters ({', '.join(found[:5])})")
        return value

    @property
    def approved(self) -> bool:
        return self.decision == "approve"
