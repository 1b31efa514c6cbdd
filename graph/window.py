"""The context window: what the model sees of a long conversation.

Messages that no longer fit `GraphDeps.context_tokens` are folded into a digest kept in the
state (`summary`), never dropped silently. The digest is extractive — who said what, which
tool was called with what, the start of each result — so it costs no model call. The window
is mirrored in Redis per task (24 h TTL), each model call sending only what changed since the
last (`mirror_window`); `read_window` reads it back. A run itself builds its window from the
checkpoint's messages, not from the mirror."""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
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


# The mirror of a task's window: a hash (`cadre:context:<task>`: the digest, where the window
# starts in the history, the system prompt, `tag`) and a list (`...:messages`: the window's
# history messages, one JSON each). A writer sends only what changed since its last write:
# the messages added, and how many left the window's front (`LTRIM`). `tag` names the list's
# exact contents (a random token per full write and the list's length): a delta is applied
# only on top of the contents its writer last wrote, else the writer writes the whole window.
# KEYS: hash, list. ARGV: expected tag ('' = write whole), new tag, how many to drop from the
# front, TTL, summary, summarized_upto, system, updated_at, then the messages to append.
_MIRROR = """
if ARGV[1] == '' then
  redis.call('DEL', KEYS[2])
elseif redis.call('HGET', KEYS[1], 'tag') ~= ARGV[1] then
  return 0
elseif tonumber(ARGV[3]) > 0 then
  redis.call('LTRIM', KEYS[2], ARGV[3], -1)
end
for i = 9, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HSET', KEYS[1], 'tag', ARGV[2], 'summary', ARGV[5], 'summarized_upto', ARGV[6],
           'system', ARGV[7], 'updated_at', ARGV[8])
redis.call('HDEL', KEYS[1], 'messages')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""


@dataclass(frozen=True)
class _Mirrored:
    """What this process last wrote for a task: the list holds history[first:first + count],
    the last of them with id `last_id`, under the token of its last whole write."""

    token: str
    first: int
    count: int
    last_id: str | None

    @property
    def tag(self) -> str:
        return f"{self.token}:{self.count}"


# Per key, the last write of this process (the newest keys; an older one just writes whole).
_MIRRORED: OrderedDict[str, _Mirrored] = OrderedDict()
_MIRRORED_KEYS = 4096


def _token() -> str:
    return uuid.uuid4().hex[:12]


def _dumped(messages: Sequence[BaseMessage]) -> list[str]:
    return [json.dumps(message_to_dict(m), default=str) for m in messages]


def context_key(task_id: str) -> str:
    return f"cadre:context:{task_id}"


async def mirror_window(redis: Redis, task_id: str, window: Window, ttl_seconds: int) -> None:
    """Keep the task's current window in Redis (`read_window` reads it back). One round trip,
    carrying only the messages added since this process's last write for the task: the cost
    of a model call's mirror does not grow with the window. A first write in this process
    (another worker wrote before, or this one restarted) writes the window whole."""
    key = context_key(task_id)
    start, history = window.summarized_upto, window.messages[1:]
    end = start + len(history)
    last = _MIRRORED.get(key)
    base, token, drop, new = "", "", 0, history
    if last is not None and last.first <= start and last.first + last.count <= end:
        kept_end = last.first + last.count  # where the list ends, as a history index
        # The history only grows at its end; the last message written still being there
        # (by id) means the list is a prefix of it from `last.first`.
        if kept_end <= start or (last.last_id is not None
                                 and history[kept_end - 1 - start].id == last.last_id):
            base, token = last.tag, last.token
            drop = min(start, kept_end) - last.first  # what left the window's front
            new = history[max(kept_end, start) - start:]
    written = _Mirrored(token=token or _token(), first=start, count=len(history),
                        last_id=history[-1].id if history else None)
    script = redis.register_script(_MIRROR)
    args: list[str | int | float] = [base, written.tag, drop, ttl_seconds, window.summary,
                                     start, str(window.messages[0].content), time.time(),
                                     *_dumped(new)]
    if not await script(keys=[key, f"{key}:messages"], args=args):
        # The list is not what this process last wrote: write it whole, under a new token.
        written = replace(written, token=_token())
        args[:3] = ["", written.tag, 0]
        args[8:] = _dumped(history)
        await script(keys=[key, f"{key}:messages"], args=args)
    _MIRRORED[key] = written
    _MIRRORED.move_to_end(key)
    while len(_MIRRORED) > _MIRRORED_KEYS:
        _MIRRORED.popitem(last=False)


async def read_window(redis: Redis, task_id: str) -> Window | None:
    """The window last mirrored for the task, as it was built; None when none is kept."""
    key = context_key(task_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(key)
        pipe.lrange(f"{key}:messages", 0, -1)
        fields, items = await pipe.execute()
    fields = {_text(k): _text(v) for k, v in fields.items()}
    if "system" not in fields:
        return None
    messages = messages_from_dict([json.loads(item) for item in items])
    return Window(messages=[SystemMessage(fields["system"]), *messages],
                  summary=fields.get("summary", ""),
                  summarized_upto=int(fields.get("summarized_upto", 0)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
