"""Replaying a finished run through the current graph: the model's answers and the tools'
results come from the run's record, so nothing is called — no model, no tool — and the
replayed steps are compared with the recorded ones. The first step where they differ is
where today's code (a prompt, the policy, the graph) decides otherwise than the run did: a
regression check for changes.

What it cannot see: a follow-up task's earlier conversation (the replay starts from the
task's own input), and tools this process does not know (an MCP server's: they diverge as
unknown tools)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.messages.tool import tool_call
from langgraph.checkpoint.memory import InMemorySaver

from graph.approvals import ApprovalDecision
from graph.builder import compile_graph
from graph.deps import GraphDeps
from graph.run import RunResult, resume, start
from graph.state import AgentState
from graph.status import TaskStatus
from graph.steps import (
    AnswerChecked,
    ModelCalled,
    PlanMade,
    RunStopped,
    Step,
    ToolHeld,
    ToolNotRun,
    ToolProposed,
    ToolRan,
)
from graph.testing import ScriptedModel
from guardrails import Policy
from tools import Ledger, Tool, ToolContext, ToolError, ToolOutcome, Toolset, Untrusted


@dataclass(frozen=True, kw_only=True)
class Divergence:
    step: int  # the recorded step's number (or the one after the last, if the replay ran on)
    recorded: str
    replayed: str


@dataclass(frozen=True, kw_only=True)
class ReplayReport:
    compared: int
    divergence: Divergence | None
    steps: list[Step] = field(default_factory=list)

    def describe(self) -> str:
        if self.divergence is None:
            return f"reproduced: all {self.compared} steps the same"
        d = self.divergence
        return (f"diverges at step {d.step} (after {self.compared} identical steps): the run "
                f"recorded {d.recorded}; the current code gives {d.replayed}")


async def replay(recorded: Sequence[Step], *, start_state: AgentState, toolset: Toolset,
                 policy: Policy, decisions: dict[str, ApprovalDecision]) -> ReplayReport:
    """Run `start_state` through the current graph with the recorded answers and results
    (`decisions`: the person's answer to each held call, by call id), and compare."""
    model = ScriptedModel().add(*_answers(recorded))
    steps: list[Step] = []
    deps = GraphDeps(model=model, toolset=_recorded_tools(toolset, recorded), policy=policy,
                     ledger=_NoLedger(), recorder=_Collect(steps))
    graph = compile_graph(InMemorySaver())
    thread = f"replay-{uuid.uuid4()}"
    problem: str | None = None
    try:
        result: RunResult = await start(graph, deps, thread_id=thread, input=start_state)
        while result.status is TaskStatus.PENDING_APPROVAL and result.approval is not None:
            decision = decisions.get(result.approval.tool_call_id)
            if decision is None:
                break  # the run waited here too, or no one decided
            result = await resume(graph, deps, thread_id=thread, decision=decision)
    except AssertionError as exc:  # the script: one model call more, or a different one
        problem = f"a model call the run did not make ({exc})"
    return _compare(recorded, steps, problem)


def _answers(recorded: Sequence[Step]) -> list[AIMessage]:
    """Each recorded model call's answer, rebuilt from the steps that followed it."""
    answers: list[AIMessage] = []
    for i, step in enumerate(recorded):
        if not isinstance(step, ModelCalled):
            continue
        after = []
        for later in recorded[i + 1:]:
            if isinstance(later, ModelCalled):
                break
            after.append(later)
        usage = {"input_tokens": step.tokens_in, "output_tokens": step.tokens_out,
                 "total_tokens": step.tokens_in + step.tokens_out}
        calls: list[Any] = []
        if step.purpose == "plan":
            made = next((s for s in after if isinstance(s, PlanMade)), None)
            if made is not None:
                calls = [tool_call(name="submit_plan", id=f"plan-{i}",
                                   args={"steps": [p.description for p in made.steps]})]
        elif step.purpose == "verify":
            checked = next((s for s in after if isinstance(s, AnswerChecked)), None)
            if checked is not None:
                calls = [tool_call(name="submit_verdict", id=f"verdict-{i}",
                                   args={"goal_met": checked.met, "reason": checked.reason})]
        else:
            calls = [tool_call(name=s.tool, args=s.arguments, id=s.call_id)
                     for s in after if isinstance(s, ToolProposed)]
        answers.append(AIMessage(content=step.text if step.purpose == "act" else "",
                                 tool_calls=calls, usage_metadata=usage))
    return answers


def _recorded_tools(toolset: Toolset, recorded: Sequence[Step]) -> Toolset:
    """The same tools (names, schemas, risks), answering each call with its recorded
    result; a call the run did not make fails, saying so."""
    results = {s.call_id: s for s in recorded if isinstance(s, ToolRan)}
    replayed = Toolset()
    for tool in toolset:
        replayed.add(dataclasses.replace(tool, function=_answer_from(tool, results),
                                         _whole_model=True))
    return replayed


def _answer_from(tool: Tool, results: dict[str, ToolRan]) -> Any:
    async def answer(ctx: ToolContext[Any], args: Any) -> Any:
        ran = results.get(ctx.tool_call_id)
        if ran is None or ran.tool != tool.name:
            raise ToolError(f"replay: the run made no {tool.name} call {ctx.tool_call_id}")
        if not ran.ok:
            raise ToolError(ran.content)
        return Untrusted(ran.content) if ran.untrusted else ran.content
    return answer


def _signature(step: Step) -> str:
    """What must be the same for two steps to count as the same decision."""
    match step:
        case PlanMade():
            return "a plan: " + " / ".join(p.description for p in step.steps)
        case ModelCalled():
            return f"a {step.purpose} model call"
        case ToolProposed():
            return f"a proposed {step.tool} call {step.call_id} with {step.arguments}"
        case ToolHeld():
            return f"{step.tool} {step.call_id} held for approval ({step.risk})"
        case ToolNotRun():
            return f"{step.tool} {step.call_id} not run ({step.why})"
        case ToolRan():
            return f"{step.tool} {step.call_id} ran ({'ok' if step.ok else 'failed'})"
        case AnswerChecked():
            return f"the answer checked: goal met {step.met}"
        case RunStopped():
            return f"the run stopped ({step.stop})"
    raise AssertionError(f"unknown step {step!r}")


def _compare(recorded: Sequence[Step], replayed: Sequence[Step],
             problem: str | None) -> ReplayReport:
    for i, (was, now) in enumerate(zip(recorded, replayed, strict=False)):
        if _signature(was) != _signature(now):
            return ReplayReport(compared=i, steps=list(replayed), divergence=Divergence(
                step=was.number, recorded=_signature(was), replayed=_signature(now)))
    common = min(len(recorded), len(replayed))
    if problem is not None or len(recorded) != len(replayed):
        number = recorded[common].number if common < len(recorded) else \
            (recorded[-1].number + 1 if recorded else 1)
        then = _signature(recorded[common]) if common < len(recorded) else "the run's end"
        later = problem or (_signature(replayed[common]) if common < len(replayed)
                            else "the run's end")
        return ReplayReport(compared=common, steps=list(replayed),
                            divergence=Divergence(step=number, recorded=then, replayed=later))
    return ReplayReport(compared=common, steps=list(replayed), divergence=None)


class _Collect:
    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.numbers: set[int] = set()

    async def record(self, task_id: str, step: Step) -> bool:
        if step.number in self.numbers:
            return False  # a node run again on resume records the same numbers
        self.numbers.add(step.number)
        self.steps.append(step)
        return True


class _NoLedger(Ledger):
    """Every call runs (against the recorded results); nothing is written."""

    def __init__(self) -> None:
        pass

    async def run_once(self, ctx: ToolContext[Any], *, tool_name: str, arguments: Any,
                       call: Any) -> tuple[ToolOutcome, bool]:
        return await call(), False
