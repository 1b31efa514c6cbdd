"""Where a run's steps go. The graph knows only the `StepRecorder` protocol: the task store
(`app/store.py`) keeps them in `agent_logs`, the event recorder turns them into live events,
`cadre run` prints them. `Steps` is what a node uses to number and record its steps."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, cast

from graph.state import AgentState
from graph.steps import MAIN_AGENT, Step, StepBase

S = TypeVar("S", bound=StepBase)


class StepRecorder(Protocol):
    async def record(self, task_id: str, step: Step) -> bool:
        """Keep or show `step`; True when it is new (a node run again after a crash or a
        resume records the same numbers, and only the first time counts)."""
        ...


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


class Steps:
    """A node's steps: numbered on from the state's last one, recorded as they are made."""

    def __init__(self, recorder: StepRecorder, state: AgentState, *,
                 agent: str | None = None) -> None:
        self._recorder = recorder
        self._task_id = state["task_id"]
        self._agent = agent or state.get("agent") or MAIN_AGENT
        self.last = state.get("step", 0)

    async def add(self, kind: type[S], **fields: Any) -> S:
        self.last += 1
        step = kind(number=self.last, agent=self._agent, **fields)
        await self._recorder.record(self._task_id, cast(Step, step))
        return step
