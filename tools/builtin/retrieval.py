"""Hybrid retrieval over the knowledge base's passages (`kb_chunks`, app/kb.py): full-text
candidates (what shares the query's words) and vector candidates (what is nearest in meaning),
fused by reciprocal rank fusion. Ranks, not scores, are fused: e5's cosine similarities crowd
into a narrow band (unrelated texts near 0.8), so no threshold would separate them reliably,
and a full-text rank says nothing comparable to a distance anyway."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from tools.embeddings import Embedder, EmbeddingUnavailable, literal

log = logging.getLogger("cadre.tools")

# Candidates per kind of match (passages), before fusion; more when more hits are asked for.
CANDIDATES = 20
# Reciprocal rank fusion's constant (Cormack et al., 2009): a hit ranked r adds 1 / (K + r).
RRF_K = 60
SNIPPET_CHARS = 240

K = TypeVar("K", bound=Hashable)

# The passages of shared documents and of the task's user's own uploads (none of another's).
_VISIBLE = "(d.user_id IS NULL OR d.user_id = (SELECT user_id FROM tasks WHERE id::text = $2))"

_BY_WORDS = f"""
    WITH q AS (SELECT websearch_to_tsquery('english', $1) AS query)
    SELECT c.id, c.document_id, d.title, d.source,
           ts_headline('english', c.body, q.query,
                       'MaxFragments=2, MaxWords=30, MinWords=10') AS snippet
    FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id, q
    WHERE c.tsv @@ q.query AND {_VISIBLE}
    ORDER BY ts_rank(c.tsv, q.query) DESC, c.id
    LIMIT $3
"""

# The shared passages through their HNSW index, the user's own exactly: one index scan over
# everyone's, filtered afterwards (pgvector 0.6), could lose a user's passages.
_MEANING_COLUMNS = f"""c.id, c.document_id, d.title, d.source,
           left(c.body, {2 * SNIPPET_CHARS}) AS opening, c.embedding <=> $1::vector AS distance"""
_BY_MEANING = f"""
    (SELECT {_MEANING_COLUMNS}
     FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id
     WHERE c.user_id IS NULL AND c.embedding_model = $4
     ORDER BY c.embedding <=> $1::vector LIMIT $3)
    UNION ALL
    (SELECT {_MEANING_COLUMNS}
     FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id
     WHERE c.user_id = (SELECT user_id FROM tasks WHERE id::text = $2)
       AND c.embedding_model = $4
     ORDER BY distance LIMIT $3)
    ORDER BY distance
    LIMIT $3
"""


@dataclass(frozen=True)
class Hit:
    title: str
    source: str
    snippet: str


async def hybrid_search(db: asyncpg.Pool, embedder: Embedder | None, query: str, *,
                        task_id: str, limit: int) -> list[Hit]:
    """The best `limit` documents for `query`, each once, with the snippet of its best
    passage. Without an embedder, or when the query cannot be embedded, by words only."""
    candidates = max(CANDIDATES, 2 * limit)
    words = await by_words(db, query, task_id=task_id, limit=candidates)
    meaning = await by_meaning(db, embedder, query, task_id=task_id, limit=candidates)
    return fuse(words, meaning)[:limit]


async def by_words(db: asyncpg.Pool, query: str, *, task_id: str,
                   limit: int) -> list[asyncpg.Record]:
    """The passages that have the query's words (web-search syntax), best ranked first."""
    return list(await db.fetch(_BY_WORDS, query, task_id, limit))


async def by_meaning(db: asyncpg.Pool, embedder: Embedder | None, query: str, *, task_id: str,
                     limit: int) -> list[asyncpg.Record]:
    """The passages nearest the query in meaning (vectors of the embedder's model only),
    nearest first; none without an embedder or when the query cannot be embedded."""
    if embedder is None:
        return []
    try:
        vector = await embedder.query(query)
    except EmbeddingUnavailable as exc:
        log.warning("search: the query could not be embedded, so words only: %s", exc)
        return []
    return list(await db.fetch(_BY_MEANING, literal(vector), task_id, limit, embedder.model))


def rrf(rankings: Sequence[Sequence[K]], k: int = RRF_K) -> dict[K, float]:
    """Reciprocal rank fusion: each item scores the sum of 1 / (k + rank) over the rankings
    it is in (rank 1 is the best), so an item high in several outranks one high in one."""
    scores: dict[K, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return scores


def fuse(words: Sequence[asyncpg.Record], meaning: Sequence[asyncpg.Record]) -> list[Hit]:
    """Documents ranked by fusing, for each kind of match, the order in which they first
    appear (their best passage's place); each shown by its passage with the best fused
    score, with the matched words marked when its words matched."""
    documents = rrf([_first_places(words), _first_places(meaning)])
    passages = rrf([[r["id"] for r in words], [r["id"] for r in meaning]])
    rows = {r["id"]: r for r in meaning} | {r["id"]: r for r in words}
    best: dict[object, asyncpg.Record] = {}
    for chunk_id in sorted(passages, key=lambda c: -passages[c]):
        best.setdefault(rows[chunk_id]["document_id"], rows[chunk_id])
    order = sorted(documents, key=lambda d: (-documents[d], best[d]["title"]))
    return [Hit(title=best[d]["title"], source=best[d]["source"], snippet=_snippet(best[d]))
            for d in order]


def _first_places(rows: Sequence[asyncpg.Record]) -> list[object]:
    return list(dict.fromkeys(r["document_id"] for r in rows))


def _snippet(row: asyncpg.Record) -> str:
    """The full-text headline when the passage matched by its words, else its opening."""
    headline = row.get("snippet")  # only full-text rows have one
    if headline is not None:
        return str(headline)
    opening = " ".join(str(row["opening"]).split())
    if len(opening) <= SNIPPET_CHARS:
        return opening
    return opening[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …"
