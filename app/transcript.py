"""A conversation as a clean, self-contained HTML page: what was asked, the plan, every step
with its tool input and output, approvals, the answers and the files written. Everything
shown passes through guardrails' redaction first, then HTML escaping."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from html import escape
from typing import Any, assert_never

from app.history import ConversationLog, TaskLog
from graph.status import TERMINAL, TaskStatus
from graph.steps import (
    AgentDelegated,
    AgentReturned,
    AnswerChecked,
    ModelCalled,
    PlanMade,
    RunStopped,
    Step,
    ToolHeld,
    ToolNotRun,
    ToolProposed,
    ToolRan,
    is_worker,
)
from guardrails.redaction import redact_json

_STYLE = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;color:#1f2328;background:#f6f8fa;
margin:0;padding:2rem 1rem}main{max-width:860px;margin:auto}h1{font-size:1.5rem;margin:0 0 .25rem}
.meta{color:#59636e;margin:0 0 1.5rem;font-size:.9rem}
section{background:#fff;border:1px solid #d1d9e0;border-radius:8px;padding:1rem 1.25rem;
margin-bottom:1.25rem}.ask{font-weight:600;white-space:pre-wrap}.when{color:#59636e;
font-size:.8rem;font-weight:400}.step{border-left:3px solid #d1d9e0;padding:.1rem .75rem;
margin:.75rem 0}.step.tool{border-color:#0969da}.step.approval{border-color:#9a6700}
.step.failed{border-color:#cf222e}.step.agent{border-color:#8250df}
.nested{margin-left:1.5rem}.label{font-size:.8rem;text-transform:uppercase;
letter-spacing:.04em;color:#59636e}pre{background:#f6f8fa;border-radius:6px;padding:.5rem;
overflow-x:auto;white-space:pre-wrap;word-break:break-word;font-size:.85rem;margin:.25rem 0}
.answer{white-space:pre-wrap;border-top:1px solid #d1d9e0;padding-top:.75rem;margin-top:.75rem}
.error{color:#cf222e}ul{margin:.25rem 0}footer{color:#59636e;font-size:.8rem;text-align:center}
"""


async def render_transcript(conversation: ConversationLog) -> str:
    """The redacted transcript page. Redaction is CPU work (about a second per MB of text),
    so it runs in a thread."""
    redacted = await asyncio.to_thread(redact_json, _document(conversation))
    return _page(redacted)


async def render_markdown(conversation: ConversationLog, task_id: str | None = None) -> str:
    """The same redacted transcript as Markdown text (what an MCP client reads), of the whole
    conversation or of one of its tasks."""
    redacted = await asyncio.to_thread(redact_json, _document(conversation))
    if task_id is not None:
        redacted["tasks"] = [t for t, log in zip(redacted["tasks"], conversation.tasks,
                                                 strict=True) if log.id == task_id]
    return _markdown(redacted)


def not_found_page() -> str:
    return _html("Not found", "<h1>Not found</h1><p class='meta'>This link does not exist or "
                              "has been revoked.</p>")


def _document(conversation: ConversationLog) -> dict[str, Any]:
    """The transcript as plain data: every string in it is redacted before rendering."""
    return {"title": conversation.title or "Conversation",
            "tasks": [_task(task) for task in conversation.tasks]}


def _task(task: TaskLog) -> dict[str, Any]:
    # In time order, except that a team's worker agent's steps follow its delegation: each
    # worker's steps together, nested under it.
    entries: list[tuple[tuple[datetime, datetime], dict[str, Any]]] = []
    delegated = {s.to: s.at for s in task.steps if isinstance(s, AgentDelegated)}
    for step in task.steps:
        if (entry := _entry(step, task)) is not None:
            if is_worker(step.agent):
                entry["agent"] = step.agent
            entries.append(((delegated.get(step.agent, step.at), step.at), entry))
    for approval in task.approvals:
        entries.append(((approval.created_at, approval.created_at), {
            "kind": "approval", "tool": approval.tool, "input": _structured(approval.arguments),
            "text": approval.reason, "status": approval.status.lower(),
            "comment": approval.comment or ""}))
    entries.sort(key=lambda pair: pair[0])
    return {
        "forked_from": f"a retry of task {task.forked_from[0]} from its step "
                       f"{task.forked_from[1]}" if task.forked_from else "",
        "input": task.input, "when": task.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        "status": task.status, "files": list(task.files),
        "steps": [entry for _, entry in entries],
        "artifacts": [{"name": a.name, "type": a.content_type, "size": _size(a.size_bytes)}
                      for a in task.artifacts],
        "answer": task.final_output or "",
        "error": (task.error or {}).get("message", "")
        if task.status != TaskStatus.SUCCEEDED else "",
    }


