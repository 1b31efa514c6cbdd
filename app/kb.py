"""Filling the knowledge base: Markdown documents split at their `##` headings (the seeded
corpus) and the text of uploaded files."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

MAX_BODY_CHARS = 1_000_000


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


async def seed(db: asyncpg.Pool, paths: list[Path], found: list[list[tuple[str, str]]]) -> int:
    """Index shared documents (idempotent: a section is keyed by file and heading)."""
    count = 0
    for path, items in zip(paths, found, strict=True):
        for title, body in items:
            await db.execute(
                "INSERT INTO kb_documents (title, source, body) VALUES ($1, $2, $3) "
                "ON CONFLICT (source) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body",
                title, f"{path.name}#{title}", body[:MAX_BODY_CHARS])
            count += 1
    return count


async def index_upload(db: asyncpg.Pool, *, user_id: str, file_id: str, name: str,
                       text: str) -> None:
    await db.execute(
        "INSERT INTO kb_documents (user_id, file_id, title, source, body) "
        "VALUES ($1::uuid, $2::uuid, $3, $4, $5) ON CONFLICT (source) DO NOTHING",
        user_id, file_id, name, f"upload:{file_id}/{name}", text[:MAX_BODY_CHARS])
