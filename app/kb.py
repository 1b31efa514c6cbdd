"""Filling the knowledge base: Markdown documents split at their `##` headings (the seeded
corpus) and the text of uploaded files, each kept whole in `kb_documents` and in passages
(`kb_chunks`) that `search` finds by words (full-text) and by meaning (vectors)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import asyncpg

from tools.embeddings import Embedder, EmbeddingUnavailable, literal

log = logging.getLogger("cadre.kb")

MAX_BODY_CHARS = 1_000_000
# A passage: long enough to carry a point, well inside e5's 512 tokens (about 300 here), and
# cut where the text breaks (paragraph, then sentence, line, word) between MIN and MAX.
MIN_CHUNK_CHARS = 800
MAX_CHUNK_CHARS = 1200
# The next passage starts again at a sentence within this many characters before the cut, so
# a point made across the cut is whole in one of the two.
OVERLAP_CHARS = 200
# Passages per embeddings request: the embedded model runs one request at a time, and at
# about 0.3 s per passage a small batch lets a task's query embedding in between.
EMBED_BATCH = 8

_BREAKS = (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"(?<=[.!?])\s+"), re.compile(r"\n"),
           re.compile(r"\s+"))
_STARTS = (re.compile(r"(?<=[.!?])\s+|\n\s*"), re.compile(r"\s+"))


def sections(path: Path) -> list[tuple[str, str]]:
    """(title, body) for each `##` section of a Markdown file; the text before the first
    heading is titled with the file's `#` title."""
    text = path.read_text(encoding="utf-8", errors="replace")
    title_match = re.search(r"^# (.+)$", text, flags=re.M)
    doc_title = title_match.group(1).strip() if title_match else path.stem
    parts = re.split(r"^## ", text, flags=re.M)
    found = []
    if parts[0].strip():
        found.append((doc_title, parts[0].strip()))
    for part in parts[1:]:
        heading, _, body = part.partition("\n")
        if body.strip():
            found.append((f"{doc_title}: {heading.strip()}", body.strip()))
    return found


def chunk_spans(text: str) -> list[tuple[int, int]]:
    """Where each passage of `text` starts and ends, in order: one span for a text up to
    MAX_CHUNK_CHARS, else cuts at the best break between MIN and MAX characters in, each
    next span starting up to OVERLAP_CHARS before the previous one's end. Together they
    cover all of the text but the whitespace at the cuts."""
    start, end_of_text = _skip_space(text, 0), len(text.rstrip())
    spans: list[tuple[int, int]] = []
    while start < end_of_text:
        if end_of_text - start <= MAX_CHUNK_CHARS:
            spans.append((start, end_of_text))
            break
        end = _cut(text, start + MIN_CHUNK_CHARS, start + MAX_CHUNK_CHARS)
        spans.append((start, end))
        start = _resume(text, end - OVERLAP_CHARS, end)
    return spans


def chunks(text: str) -> list[str]:
    """The passages of `text` (see `chunk_spans`)."""
    return [text[start:end] for start, end in chunk_spans(text)]


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _cut(text: str, low: int, high: int) -> int:
    """The end of a passage: the last break of the best kind in text[low:high], else high."""
    for pattern in _BREAKS:
        found = [m.start() for m in pattern.finditer(text, low, high)]
        if found:
            return found[-1]
    return high


def _resume(text: str, low: int, end: int) -> int:
    """The start of the next passage: the first sentence (else word) in text[low:end], so
    the overlap is as long as it may be; `end` itself when there is none."""
    for pattern in _STARTS:
        for match in pattern.finditer(text, low, end):
            if match.end() < end:
                return match.end()
    return _skip_space(text, end)


async def seed(db: asyncpg.Pool, paths: list[Path], found: list[list[tuple[str, str]]],
               embedder: Embedder | None = None) -> int:
    """Index shared documents (idempotent: a section is keyed by file and heading, and only
    its changed passages are written again and lose their vectors). With `embedder`, every
    passage without a vector of its model is embedded (see `embed_missing`)."""
    count = 0
    for path, items in zip(paths, found, strict=True):
        for title, body in items:
            document_id = await db.fetchval(
                "INSERT INTO kb_documents (title, source, body) VALUES ($1, $2, $3) "
                "ON CONFLICT (source) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body "
                "RETURNING id",
                title, f"{path.name}#{title}", body[:MAX_BODY_CHARS])
            await write_chunks(db, str(document_id), title, body[:MAX_BODY_CHARS])
            count += 1
    await chunk_missing(db)
    if embedder is not None:
        await embed_missing(db, embedder)
    return count


async def index_upload(db: asyncpg.Pool, *, user_id: str, file_id: str, name: str,
                       text: str, embedder: Embedder | None = None) -> str | None:
    """Index an uploaded text file for its owner; the new document's id (None if this file
    was indexed before). With `embedder` its passages are embedded now; when that fails they
    stay, found by their words, and get vectors later (`embed_missing`)."""
    body = text[:MAX_BODY_CHARS]
    document_id = await db.fetchval(
        "INSERT INTO kb_documents (user_id, file_id, title, source, body) "
        "VALUES ($1::uuid, $2::uuid, $3, $4, $5) ON CONFLICT (source) DO NOTHING RETURNING id",
        user_id, file_id, name, f"upload:{file_id}/{name}", body)
    if document_id is None:
        return None
    await write_chunks(db, str(document_id), name, body)
    if embedder is not None:
        await embed_missing(db, embedder, document_id=str(document_id))
    return str(document_id)