def _entry(step: Step, task: TaskLog) -> dict[str, Any] | None:
    """What the transcript shows of one step (None: nothing)."""
    match step:
        case PlanMade():
            return {"kind": "plan", "text": "\n".join(
                f"{item.number}. {item.description}" for item in step.steps)}
        case ModelCalled():
            if is_worker(step.agent) and not step.tool_calls:
                return None  # a team worker's answer: shown where it returns
            if step.purpose == "act" and step.text and step.text != task.final_output:
                return {"kind": "thought", "text": step.text}
            return None
        case AnswerChecked():
            return {"kind": "check", "text": f"goal met: {step.met}. {step.reason}"}
        case ToolRan():
            return {"kind": "tool", "tool": step.tool, "ok": step.ok,
                    "input": step.arguments, "output": _structured(step.content)}
        case ToolNotRun():
            return {"kind": "not_run", "tool": step.tool, "input": step.arguments,
                    "text": step.message}
        case AgentDelegated():
            return {"kind": "delegated", "to": step.to, "text": step.task}
        case AgentReturned():
            return {"kind": "returned", "to": step.to, "ok": step.ok,
                    "text": step.result if step.ok else f"stopped ({step.stop}): {step.message}"
                    + (f"\n{step.result}" if step.result else "")}
        case ToolProposed() | ToolHeld() | RunStopped():
            # The call shows with its result, the hold with its approval, the stop as the
            # task's error.
            return None
        case _:
            assert_never(step)


def _page(doc: dict[str, Any]) -> str:
    tasks = doc["tasks"]
    body = [f"<h1>{escape(doc['title'])}</h1>",
            f"<p class='meta'>A shared, read-only Cadre conversation: {len(tasks)} "
            f"task{'s' if len(tasks) != 1 else ''}. Secrets and personal data are redacted.</p>"]
    for task in tasks:
        body.append("<section>")
        body.append(f"<div class='ask'>{escape(task['input'])} "
                    f"<span class='when'>{escape(task['when'])}</span></div>")
        if task["forked_from"]:
            body.append(f"<div class='label'>This run is {escape(task['forked_from'])}; the "
                        "steps before it are the original's.</div>")
        if task["files"]:
            body.append("<div class='label'>Attached: "
                        + escape(", ".join(task["files"])) + "</div>")
        body.extend(_step(step) for step in task["steps"])
        if task["artifacts"]:
            items = "".join(f"<li>{escape(a['name'])} <span class='when'>{escape(a['type'])}, "
                            f"{escape(a['size'])}</span></li>" for a in task["artifacts"])
            body.append(f"<div class='step'><div class='label'>Files written</div><ul>{items}</ul>"
                        "</div>")
        if task["answer"]:
            body.append(f"<div class='answer'>{escape(task['answer'])}</div>")
        if task["error"]:
            body.append(f"<div class='answer error'>{escape(task['status'].lower())}: "
                        f"{escape(task['error'])}</div>")
        elif task["status"] not in TERMINAL:
            body.append(f"<div class='answer when'>{escape(task['status'].lower())}</div>")
        body.append("</section>")
    body.append("<footer>Shared from Cadre</footer>")
    return _html(doc["title"], "\n".join(body))


def _step(step: dict[str, Any]) -> str:
    if step.get("agent"):  # a team worker's step, nested under its delegation
        return f"<div class='nested'>{_step_html(step)}</div>"
    return _step_html(step)


