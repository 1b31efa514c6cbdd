"""The context window: what the model sees of a long conversation.

Messages that no longer fit `GraphDeps.context_tokens` are folded into a digest kept in the
state (`summary`), never dropped silently. The digest is extractive — who said what, which
tool was called with what, the start of each result — so it costs no model call. The window
is mirrored in a Redis hash per task (24 h TTL) so any worker can rebuild the prompt."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_to_dict,
)
from langchain_core.messages.utils import count_tokens_approximately
from redis.asyncio import Redis

_DIGEST_CHARS = 160
_SUMMARY_SHARE = 3  # the digest may use at most a third of the window


@dataclass(frozen=True, kw_only=True)
class Window:
    messages: list[BaseMessage]
    summary: str
    summarized_upto: int


def estimate_tokens(messages: Sequence[BaseMessage]) -> int:
    return int(count_tokens_approximately(list(messages)))


def build_window(
    system: str,
    history: Sequence[AnyMessage],
    *,
    summary: str,
    summarized_upto: int,
    limit: int,
) -> Window:
    """The system prompt, the digest of older messages, and as many recent messages as fit."""
    start = min(summarized_upto, len(history))
    lines: list[str] = []

    def _compose(begin: int) -> list[BaseMessage]:
        digest = _join(summary, lines, limit)
        prompt = system + (f"\n\nEarlier in this conversation (digest):\n{digest}" if digest else "")
        return [SystemMessage(prompt), *history[begin:]]

    while estimate_tokens(_compose(start)) > limit and start < len(history) - 1:
        end = _group_end(history, start)
        if end >= len(history):
            break  # the newest exchange alone is over the limit: send it whole
        lines.extend(_digest(history[i]) for i in range(start, end))
        start = end
    return Window(messages=_compose(start), summary=_join(summary, lines, limit),
                  summarized_upto=start)


def _group_end(history: Sequence[AnyMessage], start: int) -> int:
    # An assistant turn and its tool results leave the window together: an orphaned tool
    # result is rejected by OpenAI-compatible APIs.
    end = start + 1
    if isinstance(history[start], AIMessage):
        while end < len(history) and isinstance(history[end], ToolMessage):
            end += 1
    while end < len(history) and isinstance(history[end], ToolMessage):
        end += 1
    return end


def _digest(message: AnyMessage) -> str:
    text = " ".join(str(message.content).split())[:_DIGEST_CHARS]
    if isinstance(message, HumanMessage):
        return f"- user: {text}"
    if isinstance(message, AIMessage):
        calls = ", ".join(
            f"{c['name']}({json.dumps(c['args'], default=str)[:120]})" for c in message.tool_calls
        )
        return f"- assistant: {text}" + (f" [called {calls}]" if calls else "")
    if isinstance(message, ToolMessage):
        return f"- result of {message.name or 'tool'}: {text}"
    return f"- {message.type}: {text}"


def _join(summary: str, lines: list[str], limit: int) -> str:
    text = "\n".join(part for part in (summary, *lines) if part)
    budget_chars = limit * 4 // _SUMMARY_SHARE
    if len(text) <= budget_chars:
        return text
    kept = text[-budget_chars:]
    kept = kept[kept.find("\n") + 1:] if "\n" in kept else kept
    return "- [older steps omitted from this digest]\n" + kept


async def mirror_window(redis: Redis, task_id: str, window: Window, ttl_seconds: int) -> None:
    """Keep the task's current window in Redis, for a worker that picks the task up."""
    key = f"cadre:context:{task_id}"
    # One round trip for both commands.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping={
            "summary": window.summary,
            "summarized_upto": window.summarized_upto,
            "messages": json.dumps(messages_to_dict(window.messages), default=str),
            "updated_at": time.time(),
        })
        pipe.expire(key, ttl_seconds)
        await pipe.execute()
