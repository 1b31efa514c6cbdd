"""`search`: full-text search over the seeded corpus and the user's own uploads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

from app import kb
from tools import ToolContext, ToolOutcome
from tools.builtin import ToolDeps, builtin_toolset

DOC = """# Cadre handbook

Cadre runs tasks for people.

## Approvals

A side effect such as sending an email waits for a person to click Approve.

## Budgets

Every task has a token budget; the run stops before a model call would exceed it.
"""


async def _task_for(db: asyncpg.Pool, email: str) -> tuple[str, str]:
    user = await db.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)
    conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
    task = await db.fetchval("INSERT INTO tasks (user_id, conversation_id, input) "
                             "VALUES ($1, $2, 'q') RETURNING id", user, conv)
    return str(user), str(task)


async def test_search_finds_seeded_sections_and_own_uploads_only(database_url: str,
                                                                 tmp_path: Path) -> None:
    handbook = tmp_path / "handbook.md"
    await asyncio.to_thread(handbook.write_text, DOC)
    found = await asyncio.to_thread(kb.sections, handbook)
    assert [t for t, _ in found] == ["Cadre handbook", "Cadre handbook: Approvals",
                                     "Cadre handbook: Budgets"]
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        assert await kb.seed(db, [handbook], [found]) == 3
        assert await kb.seed(db, [handbook], [found]) == 3, "seeding again changes nothing"
        _, ana_task = await _task_for(db, "ana@example.com")
        eve, eve_task = await _task_for(db, "eve@example.com")
        file_id = await db.fetchval(
            "INSERT INTO files (user_id, name, content_type, size_bytes, sha256) "
            "VALUES ($1::uuid, 'q3-notes.txt', 'text/plain', 10, 'x') RETURNING id", eve)
        await kb.index_upload(db, user_id=eve, file_id=str(file_id), name="q3-notes.txt",
                              text="Quarterly revenue grew because of the new espresso grinder.")
        tool = builtin_toolset(with_sql=False).get("search")
        assert tool is not None and tool.risk == "read_only"

        async def search(task: str, query: str) -> dict:  # type: ignore[type-arg]
            ctx = ToolContext(task_id=task, tool_call_id="c", deps=ToolDeps(db=db))
            outcome = await tool.invoke(ctx, {"query": query})
            assert outcome.ok and outcome.untrusted, outcome
            return json.loads(outcome.content)  # type: ignore[no-any-return]

        approvals = await search(ana_task, "who approves sending an email?")
        assert "untrusted" not in approvals
        assert approvals["results"][0]["title"] == "Cadre handbook: Approvals"
        assert approvals["results"][0]["source"] == "handbook.md#Cadre handbook: Approvals"
        assert "<b>email</b>" in approvals["results"][0]["snippet"]
        assert (await search(eve_task, "espresso grinder revenue"))["results"][0]["title"] == \
            "q3-notes.txt"
        assert (await search(ana_task, "espresso grinder revenue"))["results"] == [], \
            "another user's upload is not found"
        assert (await search(ana_task, "zebra unicorn"))["results"] == []
        empty = await tool.invoke(ToolContext(task_id=ana_task, tool_call_id="c",
                                              deps=ToolDeps(db=db)), {"query": "  "})
        assert empty == ToolOutcome(ok=False, content="give a few words to search for")
    finally:
        await db.close()
