"""Task artifacts: the files a task's code writes (charts, reports, cleaned data). Each is a
row in `artifacts` (task, name, type, size, digest, where it is stored) and its bytes live in
a store: a directory on local disk by default, an S3 bucket when configured. The API lists
and serves them; `send_email` attaches them."""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg


class ArtifactStore(Protocol):
    """Where artifact bytes live. `put` returns the URI recorded in the row."""

    async def put(self, key: str, data: bytes, content_type: str) -> str: ...

    async def get(self, uri: str) -> bytes: ...


@dataclass(frozen=True, kw_only=True)
class DiskStore:
    """Artifacts under one directory (shared by the API and the workers of a deployment)."""

    root: Path

    def _path(self, key: str) -> Path:
        return self.root / key

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self._path(key)

        def _write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            partial.replace(path)  # readers never see half a file

        await asyncio.to_thread(_write)
        return f"file:{key}"

    async def get(self, uri: str) -> bytes:
        key = uri.removeprefix("file:")
        if ".." in Path(key).parts:
            raise ValueError(f"bad artifact URI {uri!r}")
        return await asyncio.to_thread(self._path(key).read_bytes)


class S3Store:
    """Artifacts in an S3 bucket (or anything speaking its API) under a key prefix. The
    boto3 client is made on first use, in a thread (building one reads files)."""

    def __init__(self, *, bucket: str, prefix: str = "artifacts/",
                 client_factory: Callable[[], Any]) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        def _write() -> None:
            self._get_client().put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                                          ContentType=content_type)

        await asyncio.to_thread(_write)
        return f"s3://{self.bucket}/{self.prefix}{key}"

    async def get(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")

        def _read() -> bytes:
            body = self._get_client().get_object(Bucket=bucket, Key=key)["Body"]
            with body:
                return bytes(body.read())

        return await asyncio.to_thread(_read)


@dataclass(frozen=True, kw_only=True)
class Artifact:
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    uri: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "content_type": self.content_type,
                "size_bytes": self.size_bytes, "sha256": self.sha256}


def content_type_of(name: str) -> str:
    # mimetypes reads the system's tables on first use: call it off the event loop.
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class Artifacts:
    """A task's artifacts: rows in Postgres, bytes in the store."""

    def __init__(self, db: asyncpg.Pool, store: ArtifactStore) -> None:
        self.db = db
        self.store = store

    async def save(self, task_id: str, name: str, data: bytes,
                   content_type: str | None = None) -> Artifact:
        """Store `data` as the task's artifact `name`, replacing an earlier one of that name."""
        if content_type is None:
            content_type = await asyncio.to_thread(content_type_of, name)
        digest = hashlib.sha256(data).hexdigest()
        key = f"{task_id}/{digest[:16]}-{name.replace('/', '__')}"
        uri = await self.store.put(key, data, content_type)
        await self.db.execute(
            """
            INSERT INTO artifacts (task_id, name, content_type, size_bytes, sha256, uri)
            VALUES ($1::uuid, $2, $3, $4, $5, $6)
            ON CONFLICT (task_id, name) DO UPDATE
               SET content_type = EXCLUDED.content_type, size_bytes = EXCLUDED.size_bytes,
                   sha256 = EXCLUDED.sha256, uri = EXCLUDED.uri, updated_at = now()
            """, task_id, name, content_type, len(data), digest, uri)
        return Artifact(name=name, content_type=content_type, size_bytes=len(data),
                        sha256=digest, uri=uri)

    async def collect(self, task_id: str, directory: Path, names: list[str]) -> list[Artifact]:
        """Save the files a sandbox call wrote (copied by the sandbox into `directory`, a
        path `a/b.png` as `a__b.png`); unchanged ones are not stored again."""
        known = {r["name"]: r["sha256"] for r in await self.db.fetch(
            "SELECT name, sha256 FROM artifacts WHERE task_id = $1::uuid", task_id)}
        saved = []
        for name in names:
            path = directory / name.replace("/", "__")
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                continue  # not a regular file, or over the size limit: the sandbox skipped it
            if known.get(name) == hashlib.sha256(data).hexdigest():
                continue
            saved.append(await self.save(task_id, name, data))
        return saved

    async def list(self, task_id: str) -> list[Artifact]:
        rows = await self.db.fetch(
            "SELECT name, content_type, size_bytes, sha256, uri FROM artifacts "
            "WHERE task_id = $1::uuid ORDER BY created_at, name", task_id)
        return [Artifact(**dict(r)) for r in rows]

    async def find(self, task_id: str, name: str) -> Artifact | None:
        row = await self.db.fetchrow(
            "SELECT name, content_type, size_bytes, sha256, uri FROM artifacts "
            "WHERE task_id = $1::uuid AND name = $2", task_id, name)
        return Artifact(**dict(row)) if row else None

    async def read(self, artifact: Artifact) -> bytes:
        return await self.store.get(artifact.uri)
