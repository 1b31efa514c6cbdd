"""The exact model-call cache: a deterministic model (temperature 0) asked the very same
thing (same model and settings, same window, same tools and tool choice) answers the same, so
a retry, a replay or a repeated task reads the earlier reply instead of paying for it.

Kept per user: two users' identical windows share nothing, so nobody can tell from a fast
answer what somebody else asked. Entries expire after `ttl_seconds`."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, message_to_dict, messages_from_dict

log = logging.getLogger("cadre.cache")

# Bumped when what goes into a key changes: older entries then never match.
KEY_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class CachedReply:
    message: AIMessage
    tokens_in: int
    tokens_out: int


def deterministic(model: BaseChatModel) -> bool:
    """Only a model sampled at temperature 0 is asked once per question (one that does not
    say, like the scripted test model, counts as 0)."""
    return getattr(model, "temperature", 0) in (0, 0.0)


def _settings(model: BaseChatModel) -> dict[str, Any]:
    """What of the model's configuration changes its answer."""
    names = ("model_name", "temperature", "max_tokens", "max_completion_tokens", "top_p",
             "openai_api_base", "seed", "stop", "reasoning_effort", "frequency_penalty",
             "presence_penalty", "extra_body", "model_kwargs", "response_format")
    return {name: getattr(model, name, None) for name in names}


@dataclass(frozen=True, kw_only=True)
class ModelCache:
    db: asyncpg.Pool
    user_id: str
    ttl_seconds: int

    def key(self, model: BaseChatModel, messages: Sequence[BaseMessage],
            tools: Sequence[dict[str, Any]], tool_choice: str | None) -> str:
        request = {"v": KEY_VERSION, "user": self.user_id, "model": _settings(model),
                   "messages": [_plain(m) for m in messages], "tools": list(tools),
                   "tool_choice": tool_choice}
        blob = json.dumps(request, sort_keys=True, default=str, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    async def get(self, key: str) -> CachedReply | None:
        try:
            row = await self.db.fetchrow(
                "UPDATE model_cache SET hits = hits + 1 WHERE key = $1 AND user_id = $2::uuid "
                "AND created_at > now() - make_interval(secs => $3) "
                "RETURNING message, tokens_in, tokens_out", key, self.user_id, self.ttl_seconds)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("model cache unreadable, asking the model: %s", exc)
            return None
        if row is None:
            return None
        message = messages_from_dict([json.loads(row["message"])])[0]
        if not isinstance(message, AIMessage):
            return None
        # A message of its own: under the earlier one's id it would replace that message in
        # a thread holding both (messages merge by id).
        message = message.model_copy(update={"id": None})
        return CachedReply(message=message, tokens_in=row["tokens_in"],
                           tokens_out=row["tokens_out"])

    async def put(self, key: str, model_name: str, message: AIMessage, *, tokens_in: int,
                  tokens_out: int) -> None:
        try:
            await self.db.execute(
                "INSERT INTO model_cache (key, user_id, model, message, tokens_in, tokens_out) "
                "VALUES ($1, $2::uuid, $3, $4::jsonb, $5, $6) ON CONFLICT (key) DO UPDATE SET "
                "message = EXCLUDED.message, tokens_in = EXCLUDED.tokens_in, "
                "tokens_out = EXCLUDED.tokens_out, created_at = now(), hits = 0",
                key, self.user_id, model_name, json.dumps(message_to_dict(message)),
                tokens_in, tokens_out)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("model cache not written: %s", exc)


def _plain(message: BaseMessage) -> dict[str, Any]:
    """A message as the model reads it: role, content, tool calls and whose result it is
    (ids that differ per run, such as the message id, are left out)."""
    plain: dict[str, Any] = {"type": message.type, "content": message.content}
    if isinstance(message, AIMessage) and message.tool_calls:
        plain["tool_calls"] = [{"name": c["name"], "args": c["args"], "id": c.get("id")}
                               for c in message.tool_calls]
    for name in ("tool_call_id", "name"):
        if value := getattr(message, name, None):
            plain[name] = value
    return plain
