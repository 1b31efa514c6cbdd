"""Following a task's events as A2A events: what `SendStreamingMessage`, `SubscribeToTask`,
a blocking `SendMessage` and push notifications all read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import cast

from a2a.types import TaskArtifactUpdateEvent

from app.a2a.convert import StreamEvent, Translator, file_artifact
from app.events import ApprovalRequiredData, Event, FinalData, ToolResultData
from app.streams import StreamHub
from tools.artifacts import Artifacts


async def follow(streams: StreamHub, artifacts: Artifacts, task_id: str, context_id: str, *,
                 after: str | None, base_url: str, known: dict[str, str] | None = None,
                 until_input: bool = True, heartbeat: float = 15.0,
                 deadline: float | None = None) -> AsyncGenerator[tuple[str, StreamEvent]]:
    """The task's events after `after` (all when None) as A2A events, each with the id of the
    Cadre event it came from, until the task ends or, with `until_input`, waits for a person.
    A file the task wrote follows the step that wrote it, unless `known` (name -> digest, as
    the client already has them) holds it. Ends quietly at `deadline` (loop time)."""
    translator = Translator(task_id=task_id, context_id=context_id)
    sent = dict(known or {})
    # An async generator: closed on leaving early, so that its follower leaves the hub now.
    events = cast(AsyncGenerator[list[Event] | None],
                  streams.batches(task_id, after, heartbeat_seconds=heartbeat))
    async with contextlib.aclosing(events) as batches:
        while True:
            try:
                # Only the wait for events is timed: never the consumer's work between them.
                async with asyncio.timeout_at(deadline):
                    batch = await anext(batches)
            except (StopAsyncIteration, TimeoutError):
                return
            for event in batch or ():
                for update in translator.events(event):
                    yield event.id, update
                if isinstance(event.data, ToolResultData | FinalData):
                    for artifact in await artifacts.list(task_id):
                        if sent.get(artifact.name) != artifact.sha256:
                            sent[artifact.name] = artifact.sha256
                            yield event.id, TaskArtifactUpdateEvent(
                                task_id=task_id, context_id=context_id, last_chunk=True,
                                artifact=file_artifact(task_id, artifact, base_url))
                if until_input and isinstance(event.data, ApprovalRequiredData):
                    return
