"""The context window: trimmed to the limit, older steps folded into a digest, mirrored in Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from langchain_core.messages import (
    AIMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
)

from graph import window as window_module
from graph.window import (
    Window,
    build_window,
    context_key,
    estimate_tokens,
    mirror_window,
    read_window,
)


def _history(turns: int) -> list:  # type: ignore[type-arg]
    messages: list = []  # type: ignore[type-arg]
    for i in range(turns):
        messages.append(HumanMessage(f"question {i}: " + "lorem ipsum " * 40))
        messages.append(AIMessage("", tool_calls=[{"name": "lookup_price", "args": {"item": f"i{i}"},
                                                   "id": f"c{i}", "type": "tool_call"}]))
        messages.append(ToolMessage(f"price {i}: " + "data " * 400, tool_call_id=f"c{i}",
                                    name="lookup_price"))
        messages.append(AIMessage(f"answer {i}"))
    return messages


def test_short_history_is_sent_whole() -> None:
    history = _history(1)
    window = build_window("system", history, summary="", summarized_upto=0, limit=5_000)
    assert window.messages[1:] == history
    assert window.summary == "" and window.summarized_upto == 0


def test_long_history_is_trimmed_and_digested_not_dropped() -> None:
    history = _history(12)
    window = build_window("system", history, summary="", summarized_upto=0, limit=4_000)
    assert estimate_tokens(window.messages) <= 4_000
    assert window.summarized_upto > 0
    kept = window.messages[1:]
    assert kept == history[window.summarized_upto:]
    assert not isinstance(kept[0], ToolMessage), "a tool result never loses its call"
    assert isinstance(window.messages[0], SystemMessage)
    digest = str(window.messages[0].content)
    assert "Earlier in this conversation (digest)" in digest
    assert "- user: question 0:" in digest
    assert 'called lookup_price({"item": "i0"})' in digest
    assert "- result of lookup_price: price 0:" in digest
    assert kept[-1].content == "answer 11"


def test_digest_accumulates_and_says_when_it_omits() -> None:
    history = _history(12)
    first = build_window("s", history, summary="", summarized_upto=0, limit=4_000)
    more = history + _history(12)
    second = build_window("s", more, summary=first.summary, summarized_upto=first.summarized_upto,
                          limit=4_000)
    assert second.summarized_upto > first.summarized_upto
    assert first.summary.splitlines()[0] in second.summary
    tight = build_window("s", more, summary="", summarized_upto=0, limit=1_500)
    assert tight.summary.startswith("- [older steps omitted from this digest]")


def _ids(messages: list) -> list:  # type: ignore[type-arg]
    for i, message in enumerate(messages):
        message.id = f"m{i}"
    return messages


def _same(read: Window | None, window: Window) -> None:
    assert read is not None
    assert [(type(m), m.content, m.id) for m in read.messages] == \
        [(type(m), m.content, m.id) for m in window.messages]
    assert (read.summary, read.summarized_upto) == (window.summary, window.summarized_upto)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_window_is_mirrored_in_redis_with_a_ttl(client: aioredis.Redis) -> None:
    window = build_window("system", _history(2), summary="", summarized_upto=0, limit=5_000)
    task = str(uuid.uuid4())
    key = context_key(task)
    await mirror_window(client, task, window, ttl_seconds=86_400)
    _same(await read_window(client, task), window)
    for stored in (key, f"{key}:messages"):
        assert 86_000 < await client.ttl(stored) <= 86_400
    assert await client.llen(f"{key}:messages") == len(window.messages) - 1
    assert await read_window(client, "no-such-task") is None


async def _mirror(client: aioredis.Redis, task: str, history: list,  # type: ignore[type-arg]
                  *, system: str = "s", limit: int = 100_000) -> Window:
    """Build the window of `history` and mirror it."""
    window = build_window(system, history, summary="", summarized_upto=0, limit=limit)
    await mirror_window(client, task, window, ttl_seconds=60)
    return window


async def test_each_mirror_sends_only_what_the_window_gained_and_lost(
        client: aioredis.Redis) -> None:
    task = str(uuid.uuid4())
    history = _ids(_history(12))
    await _mirror(client, task, history[:8])
    # A mark no write of the whole window would keep: the next write must only append.
    marked = HumanMessage("marked", id="m0")
    await client.lset(f"{context_key(task)}:messages", 0, json.dumps(message_to_dict(marked)))
    second = await _mirror(client, task, history[:12])
    read = await read_window(client, task)
    assert read is not None and read.messages[1].content == "marked"
    assert [m.content for m in read.messages[2:]] == [m.content for m in second.messages[2:]]
    # Older turns leave the window's front: the list drops them, still without a rewrite.
    slid = await _mirror(client, task, history, limit=3_000)
    assert slid.summarized_upto > 0
    _same(await read_window(client, task), slid)


async def test_a_mirror_another_writer_changed_or_a_rewritten_history_is_written_whole(
        client: aioredis.Redis) -> None:
    task = str(uuid.uuid4())
    history = _ids(_history(6))
    await _mirror(client, task, history[:8])
    # Another worker takes the task over and writes its window whole (this process's record
    # of its own last write is kept aside meanwhile, as another process would not have it).
    mine = dict(window_module._MIRRORED)
    window_module._MIRRORED.clear()
    theirs = await _mirror(client, task, history[:16], system="t")
    _same(await read_window(client, task), theirs)
    window_module._MIRRORED.update(mine)
    later = await _mirror(client, task, history[:12])
    _same(await read_window(client, task), later)
    # The history under the window is not the one written last (a rewound thread): whole.
    rewound = _ids(_history(6))
    rewound[11] = AIMessage("another answer", id="other")
    again = await _mirror(client, task, rewound[:14])
    _same(await read_window(client, task), again)
