"""Large tool results kept out of checkpoints.

A tool result longer than `OutputStore.inline_chars` is stored once in `tool_outputs`, under
the SHA-256 of its text, and the conversation's messages (the checkpoint) keep a stub in its
place: its start, its end and the digest (`OUTPUT_KEY` in the message's `additional_kwargs`).
Every checkpoint that holds the message — the step's write, the delta channel's full copies,
a fork's copy of the state — then carries the stub, not the result. A model call's window
puts the whole result back (`resolve`): from this process's memory, else in one query for all
of the window's stubs. Readers of the raw state that only need a result's start (the
observations, the digest of older turns, speculation's links) read the stub's.

Rows are never changed: the same text is the same row, whoever wrote it, so a write needs no
lease (a stale worker's write stores a text someone may reference, nothing more). A store
with `inline_chars` 0 stores nothing new but still resolves the stubs written before."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import asyncpg
from langchain_core.messages import AnyMessage, ToolMessage

log = logging.getLogger(__name__)

OUTPUT_KEY = "cadre_output"  # a stub's reference: {"digest": sha256 hex, "chars": n}
HEAD_CHARS = 1_000  # of a stored result, the stub keeps its first and last characters
TAIL_CHARS = 200
MIN_INLINE_CHARS = 2_000  # a stub must be much shorter than what it stands for


class OutputStore:
    """Stores the large results of a step's tool messages (`keep`; with `inline_chars` 0,
    none) and puts them back into a model call's window (`resolve`). Keeps the newest results
    it wrote or read in memory, up to `cache_chars` characters in all."""

    def __init__(self, db: asyncpg.Pool, *, inline_chars: int = 4_000,
                 cache_chars: int = 16_000_000) -> None:
        if 0 < inline_chars < MIN_INLINE_CHARS:
            raise ValueError(f"inline_chars must be 0 or at least {MIN_INLINE_CHARS}")
        self._db = db
        self.inline_chars = inline_chars
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_chars = cache_chars
        self._cached = 0

    async def keep(self, task_id: str, messages: Sequence[ToolMessage]) -> list[ToolMessage]:
        """`messages` with each result over `inline_chars` stored and replaced by its stub, in
        one statement for all of them."""
        large = {i: str(m.content) for i, m in enumerate(messages) if self.inline_chars
                 and isinstance(m.content, str) and len(m.content) > self.inline_chars}
        if not large:
            return list(messages)
        digests = {i: _digest(text) for i, text in large.items()}
        await self._db.execute(
            """
            INSERT INTO tool_outputs (digest, task_id, chars, content)
            SELECT d, $1::uuid, c, t FROM unnest($2::text[], $3::int[], $4::text[]) AS s(d, c, t)
            ON CONFLICT (digest) DO NOTHING
            """,
            task_id, list(digests.values()), [len(t) for t in large.values()],
            list(large.values()))
        for i, text in large.items():
            self._remember(digests[i], text)
        return [stub(m, digests[i]) if i in large else m for i, m in enumerate(messages)]

    async def resolve(self, messages: Sequence[AnyMessage], *, start: int = 0,
                      ) -> list[AnyMessage]:
        """`messages` with the stubs from index `start` on replaced by the results they stand
        for. A result no longer stored stays a stub (its start, its end and a note)."""
        at = {i: m.additional_kwargs[OUTPUT_KEY]["digest"] for i, m in enumerate(messages)
              if i >= start and isinstance(m, ToolMessage) and OUTPUT_KEY in m.additional_kwargs}
        if not at:
            return list(messages)
        found = {d: text for d in set(at.values()) if (text := self._recall(d)) is not None}
        if missing := sorted(set(at.values()) - found.keys()):
            for row in await self._db.fetch(
                    "SELECT digest, content FROM tool_outputs WHERE digest = ANY($1::text[])",
                    missing):
                found[row["digest"]] = row["content"]
                self._remember(row["digest"], row["content"])
        resolved = list(messages)
        for i, digest in at.items():
            if digest in found:
                resolved[i] = unstubbed(messages[i], found[digest])
            else:
                log.warning("tool output %s is not stored: the model sees its stub", digest)
        return resolved

    def _remember(self, digest: str, text: str) -> None:
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return
        self._cache[digest] = text
        self._cached += len(text)
        while self._cached > self._cache_chars and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)

    def _recall(self, digest: str) -> str | None:
        text = self._cache.get(digest)
        if text is not None:
            self._cache.move_to_end(digest)
        return text


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def stub(message: ToolMessage, digest: str) -> ToolMessage:
    """`message` as the checkpoint keeps it: the result's start and end, and its digest."""
    text = str(message.content)
    left = len(text) - HEAD_CHARS - TAIL_CHARS
    content = (f"{text[:HEAD_CHARS]}\n[... {left} characters of this result are stored apart "
               f"(tool output {digest[:12]}) ...]\n{text[-TAIL_CHARS:]}")
    return message.model_copy(update={
        "content": content,
        "additional_kwargs": {**message.additional_kwargs,
                              OUTPUT_KEY: {"digest": digest, "chars": len(text)}}})


def unstubbed(message: AnyMessage, content: Any) -> AnyMessage:
    """`message` with `content` and no reference: a stub resolved, or a result replaced."""
    kwargs = {k: v for k, v in message.additional_kwargs.items() if k != OUTPUT_KEY}
    return message.model_copy(update={"content": content, "additional_kwargs": kwargs})
