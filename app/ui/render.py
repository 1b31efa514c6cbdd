"""What the chat shows for a task, as plain data: message texts, step and message ids, element
descriptions. The live view (`view.py`) and the history view (`data_layer.py`) both use these,
so a reopened conversation looks like the one that was watched live, and the ids match: an
approval's buttons re-sent after a reload attach to the message the history already shows."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

from app.settings import Settings
from graph.steps import is_worker

CHAT_NAME = "Cadre"


# -- ids -------------------------------------------------------------------------------------


def plan_id(task_id: str) -> str:
    return f"plan-{task_id}"


def answer_id(task_id: str) -> str:
    return f"answer-{task_id}"


def files_id(task_id: str) -> str:
    return f"files-{task_id}"


def approval_message_id(approval_id: str) -> str:
    return f"approval-{approval_id}"


def tool_step_id(task_id: str, call_id: str, agent: str = "cadre") -> str:
    """A tool call's step; a team worker's call ids are its model's, so its path joins in."""
    return f"call-{task_id}-{agent}-{call_id}" if is_worker(agent) else f"call-{task_id}-{call_id}"


def agent_step_id(task_id: str, path: str) -> str:
    """A team's worker agent as one collapsible step, its own steps nested in it."""
    return f"agent-{task_id}-{path}"


def agent_output(ok: bool, result: str, stop: str | None, message: str) -> str:
    if ok:
        return result or "(no answer)"
    return f"Stopped ({stop}): {message}" + (f"\n\nWhat it had: {result}" if result else "")