def _step_html(step: dict[str, Any]) -> str:
    kind = step["kind"]
    by = f" · {escape(step['agent'])}" if step.get("agent") else ""
    if kind == "delegated":
        return (f"<div class='step agent'><div class='label'>Delegated to "
                f"{escape(step['to'])}</div><pre>{escape(step['text'])}</pre></div>")
    if kind == "returned":
        failed = "" if step["ok"] else " failed"
        return (f"<div class='step agent{failed}'><div class='label'>{escape(step['to'])} "
                f"{'returned' if step['ok'] else 'stopped'}</div>"
                f"<pre>{escape(step['text'])}</pre></div>")
    if kind in ("plan", "thought", "check"):
        label = {"plan": "Plan", "thought": "Reasoning", "check": "Check"}[kind]
        return (f"<div class='step'><div class='label'>{label}{by}</div>"
                f"<pre>{escape(step['text'])}</pre></div>")
    if kind == "tool":
        outcome = "" if step["ok"] else " failed"
        return (f"<div class='step tool{outcome}'><div class='label'>Tool "
                f"{escape(step['tool'])}{' (failed)' if outcome else ''}{by}</div>"
                f"<div class='label'>input</div><pre>{escape(_pretty(step['input']))}</pre>"
                f"<div class='label'>output</div><pre>{escape(_pretty(step['output']))}</pre></div>")
    if kind == "not_run":
        return (f"<div class='step failed'><div class='label'>Tool {escape(step['tool'])} "
                f"did not run{by}</div><pre>{escape(_pretty(step['input']))}</pre>"
                f"<div>{escape(step['text'])}</div></div>")
    comment = f" ({escape(step['comment'])})" if step["comment"] else ""
    return (f"<div class='step approval'><div class='label'>Approval asked for "
            f"{escape(step['tool'])}: {escape(step['status'])}{comment}</div>"
            f"<pre>{escape(_pretty(step['input']))}</pre><div>{escape(step['text'])}</div></div>")


def _markdown(doc: dict[str, Any]) -> str:
    lines = [f"# {doc['title']}", ""]
    for task in doc["tasks"]:
        lines += [f"## {task['input']}", "", f"_{task['when']} · {task['status'].lower()}_", ""]
        if task["forked_from"]:
            lines += [f"This run is {task['forked_from']}; the steps before it are the "
                      "original's.", ""]
        if task["files"]:
            lines += ["Attached: " + ", ".join(task["files"]), ""]
        for step in task["steps"]:
            lines += _markdown_step(step)
        if task["artifacts"]:
            lines += ["**Files written**", ""] + [
                f"- {a['name']} ({a['type']}, {a['size']})" for a in task["artifacts"]] + [""]
        if task["answer"]:
            lines += ["**Answer**", "", task["answer"], ""]
        if task["error"]:
            lines += [f"**{task['status'].lower()}**: {task['error']}", ""]
    return "\n".join(lines)


def _markdown_step(step: dict[str, Any]) -> list[str]:
    if not step.get("agent"):
        return _markdown_lines(step)
    # A team worker's step: quoted under its delegation, and named after the worker.
    return [f"> {line}" if line else ">" for line in
            [f"_{step['agent']}_", "", *_markdown_lines(step)]]


def _markdown_lines(step: dict[str, Any]) -> list[str]:
    kind = step["kind"]
    if kind == "delegated":
        return [f"**Delegated to {step['to']}**", "", _fenced(step["text"]), ""]
    if kind == "returned":
        return [f"**{step['to']} {'returned' if step['ok'] else 'stopped'}**", "",
                _fenced(step["text"]), ""]
    if kind in ("plan", "thought", "check"):
        label = {"plan": "Plan", "thought": "Reasoning", "check": "Check"}[kind]
        return [f"**{label}**", "", _fenced(step["text"]), ""]
    if kind == "tool":
        failed = "" if step["ok"] else " (failed)"
        return [f"**Tool {step['tool']}{failed}**", "", "input:", _fenced(_pretty(step["input"])),
                "output:", _fenced(_pretty(step["output"])), ""]
    if kind == "not_run":
        return [f"**Tool {step['tool']} did not run**: {step['text']}", "",
                _fenced(_pretty(step["input"])), ""]
    comment = f" ({step['comment']})" if step["comment"] else ""
    return [f"**Approval asked for {step['tool']}: {step['status']}{comment}** — {step['text']}",
            "", _fenced(_pretty(step["input"])), ""]


def _fenced(text: str) -> str:
    fence = "```"
    while fence in text:  # a fence longer than any run of backticks in the text
        fence += "`"
    return f"{fence}\n{text}\n{fence}"


def _html(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<meta name='robots' content='noindex,nofollow'><title>{escape(title)} · Cadre"
            f"</title><style>{_STYLE}</style></head><body><main>{body}</main></body></html>")


def _structured(value: Any) -> Any:
    """A tool input or output as data: JSON text is parsed, so that redaction sees its keys
    (a `password` field is redacted whole, whatever its value looks like)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _pretty(value: Any) -> str:
    """Readable text: multi-line strings (code, mail bodies) as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and any(isinstance(v, str) and "\n" in v for v in value.values()):
        return "\n".join(f"{k}:\n{v.strip(chr(10))}" if isinstance(v, str) and "\n" in v
                         else f"{k}: {json.dumps(v, ensure_ascii=False, default=str)}"
                         for k, v in value.items())
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"
