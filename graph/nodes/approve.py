"""approve: each proposed tool call is checked — unknown tools and bad arguments go back to
the model, the policy allows, denies, or holds the call for a human via `interrupt()`."""

from __future__ import annotations

import uuid
from typing import Any, assert_never

from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import ValidationError

from graph.agents import call_key, for_agent
from graph.approvals import ApprovalDecision, ApprovalRequest
from graph.deps import GraphDeps
from graph.nodes._common import last_ai
from graph.recorder import Steps
from graph.state import AgentState, Decision
from graph.steps import MAIN_AGENT, NotRunWhy, ToolHeld, ToolNotRun
from graph.tracing import span
from guardrails import Allow, Deny, PolicyCall, RequireApproval, Risk, Verdict
from guardrails.verdict import require_approval
from tools.contract import describe_validation_error


async def approve(state: AgentState, runtime: Runtime[GraphDeps]) -> dict[str, Any]:
    decided = await decide(state, runtime, ask=True)
    assert decided is not None, "with ask, every call is decided"
    return decided


async def decide(state: AgentState, runtime: Runtime[GraphDeps], *,
                 ask: bool) -> dict[str, Any] | None:
    """The turn's decisions. A call that must wait for a person interrupts the run when
    `ask`; without it, None: the `tools` node leaves the turn to this node."""
    deps = for_agent(runtime.context, state)
    steps = Steps(deps.recorder, state)
    message = last_ai(state)
    assert message is not None, "approve runs after act"
    decisions: list[Decision] = []
    not_run: dict[str, NotRunWhy] = {}
    replan_reason: str | None = None

    for bad in message.invalid_tool_calls:
        decision = Decision(
            tool_call_id=bad.get("id") or f"invalid-{uuid.uuid4().hex[:8]}",
            name=bad.get("name") or "?", arguments={}, run=False,
            message=f"malformed tool call ({bad.get('error') or 'arguments are not valid JSON'}); "
                    "send the arguments as a JSON object matching the tool's schema",
        )
        decisions.append(decision)
        not_run[decision["tool_call_id"]] = "malformed"

    # On resume this node runs again from the top: what it records before an interrupt gets
    # the same step numbers again (the store keeps the first), and the audit log's write is
    # idempotent.
    for call in message.tool_calls:
        decision = Decision(tool_call_id=call["id"] or "", name=call["name"],
                            arguments=dict(call["args"]), run=False, message="")
        tool = deps.toolset.get(call["name"])
        if tool is None:
            names = ", ".join(t.name for t in deps.toolset) or "none"
            if state.get("profile") and runtime.context.toolset.get(call["name"]) is not None:
                # A worker agent cannot widen its tools beyond its profile.
                decision["message"] = (f"{call['name']!r} is not among the tools of the "
                                       f"{state.get('profile')} agent ({names}); do this "
                                       "with those, or answer with what you have")
                not_run[decision["tool_call_id"]] = "denied"
            else:
                decision["message"] = f"unknown tool {call['name']!r}; available tools: {names}"
                not_run[decision["tool_call_id"]] = "unknown_tool"
            decisions.append(decision)
            continue
        try:
            tool.validate(call["args"])
        except ValidationError as exc:
            decision["message"] = f"invalid arguments for {tool.name}: {describe_validation_error(exc)}"
            decisions.append(decision)
            not_run[decision["tool_call_id"]] = "invalid_arguments"
            continue

        role = state.get("role", "analyst")
        with span(f"policy {tool.name}", attributes={
                "gen_ai.tool.name": tool.name, "gen_ai.tool.call.id": decision["tool_call_id"],
                "cadre.policy.role": role, "cadre.tool.risk": tool.risk}) as decided:
            verdict = escalate(deps.policy.decide(PolicyCall(
                role=role, tool=tool.name, risk=tool.risk, arguments=call["args"],
                user_email=state.get("user_email", ""))), risk=tool.risk,
                untrusted=state.get("untrusted") or [])
            decided.set_attribute("cadre.policy.verdict", _verdict_name(verdict))
            decided.set_attribute("cadre.policy.rule", verdict.rule)
        if deps.audit is not None:
            await deps.audit.record(task_id=state["task_id"], tool_call_id=decision["tool_call_id"],
                                    role=role, tool=tool.name, arguments=call["args"],
                                    verdict=verdict)
        if isinstance(verdict, Allow):
            decision["run"] = True
        elif isinstance(verdict, Deny):
            decision["message"] = f"denied by policy ({verdict.rule}): {verdict.message}"
            not_run[decision["tool_call_id"]] = "denied"
        elif isinstance(verdict, RequireApproval):
            if not ask:
                return None
            request = ApprovalRequest(
                tool_call_id=call_key(state, decision["tool_call_id"]), tool=tool.name,
                agent=state.get("agent") or MAIN_AGENT,
                arguments=decision["arguments"], risk=tool.risk,
                reason=verdict.reason, rule=verdict.rule)
            await steps.add(ToolHeld, call_id=decision["tool_call_id"], tool=request.tool,
                            arguments=request.arguments, risk=request.risk,
                            reason=request.reason, rule=request.rule)
            answer = read_decision(interrupt(request.model_dump()))
            if answer.approved:
                decision["run"] = True
            else:
                comment = answer.comment
                decision["message"] = "a person rejected this call" + (f": {comment}" if comment else "")
                replan_reason = f"a person rejected {tool.name}" + (f" ({comment})" if comment else "")
                not_run[decision["tool_call_id"]] = "rejected"
        else:
            assert_never(verdict)
        decisions.append(decision)

    for d in decisions:
        if not d["run"]:
            steps.later(ToolNotRun, call_id=d["tool_call_id"], tool=d["name"],
                        arguments=d["arguments"], why=not_run[d["tool_call_id"]],
                        message=d["message"])
    await steps.flush()
    return {"decisions": decisions, "replan_reason": replan_reason, "step": steps.last}


def _verdict_name(verdict: Verdict) -> str:
    if isinstance(verdict, Allow):
        return "allow"
    if isinstance(verdict, Deny):
        return "deny"
    if isinstance(verdict, RequireApproval):
        return "approve"
    assert_never(verdict)


def escalate(verdict: Verdict, *, risk: Risk, untrusted: list[str]) -> Verdict:
    """A side effect the policy would allow still waits for a person once untrusted content
    is in the context: it may be what asked for it."""
    if risk == "read_only" or not untrusted:
        return verdict
    why = ("this call comes after untrusted content entered the conversation ("
           + "; ".join(untrusted[-3:]) + "): check that it is what was asked for, not what "
           "that content told the agent to do")
    if isinstance(verdict, Allow):
        return require_approval(why, rule=f"escalation:untrusted-content({verdict.rule})")
    if isinstance(verdict, RequireApproval):
        return require_approval(f"{verdict.reason}; also, {why}", rule=verdict.rule)
    return verdict


def read_decision(answer: Any) -> ApprovalDecision:
    """The resume value as a decision (an `ApprovalDecision` or its JSON); anything else
    rejects, saying so."""
    if isinstance(answer, ApprovalDecision):
        return answer
    try:
        return ApprovalDecision.model_validate(answer)
    except ValidationError:
        return ApprovalDecision(decision="reject", comment="the approval answer was not understood")