async def write_chunks(db: asyncpg.Pool, document_id: str, title: str, body: str) -> None:
    """Make a document's passages those of `body`: a passage whose text is unchanged keeps
    its row and vector; a changed one is rewritten without a vector; extra ones go."""
    passages = chunks(body)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO kb_chunks (document_id, user_id, ordinal, title, body)
            SELECT $1::uuid, (SELECT user_id FROM kb_documents WHERE id = $1::uuid),
                   t.ordinal - 1, $2, t.body
            FROM unnest($3::text[]) WITH ORDINALITY AS t(body, ordinal)
            ON CONFLICT (document_id, ordinal) DO UPDATE
                SET title = EXCLUDED.title, body = EXCLUDED.body,
                    embedding = NULL, embedding_model = NULL
                WHERE kb_chunks.title IS DISTINCT FROM EXCLUDED.title
                   OR kb_chunks.body IS DISTINCT FROM EXCLUDED.body
            """, document_id, title, passages)
        await conn.execute("DELETE FROM kb_chunks WHERE document_id = $1::uuid AND ordinal >= $2",
                           document_id, len(passages))


async def chunk_missing(db: asyncpg.Pool) -> int:
    """Cut into passages the documents that have none (indexed before passages existed):
    without passages a document is not found at all."""
    rows = await db.fetch(
        "SELECT d.id, d.title, d.body FROM kb_documents d "
        "WHERE NOT EXISTS (SELECT 1 FROM kb_chunks c WHERE c.document_id = d.id)")
    for row in rows:
        await write_chunks(db, str(row["id"]), row["title"], row["body"])
    return len(rows)


async def embed_missing(db: asyncpg.Pool, embedder: Embedder, *,
                        document_id: str | None = None) -> int:
    """Embed the passages (of one document, or all) without a vector of `embedder.model`,
    a few at a time, each batch stored as it comes back; how many were embedded. When the
    endpoint fails the rest keep no vector (a warning says so) and are found by their words
    until a later call embeds them."""
    done, after = 0, 0
    while True:
        rows = await db.fetch(
            "SELECT id, title, body FROM kb_chunks "
            "WHERE id > $1 AND embedding_model IS DISTINCT FROM $2 "
            "AND ($3::uuid IS NULL OR document_id = $3::uuid) ORDER BY id LIMIT $4",
            after, embedder.model, document_id, EMBED_BATCH)
        if not rows:
            return done
        try:
            vectors = await embedder.embed([passage_text(r["title"], r["body"]) for r in rows],
                                           "passage")
        except EmbeddingUnavailable as exc:
            log.warning("knowledge base: %d passage(s) left without vectors (found by words "
                        "only until embedded): %s", len(rows), exc)
            return done
        # A passage rewritten meanwhile keeps no vector of its old text.
        await db.executemany(
            "UPDATE kb_chunks SET embedding = $2::vector, embedding_model = $3 "
            "WHERE id = $1 AND title = $4 AND body = $5",
            [(r["id"], literal(v), embedder.model, r["title"], r["body"])
             for r, v in zip(rows, vectors, strict=True)])
        done += len(rows)
        after = rows[-1]["id"]


def passage_text(title: str, body: str) -> str:
    """What a passage is embedded as: its document's title gives the passage its context."""
    return f"{title}\n\n{body}"


class Indexer:
    """Embeds passages in the background of the API: the ones an upload just wrote (its
    request does not wait for them, at about 0.3 s a passage on the embedded model) and, at
    start, any left without vectors (the seeded corpus, a failed attempt, a new model)."""

    def __init__(self, db: asyncpg.Pool, embedder: Embedder) -> None:
        self.db, self.embedder = db, embedder
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop, with a first pass (from the API's start-up, so that no request's
        context, its trace among it, is the loop's)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="kb-indexer")
        self.nudge()

    def nudge(self) -> None:
        """Ask for a pass over the passages without vectors (soon, not now)."""
        self._wanted.set()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await embed_missing(self.db, self.embedder)
            except Exception:  # the database, say; the loop lives on and the next nudge retries
                log.exception("knowledge base: embedding passages failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@asynccontextmanager
async def indexing(db: asyncpg.Pool, embedder: Embedder | None) -> AsyncIterator[Indexer | None]:
    """For the API's lifetime: documents without passages cut now; with an (open) embedder,
    an `Indexer` started on the passages without vectors, and stopped on exit (the embedder
    is the caller's to close). None without an embedder: the knowledge base is then found
    by words only."""
    await chunk_missing(db)
    if embedder is None:
        yield None
        return
    indexer = Indexer(db, embedder)
    indexer.start()
    try:
        yield indexer
    finally:
        await indexer.aclose()
