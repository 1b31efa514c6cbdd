"""A worker's hold on a running task: a short lease in Postgres with an epoch, renewed for all
of a worker's tasks in one statement every CADRE_HEARTBEAT_SECONDS, and the fence every write
of the task's run goes through.

A lease renewed at time T (as the worker's clock sees it before sending the renewal) is the
worker's until T + CADRE_LEASE_SECONDS by the database's clock, and nobody takes a task over
before its lease has lapsed there. So until T + lease - MARGIN the worker writes without
asking; after that (a renewal failed, or the process was paused) it asks Postgres once whether
the lease is still its own, and from the first "no" on refuses every write (`LeaseLost`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from app.store import TaskStore
from graph.fence import LeaseLost

log = logging.getLogger("cadre.worker")

# Slack for the renewal's own round trip and scheduling: the worker stops trusting its lease
# this long before the database would let it lapse.
MARGIN_SECONDS = 0.5


@dataclass(eq=False)
class Lease:
    """`graph.fence.Fence` for one run of one task."""

    store: TaskStore
    task_id: str
    worker: str
    epoch: int
    seconds: float
    valid_until: float = field(default_factory=time.monotonic)
    lost: bool = False

    @property
    def holder(self) -> tuple[str, str, int]:
        return (self.task_id, self.worker, self.epoch)

    def renewed(self, sent_at: float) -> None:
        """The lease was renewed by a statement sent at `sent_at` (monotonic)."""
        self.valid_until = sent_at + self.seconds - MARGIN_SECONDS

    def lose(self, why: str) -> None:
        if not self.lost:
            log.warning("%s; this run stops and writes nothing more to the task", why)
        self.lost = True

    async def check(self) -> None:
        if self.lost:
            raise LeaseLost(f"task {self.task_id} is no longer leased to {self.worker}")
        if time.monotonic() < self.valid_until:
            return
        asked = time.monotonic()
        left = await self.store.lease_left(self.task_id, self.worker, self.epoch)
        if left is None or left <= MARGIN_SECONDS:
            self.lose(f"task {self.task_id}: the lease of {self.worker} (epoch {self.epoch}) "
                      "lapsed or went to another worker")
            raise LeaseLost(f"task {self.task_id} is no longer leased to {self.worker}")
        self.valid_until = asked + left - MARGIN_SECONDS


@dataclass(eq=False)
class Leases:
    """The leases one worker holds, renewed together."""

    store: TaskStore
    worker: str
    seconds: float
    held: dict[str, Lease] = field(default_factory=dict)

    def add(self, lease: Lease) -> None:
        self.held[lease.task_id] = lease

    def remove(self, lease: Lease) -> None:
        if self.held.get(lease.task_id) is lease:
            del self.held[lease.task_id]

    async def renew(self) -> None:
        """Renew every lease in one statement; one that was not renewed is lost."""
        leases = [lease for lease in self.held.values() if not lease.lost]
        if not leases:
            return
        sent = time.monotonic()
        renewed = await self.store.renew_leases(
            self.worker, [(lease.task_id, lease.epoch) for lease in leases], self.seconds)
        for lease in leases:
            if lease.task_id in renewed:
                lease.renewed(sent)
            else:
                lease.lose(f"task {lease.task_id}: the lease of {self.worker} (epoch "
                           f"{lease.epoch}) could not be renewed: another worker took it over")
