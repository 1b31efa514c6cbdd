"""The task store's record of runs: `agent_logs`, one row per typed step. Each row keeps the
step as JSON (`record`) and, for SQL and older readers, the columns the design names (node,
thought, tool name, input and output, tokens, latency), filled from the step by `columns`.
Rows written before steps were typed have no `record`: `legacy_steps` reads their columns
back into steps, so old history still renders through the same consumers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, assert_never

import asyncpg

from graph.fence import HELD_SQL, LeaseLost
from graph.steps import (
    AgentDelegated,
    AgentReturned,
    AnswerChecked,
    ModelCalled,
    NotRunWhy,
    PlanItem,
    PlanMade,
    RunStopped,
    Step,
    ToolHeld,
    ToolNotRun,
    ToolProposed,
    ToolRan,
    parse_step,
)


@dataclass(frozen=True, kw_only=True)
class Columns:
    node: str
    thought: str | None = None
    tool_name: str | None = None
    tool_input: Any = None
    tool_output: Any = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: int | None = None


def columns(step: Step) -> Columns:
    """The named `agent_logs` columns of a step."""
    match step:
        case PlanMade():
            return Columns(node="plan", thought="\n".join(
                f"{item.number}. {item.description}" for item in step.steps))
        case ModelCalled():
            return Columns(node=step.purpose, thought=step.text or None, tokens_in=step.tokens_in,
                           tokens_out=step.tokens_out, latency_ms=step.latency_ms)
        case ToolProposed():
            return Columns(node="act", tool_name=step.tool, tool_input=step.arguments)
        case ToolHeld():
            return Columns(node="approve", tool_name=step.tool, tool_input=step.arguments,
                           thought=step.reason)
        case ToolNotRun():
            return Columns(node="approve", tool_name=step.tool, tool_input=step.arguments,
                           thought=step.message)
        case ToolRan():
            output: dict[str, Any] = {"ok": step.ok, "content": step.content,
                                      "replayed": step.replayed}
            if step.untrusted:
                output["untrusted"] = True
            return Columns(node="execute", tool_name=step.tool, tool_input=step.arguments,
                           tool_output=output, latency_ms=step.latency_ms)
        case AnswerChecked():
            return Columns(node="verify", thought=f"goal met: {step.met}. {step.reason}")
        case AgentDelegated():
            return Columns(node="delegate", tool_name=step.to, thought=step.task)
        case AgentReturned():
            # Its tokens are the worker's model calls' rows: not counted twice.
            return Columns(node="collect", tool_name=step.to,
                           thought=step.result or step.message or None)
        case RunStopped():
            return Columns(node="stop", thought=step.message)
        case _:
            assert_never(step)


class StepStore:
    """Writes steps to `agent_logs`. A step number already recorded for the task (a node run
    again after a crash or a resume) is kept as first written. With `lease` (the run's worker
    and epoch), a step of a run whose task another worker has taken over is refused:
    `LeaseLost`."""

    def __init__(self, db: asyncpg.Pool, *, lease: tuple[str, int] | None = None) -> None:
        self._db = db
        self._lease = lease

    async def record(self, task_id: str, step: Step) -> bool:
        return (await self.record_all(task_id, [step]))[0]

    async def record_all(self, task_id: str, steps: Sequence[Step]) -> list[bool]:
        """Write `steps` in one statement; True for each that is new."""
        worker, epoch = self._lease or (None, None)
        cols = [columns(step) for step in steps]
        inserted = {row["step_number"] for row in await self._db.fetch(
            f"""
            INSERT INTO agent_logs (task_id, step_number, node, thought, tool_name, tool_input,
                                    tool_output, tokens_in, tokens_out, latency_ms, kind, agent,
                                    record, created_at)
            SELECT $1::uuid, s.number, s.node, s.thought, s.tool_name, s.tool_input::jsonb,
                   s.tool_output::jsonb, s.tokens_in, s.tokens_out, s.latency_ms, s.kind,
                   s.agent, s.record::jsonb, s.at
              FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                          $7::text[], $8::int[], $9::int[], $10::int[], $11::text[],
                          $12::text[], $13::text[], $14::timestamptz[])
                   WITH ORDINALITY AS s(number, node, thought, tool_name, tool_input,
                                        tool_output, tokens_in, tokens_out, latency_ms, kind,
                                        agent, record, at, ord)
             WHERE $15::text IS NULL OR {HELD_SQL.format(task="$1", worker="$15", epoch="$16")}
             ORDER BY s.ord
            ON CONFLICT (task_id, step_number) DO NOTHING
            RETURNING step_number
            """,
            task_id, [step.number for step in steps], [c.node for c in cols],
            [c.thought for c in cols], [c.tool_name for c in cols],
            [_json(c.tool_input) for c in cols], [_json(c.tool_output) for c in cols],
            [c.tokens_in for c in cols], [c.tokens_out for c in cols],
            [c.latency_ms for c in cols], [step.kind for step in steps],
            [step.agent for step in steps], [step.model_dump_json() for step in steps],
            [step.at for step in steps], worker, epoch)}
        if len(inserted) < len(steps) and worker is not None and not await self._db.fetchval(
                "SELECT true FROM tasks WHERE id = $1::uuid AND lease_owner = $2 AND epoch = $3",
                task_id, worker, epoch):
            raise LeaseLost(f"task {task_id} is no longer leased to {worker} (epoch {epoch})")
        return [step.number in inserted for step in steps]


async def task_steps(db: asyncpg.Pool | asyncpg.Connection, task_ids: list[Any]
                     ) -> dict[str, list[Step]]:
    """The recorded steps of these tasks, in order, by task id."""
    rows = await db.fetch(
        "SELECT task_id, step_number, node, thought, tool_name, tool_input, tool_output, "
        "tokens_in, tokens_out, latency_ms, created_at, record FROM agent_logs "
        "WHERE task_id = ANY($1::uuid[]) ORDER BY task_id, step_number, id", task_ids)
    steps: dict[str, list[Step]] = {}
    for row in rows:
        found = steps.setdefault(str(row["task_id"]), [])
        if row["record"] is not None:
            found.append(parse_step(json.loads(row["record"])))
        else:
            found.extend(legacy_steps(dict(row)))
    return steps


def legacy_steps(row: dict[str, Any]) -> list[Step]:
    """The steps an `agent_logs` row from before typed steps stood for."""
    number, at = int(row["step_number"]), row["created_at"]
    node, thought = row["node"], row["thought"] or ""
    tool_input, tool_output = _loads(row["tool_input"]), _loads(row["tool_output"])
    base: dict[str, Any] = {"number": number, "at": at}
    if node == "plan":
        items = [line.partition(". ") for line in thought.splitlines() if line.strip()]
        return [PlanMade(steps=[PlanItem(number=i, description=text or head, status="pending")
                                for i, (head, _, text) in enumerate(items, start=1)], **base)]
    if node == "act":
        made: list[Step] = [ModelCalled(purpose="act", model="", tokens_in=row["tokens_in"],
                                        tokens_out=row["tokens_out"],
                                        latency_ms=row["latency_ms"] or 0, text=thought, **base)]
        names = [n.strip() for n in (row["tool_name"] or "").split(",") if n.strip()]
        inputs = tool_input if isinstance(tool_input, list) else []
        for i, name in enumerate(names):
            arguments = inputs[i] if i < len(inputs) and isinstance(inputs[i], dict) else {}
            made.append(ToolProposed(call_id="", tool=name, arguments=arguments, **base))
        return made
    if node == "execute":
        output = tool_output if isinstance(tool_output, dict) else {}
        return [ToolRan(call_id="", tool=row["tool_name"] or "?", arguments=_dict(tool_input),
                        ok=bool(output.get("ok")), content=str(output.get("content") or ""),
                        replayed=bool(output.get("replayed")),
                        untrusted=bool(output.get("untrusted")),
                        latency_ms=row["latency_ms"] or 0, **base)]
    if node == "approve":
        why: NotRunWhy = "denied" if thought.startswith("denied") else \
            "rejected" if thought.startswith("a person rejected") else \
            "unknown_tool" if thought.startswith("unknown tool") else \
            "malformed" if thought.startswith("malformed") else "invalid_arguments"
        return [ToolNotRun(call_id="", tool=row["tool_name"] or "?", arguments=_dict(tool_input),
                           why=why, message=thought, **base)]
    if node == "verify":
        return [AnswerChecked(met=thought.startswith("goal met: True"),
                              reason=thought.partition(". ")[2], **base)]
    return []


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, ensure_ascii=False)


def _loads(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
