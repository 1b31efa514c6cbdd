"""Uploaded files: stored on local disk under CADRE_HOME/files (the API and the workers of one
deployment share it), described in the `files` table, attached to tasks, and handed to the
task's sandbox read-only as /workspace/inputs/<name>."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import UploadFile

from app.kb import Indexer, index_upload
from app.problems import Problem

MAX_FILE_BYTES = 25 * 1024 * 1024
_CHUNK = 1024 * 1024
_TEXT_TYPES = {".csv": "text/csv", ".tsv": "text/tab-separated-values", ".txt": "text/plain",
               ".md": "text/markdown", ".json": "application/json"}


def _safe_name(name: str) -> str:
    base = Path(name.replace("\\", "/")).name.strip() or "upload"
    cleaned = re.sub(r"[^A-Za-z0-9._ -]", "_", base)[:120].lstrip(".")
    return cleaned or "upload"


def _detect(name: str, head: bytes) -> str | None:
    """The content type from the bytes themselves (a name alone is not trusted)."""
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the chunk's end
            return None
    return _TEXT_TYPES.get(Path(name).suffix.lower(), "text/plain")


class FileStore:
    def __init__(self, root: Path, db: asyncpg.Pool, indexer: Indexer | None = None) -> None:
        self.root = root
        self.db = db
        # Embeds what uploads add to the knowledge base, after their requests (None: no
        # embeddings here, so uploads are found by their words only).
        self.indexer = indexer

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    async def save(self, user_id: str, upload: UploadFile) -> dict[str, Any]:
        """Store an upload (size-limited, type detected from its content)."""

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await upload.read(_CHUNK):
                yield chunk

        return await self._store(user_id, upload.filename or "upload", chunks())

    async def save_path(self, user_id: str, name: str, source: Path) -> dict[str, Any]:
        """Store a file already on this machine (the chat UI's uploads), with the same checks
        as an upload through the API."""
        handle = await asyncio.to_thread(source.open, "rb")

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                yield chunk

        try:
            return await self._store(user_id, name, chunks())
        finally:
            await asyncio.to_thread(handle.close)

    async def _store(self, user_id: str, filename: str,
                     chunks: AsyncIterator[bytes]) -> dict[str, Any]:
        name = _safe_name(filename)
        file_id = str(uuid.uuid4())
        target = self.path(file_id)
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        digest, size, content_type = hashlib.sha256(), 0, None
        handle = await asyncio.to_thread(target.open, "wb")
        try:
            async for chunk in chunks:
                if content_type is None:
                    content_type = _detect(name, chunk)
                    if content_type is None:
                        raise Problem("unsupported-media-type", 415,
                                      "only text (CSV, TSV, TXT, Markdown, JSON) and PDF files "
                                      "can be uploaded")
                if content_type != "application/pdf" and b"\x00" in chunk:
                    # Text has no NUL bytes (nor can PostgreSQL store them): a binary file.
                    raise Problem("unsupported-media-type", 415,
                                  "the file contains NUL bytes, so it is not text; upload CSV, "
                                  "TSV, TXT, Markdown or JSON as text, or a PDF")
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise Problem("payload-too-large", 413,
                                  f"files are limited to {MAX_FILE_BYTES // (1024 * 1024)} MiB")
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
        except BaseException:
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(target.unlink, missing_ok=True)
            raise
        await asyncio.to_thread(handle.close)
        if size == 0:
            await asyncio.to_thread(target.unlink, missing_ok=True)
            raise Problem("invalid-request", 422, "the file is empty")
        row = await self.db.fetchrow(
            "INSERT INTO files (id, user_id, name, content_type, size_bytes, sha256) "
            "VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6) "
            "RETURNING id, name, content_type, size_bytes, sha256, created_at",
            file_id, user_id, name, content_type, size, digest.hexdigest())
        if content_type != "application/pdf":
            # Text uploads are searchable by their owner's tasks.
            text = await asyncio.to_thread(target.read_text, encoding="utf-8", errors="replace")
            await index_upload(self.db, user_id=user_id, file_id=file_id, name=name, text=text)
            if self.indexer is not None:
                self.indexer.nudge()
        return {**dict(row), "id": str(row["id"])}

    async def copy_to(self, task_id: str, target: Path) -> list[str]:
        """Place a task's attached files in `target` (the sandbox's inputs) by their names."""
        rows = await self.db.fetch(
            "SELECT f.id, f.name FROM task_files t JOIN files f ON f.id = t.file_id "
            "WHERE t.task_id = $1::uuid ORDER BY f.created_at", task_id)
        if not rows:
            return []

        def _copy() -> list[str]:
            target.mkdir(parents=True, exist_ok=True)
            for row in rows:
                shutil.copyfile(self.path(str(row["id"])), target / row["name"])
            return [row["name"] for row in rows]

        return await asyncio.to_thread(_copy)
