"""The embedded SQS endpoint's process: moto's server, with a queue's attributes worked out
when they are read instead of all at once on every call.

`python -m app.stack.sqs_server -H 127.0.0.1 -p PORT` takes moto's server arguments.

moto's `Queue.attributes` builds every attribute of a queue, the three approximate message
counts included: each count goes over all the queue's messages and reads the clock for each
one. moto reads that property on every send (for `ContentBasedDeduplication`), for every
message a receive hands out (for `MessageRetentionPeriod`) and several times per name in
`GetQueueAttributes`, so each call costs more the more messages the queue holds. Measured
with 300-600 messages in the queue: 8 ms of the endpoint's CPU per `SendMessage` and 68 ms
per one-message `ReceiveMessage`, two thirds of it in those counts (docs/performance.md).

Here `Queue.attributes` is a read-only mapping with the same names and values that works
out a value when it is read: a send or a receive reads two cheap ones, and
`GetQueueAttributes` still gets every count it asks for, counted at that moment. Nothing
else in moto changes; production SQS is not involved (moto is pinned in constraints.txt,
and `tests/test_queue.py` checks the counts).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from moto.core.utils import camelcase_to_underscores
from moto.sqs.models import Queue


class QueueAttributes(Mapping[str, Any]):
    """A queue's attributes as moto's `Queue.attributes` gives them (booleans as "true" /
    "false", the redrive policy as JSON), each worked out when it is read."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        names = list(queue.BASE_ATTRIBUTES)
        if queue.fifo_queue:
            names += queue.FIFO_ATTRIBUTES
        if queue.kms_master_key_id:  # type: ignore[attr-defined]
            names += queue.KMS_ATTRIBUTES
        self._names = list(dict.fromkeys(names))

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        value = getattr(self._queue, camelcase_to_underscores(name))
        if name == "RedrivePolicy" and value:
            return json.dumps(value)
        return str(value).lower() if isinstance(value, bool) else value

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def install() -> None:
    """Give moto's queues the attributes above."""
    Queue.attributes = property(QueueAttributes)  # type: ignore[assignment,method-assign]


def main(argv: list[str]) -> None:
    install()
    from moto.server import main as moto_main

    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