def element_id(task_id: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cadre:{task_id}/{name}"))


# -- texts -----------------------------------------------------------------------------------


COMMANDS_HINT = ("Type `/schedules` to list your scheduled tasks, `/memories` to see and "
                 "delete what the agent remembers about you.")
# The newest memories `/memories` shows, one message (and Forget button) each.
MEMORIES_SHOWN = 50


def memory_message_id(memory_id: str) -> str:
    return f"memory-{memory_id}"


def memories_text(memories: list[dict[str, Any]], *, total: int, enabled: bool) -> str:
    """The head of `/memories`: how many there are, and whether memory is on."""
    off = ("Memory is turned off on this deployment: the agent neither remembers nor recalls. "
           if not enabled else "")
    if not memories:
        return off + ("The agent remembers nothing about you yet. When it learns something "
                      "worth keeping across conversations it saves it, and it shows up here.")
    shown = (f"the newest {len(memories)} of {total}" if total > len(memories)
             else f"{total}")
    return (f"**Your memories** ({shown}, newest first)\n\n{off}What the agent remembered "
            "about you, across conversations. Forget one, or all of them. A memory marked "
            "*untrusted* was learned while outside content (a web page, a search hit, a file) "
            "was in the conversation: the agent treats it as a claim, never an instruction.")


def memory_text(memory: dict[str, Any]) -> str:
    """One memory of `/memories`."""
    when = f"{memory['created_at']:%Y-%m-%d %H:%M} UTC"
    taint = (f" · **untrusted** (learned with {', '.join(memory['tainted_by'])} in context)"
             if memory["tainted_by"] else "")
    return f"{memory['content']}\n\nRemembered {when}{taint}"


def forgotten_text(deleted: bool) -> str:
    """What a forgotten memory's message becomes (its text is not shown again)."""
    return ("*Forgotten: the agent no longer recalls this memory.*" if deleted
            else "*This memory was already deleted.*")


def forgot_all_text(deleted: int) -> str:
    if not deleted:
        return "There was nothing to forget: the agent remembers nothing about you."
    return (f"Forgotten: {deleted} {'memory' if deleted == 1 else 'memories'} deleted; the "
            "agent no longer recalls any of them.")


def schedules_text(schedules: list[dict[str, Any]]) -> str:
    """The user's schedules (`/schedules` in the chat)."""
    if not schedules:
        return ("You have no schedules. Make one with `POST /v1/schedules` or `cadre schedules "
                "create` (docs: the README's API table).")
    lines = ["**Your schedules**", ""]
    for s in schedules:
        when = "paused" if s["paused"] else f"next {s['next_run_at']:%Y-%m-%d %H:%M} UTC"
        last = s["last_run"]
        ran = f"; last run {last['outcome']}" if last else ""
        lines.append(f"- `{s['cron']}` ({s['timezone']}), {when}{ran}: {s['input'][:120]}")
    return "\n".join(lines)


def run_again_text(conversation_id: str) -> str:
    return (f"Running it again, without the cache, in a new conversation: "
            f"[open it](/thread/{conversation_id}).")


def fork_text(step: int, conversation_id: str) -> str:
    return (f"Retrying from step {step} in a new conversation: "
            f"[open it](/thread/{conversation_id}). What was done up to there is kept, not "
            "done again.")


def plan_text(steps: list[str], *, revised: bool = False) -> str:
    head = "**Plan** (revised)" if revised else "**Plan**"
    return head + "\n\n" + "\n".join(f"{n}. {s}" for n, s in enumerate(steps, start=1))


def approval_text(tool: str, arguments: Any, reason: str, *, status: str = "PENDING",
                  comment: str | None = None, agent: str = "cadre") -> str:
    shown = json.dumps(arguments, indent=2, ensure_ascii=False, default=str)
    who = f"the worker agent `{agent}`" if is_worker(agent) else "the agent"
    lines = [f"**Approval needed:** {who} wants to run `{tool}`.", ""]
    if reason:
        lines += [f"Why it waits for you: {reason}", ""]
    lines += ["```json", shown, "```"]
    if status == "APPROVED":
        lines += ["", "**Approved.** The task continues."]
    elif status == "REJECTED":
        lines += ["", f"**Rejected**{f': {comment}' if comment else '.'} The agent is told why."]
    return "\n".join(lines)


def tool_input(arguments: Any) -> tuple[str, str]:
    """A tool call's arguments for display, with their language: code as code, else JSON."""
    if isinstance(arguments, dict) and set(arguments) == {"code"} \
            and isinstance(arguments["code"], str):
        return arguments["code"].strip("\n"), "python"
    if isinstance(arguments, str):
        return arguments, "text"
    return json.dumps(arguments, indent=2, ensure_ascii=False, default=str), "json"


def files_text(names: list[str]) -> str:
    return "Files this task wrote: " + ", ".join(f"`{n}`" for n in names)


def error_text(error: dict[str, Any] | None, status: str) -> str:
    error = error or {}
    kind = str(error.get("type") or status.lower())
    message = str(error.get("message") or "no reason was recorded")
    if kind == "cancelled":
        said = str(error.get("message") or "")
        return "The task was cancelled." if said in ("", "the task was cancelled") \
            else f"The task was cancelled: {said}."
    titles = {"budget_exceeded": "The task ran out of budget",
              "model_unavailable": "The model could not be reached",
              "delivery_failed": "The task could not be run",
              "iteration_cap": "The task reached its step limit",
              "goal_not_met": "The task did not reach its goal"}
    return f"**{titles.get(kind, 'The task failed')}** ({kind}): {message}"


def trace_link(viewer: str | None, trace_context: Any) -> str:
    """A line linking a task to its trace in the trace viewer (CADRE_TRACE_URL), or ""."""
    parent = (trace_context or {}).get("traceparent", "") if isinstance(trace_context, dict) else ""
    parts = parent.split("-")
    if not viewer or len(parts) != 4:
        return ""
    return f"\n\n[Trace of this task]({viewer.replace('{trace_id}', parts[1])})"


def share_text(url: str) -> str:
    return ("Anyone with this link can read this conversation, with secrets and personal data "
            f"redacted, until you revoke it:\n\n{url}")


def model_notice(settings: Settings) -> str:
    """Which model answers, said plainly; a loud warning for the tiny offline one."""
    where = settings.openai_base_url or "https://api.openai.com/v1"
    model = settings.model or "the default model"
    if settings.offline_model:
        return (f"**Warning: this is the tiny offline model** (`{model}` at {where}). It runs "
                "without a key so you can try Cadre, but it is far too small for real work: "
                "expect wrong or empty answers. Set `OPENAI_API_KEY` (or `OPENAI_BASE_URL` "
                "for any OpenAI-compatible server) and restart for a real model.")
    if not settings.openai_api_key and not settings.openai_base_url:
        return ("**No model is configured**: tasks will fail. Set `OPENAI_API_KEY` or "
                "`OPENAI_BASE_URL`, or start the local stack with `cadre up`.")
    return f"Model: `{model}` at {where}."


# -- artifacts -------------------------------------------------------------------------------


def artifact_url(task_id: str, name: str, sha256: str) -> str:
    """Served to the logged-in owner by the UI's own route (the API wants a bearer key)."""
    return f"/ui/artifacts/{task_id}/{quote(name)}?v={sha256[:12]}"


def artifact_element(task_id: str, thread_id: str, *, name: str, content_type: str,
                     sha256: str) -> dict[str, Any]:
    """A Chainlit element: images inline in the chat, other files as downloads."""
    image = content_type.startswith("image/")
    return {"id": element_id(task_id, name), "threadId": thread_id,
            "type": "image" if image else "file", "name": name, "display": "inline",
            "size": "large" if image else None, "url": artifact_url(task_id, name, sha256),
            "mime": content_type, "forId": files_id(task_id), "chainlitKey": None,
            "objectKey": None}


def cached_note(cached_from: dict[str, Any] | None) -> str:
    """The line under an answer the semantic task cache gave."""
    if not cached_from:
        return ""
    return (f"\n\n_Answered from the cache: task {cached_from.get('task_id')} answered the "
            f"same request at {cached_from.get('at')} (similarity "
            f"{cached_from.get('similarity')}). Choose **Run again** to run it anew, in a new "
            "conversation._")
