"""Where a run's steps go. The graph knows only the `StepRecorder` protocol: the task store
(`app/store.py`) keeps them in `agent_logs`, the event recorder turns them into live events,
`cadre run` prints them. `Steps` is what a node uses to number and record its steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, cast

from graph.state import AgentState
from graph.steps import MAIN_AGENT, Step, StepBase

S = TypeVar("S", bound=StepBase)


class StepRecorder(Protocol):
    async def record(self, task_id: str, step: Step) -> bool:
        """Keep or show `step`; True when it is new (a node run again after a crash or a
        resume records the same numbers, and only the first time counts)."""
        ...


async def record_all(recorder: StepRecorder, task_id: str, steps: Sequence[Step]) -> list[bool]:
    """Record `steps`, in order, in one write where the recorder can (`record_all`: the
    store's one statement, the events' one append, the metrics' one pipeline), else one by
    one. True for each step that is new."""
    many = getattr(recorder, "record_all", None)
    if many is not None:
        return cast(list[bool], await many(task_id, steps))
    return [await recorder.record(task_id, step) for step in steps]


class Recorders:
    """The first recorder decides whether a step is new (the store); the others hear only
    of new ones, so a step re-recorded after a crash or a resume is not shown twice."""

    def __init__(self, first: StepRecorder, *others: StepRecorder) -> None:
        self._first = first
        self._others = others

    async def record(self, task_id: str, step: Step) -> bool:
        if not await self._first.record(task_id, step):
            return False
        for recorder in self._others:
            await recorder.record(task_id, step)
        return True

    async def record_all(self, task_id: str, steps: Sequence[Step]) -> list[bool]:
        new = await record_all(self._first, task_id, steps)
        if fresh := [step for step, is_new in zip(steps, new, strict=True) if is_new]:
            for recorder in self._others:
                await record_all(recorder, task_id, fresh)
        return new


class Steps:
    """A node's steps: numbered on from the state's last one, recorded as they are made
    (`add`), or with the node's next ones (`later`, then `add` or `flush`): steps a node
    makes together, such as a model call and the calls it proposed, go in one write to each
    recorder."""

    def __init__(self, recorder: StepRecorder, state: AgentState, *,
                 agent: str | None = None) -> None:
        self._recorder = recorder
        self._task_id = state["task_id"]
        self._agent = agent or state.get("agent") or MAIN_AGENT
        self.last = state.get("step", 0)
        self._queued: list[Step] = []

    def later(self, kind: type[S], **fields: Any) -> S:
        """Number a step now; it is recorded by the next `add` or `flush`, before any step
        after it. A node that calls `later` flushes before it returns."""
        self.last += 1
        step = kind(number=self.last, agent=self._agent, **fields)
        self._queued.append(cast(Step, step))
        return step

    async def add(self, kind: type[S], **fields: Any) -> S:
        step = self.later(kind, **fields)
        await self.flush()
        return step

    async def flush(self) -> None:
        queued, self._queued = self._queued, []
        if len(queued) == 1:
            await self._recorder.record(self._task_id, queued[0])
        elif queued:
            await record_all(self._recorder, self._task_id, queued)
