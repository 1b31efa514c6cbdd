"""The context window: trimmed to the limit, older steps folded into a digest, mirrored in Redis."""

from __future__ import annotations

import json

import redis.asyncio as aioredis
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from graph.window import build_window, estimate_tokens, mirror_window


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


async def test_window_is_mirrored_in_redis_with_a_ttl(redis_url: str) -> None:
    window = build_window("system", _history(2), summary="", summarized_upto=0, limit=5_000)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await mirror_window(client, "task-1", window, ttl_seconds=86_400)
        stored = await client.hgetall("cadre:context:task-1")
        ttl = await client.ttl("cadre:context:task-1")
    finally:
        await client.aclose()
    assert 86_000 < ttl <= 86_400
    assert len(json.loads(stored["messages"])) == len(window.messages)
    assert stored["summarized_upto"] == "0"
