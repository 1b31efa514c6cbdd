"""Fencing: a run writes only while its worker still holds the task's lease. Once another
worker has taken the task over (this one was paused, partitioned, or presumed dead), every
write the run would make — a step record, an event, a ledger row, a checkpoint, a new tool
call, the task's end — is refused with `LeaseLost`, and the run stops without touching the
task again.

Two layers: `Fence.check()` is the cheap test before starting work (no database round trip
while the lease is fresh), and every database write additionally carries `Fence.holder` in its
own statement (`tools.ledger.HELD_SQL`), so a write that was already under way when the process
was paused cannot land after a takeover."""

from __future__ import annotations

import contextvars
from typing import Protocol

from tools.ledger import HELD_SQL, LeaseLost

__all__ = ["BOUNDED_SQL", "CURRENT", "HELD_SQL", "STALLED_WRITE_MS", "Fence", "LeaseLost", "Unfenced"]

# A transaction that locks a task's row under a lease sets this as its
# idle_in_transaction_session_timeout: should the process pause mid-transaction, the server
# ends its session after this long, and the takeover waiting on the lock goes ahead.
STALLED_WRITE_MS = 5_000
BOUNDED_SQL = ("SELECT set_config('idle_in_transaction_session_timeout', "
               f"'{STALLED_WRITE_MS}', true)")


class Fence(Protocol):
    @property
    def holder(self) -> tuple[str, str, int] | None:
        """The (task, worker, epoch) every write of the run must still hold; None: unfenced."""
        ...

    async def check(self) -> None:
        """Raise `LeaseLost` when the lease this run was given is no longer held."""
        ...


class Unfenced:
    """No lease to hold (`cadre run`, tests): every write goes through."""

    holder = None

    async def check(self) -> None:
        return None


# The fence of the run this task belongs to, for the checkpointer (which LangGraph calls
# with the run's config only).
UNFENCED = Unfenced()
CURRENT: contextvars.ContextVar[Fence] = contextvars.ContextVar("cadre_fence", default=UNFENCED)
