"""OpenTelemetry spans of a run, after the GenAI semantic conventions: `invoke_agent` per run,
`chat` per model call, `execute_tool` per tool call, and Cadre's own spans for policy
decisions, budget checks and ledger replays. Only the OpenTelemetry API is used here: with no
SDK configured (tracing off) every span is a no-op, and attributes that cost something to
build are made only for a span that records.

Prompt and completion content goes on spans only when `Tracing.content` is on (the
conventions' opt-in, `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`), and then through
`Tracing.redact` first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from langchain_core.messages import AIMessage, BaseMessage
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACER = trace.get_tracer("cadre.graph")
PROVIDER = "openai"  # the client Cadre speaks to every model with


def _no_redaction(text: str) -> str:
    return text


@dataclass(frozen=True, kw_only=True)
class Tracing:
    """What the spans of a run may carry."""

    content: bool = False
    redact: Callable[[str], str] = field(default=_no_redaction)
    # Where the model is served (`server.address` / `server.port` of chat spans).
    model_url: str | None = None
    agent: str = "cadre"


@contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL,
         attributes: dict[str, Any] | None = None) -> Iterator[Span]:
    """A span for a block; an exception ends it with an error status (and is raised on)."""
    with TRACER.start_as_current_span(name, kind=kind, attributes=attributes,
                                      record_exception=True, set_status_on_exception=True) as s:
        yield s


def agent_span(tracing: Tracing, *, task_id: str, conversation_id: str,
               model: str, agent: str | None = None) -> Any:
    """A run's span; a team's worker agent's (`agent`, its path) nests under the manager's."""
    name = agent or tracing.agent
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name,
                  "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": model,
                  "cadre.task.id": task_id}
    if conversation_id:
        attributes["gen_ai.conversation.id"] = conversation_id
    return span(f"invoke_agent {name}", attributes=attributes)


def chat_span(tracing: Tracing, *, model: str, purpose: str) -> Any:
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER,
                                  "gen_ai.request.model": model, "cadre.purpose": purpose}
    if tracing.model_url:
        parts = urlsplit(tracing.model_url)
        if parts.hostname:
            attributes["server.address"] = parts.hostname
            attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    return span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)


def record_prompt(tracing: Tracing, target: Span, messages: Sequence[BaseMessage]) -> None:
    if tracing.content and target.is_recording():
        target.set_attribute("gen_ai.input.messages", tracing.redact(json.dumps(
            [_message(m) for m in messages], ensure_ascii=False, default=str)))


def record_answer(tracing: Tracing, target: Span, message: AIMessage, *, tokens_in: int,
                  tokens_out: int, estimated: bool, finish_reason: str | None) -> None:
    if not target.is_recording():
        return
    target.set_attribute("gen_ai.usage.input_tokens", tokens_in)
    target.set_attribute("gen_ai.usage.output_tokens", tokens_out)
    if estimated:
        target.set_attribute("cadre.usage.estimated", True)
    if finish_reason:
        target.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
    if model := message.response_metadata.get("model_name"):
        target.set_attribute("gen_ai.response.model", str(model))
    if message.id:
        target.set_attribute("gen_ai.response.id", message.id)
    if tracing.content:
        target.set_attribute("gen_ai.output.messages", tracing.redact(json.dumps(
            [_message(message)], ensure_ascii=False, default=str)))


def record_cached_answer(target: Span, *, tokens_in: int, tokens_out: int) -> None:
    """A call the model-call cache answered: nothing was sent, so nothing was used; what the
    original call cost is kept as cache reads."""
    if not target.is_recording():
        return
    target.set_attribute("gen_ai.usage.input_tokens", 0)
    target.set_attribute("gen_ai.usage.output_tokens", 0)
    target.set_attribute("gen_ai.usage.cache_read.input_tokens", tokens_in)
    target.set_attribute("cadre.cache.read.output_tokens", tokens_out)


def tool_span(tracing: Tracing, *, tool: str, call_id: str, risk: str,
              arguments: dict[str, Any]) -> Any:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
        "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": "function", "cadre.tool.risk": risk}
    if tracing.content:
        attributes["gen_ai.tool.call.arguments"] = tracing.redact(
            json.dumps(arguments, ensure_ascii=False, default=str))
    return span(f"execute_tool {tool}", attributes=attributes)


def record_tool_result(tracing: Tracing, target: Span, *, ok: bool, content: str,
                       replayed: bool, untrusted: bool) -> None:
    if not target.is_recording():
        return
    target.set_attribute("cadre.tool.ok", ok)
    target.set_attribute("cadre.tool.replayed", replayed)
    target.set_attribute("cadre.tool.untrusted", untrusted)
    if tracing.content:
        target.set_attribute("gen_ai.tool.call.result", tracing.redact(content))
    if not ok:
        target.set_status(Status(StatusCode.ERROR, content[:200]))
        target.set_attribute("error.type", "tool_error")


def _message(message: BaseMessage) -> dict[str, Any]:
    """A message in the conventions' shape: role and parts."""
    role = {"human": "user", "ai": "assistant", "tool": "tool"}.get(message.type, message.type)
    parts: list[dict[str, Any]] = []
    if message.content:
        parts.append({"type": "text", "content": str(message.content)})
    for call in getattr(message, "tool_calls", None) or []:
        parts.append({"type": "tool_call", "id": call.get("id"), "name": call["name"],
                      "arguments": call["args"]})
    if message.type == "tool":
        parts = [{"type": "tool_call_response", "id": getattr(message, "tool_call_id", None),
                  "response": str(message.content)}]
    return {"role": role, "parts": parts}
