"""A task's status: one type for the API, the service, the workers, the events and the UI."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    PENDING_APPROVAL = "PENDING_APPROVAL"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


# Waiting, running or held: the task still holds its conversation and a concurrency slot.
ACTIVE = frozenset({TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.PENDING_APPROVAL})
TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})
