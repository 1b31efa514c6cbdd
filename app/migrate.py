"""Schema migrations: Cadre's tables through Alembic, LangGraph's through its own `setup()`."""

from __future__ import annotations

import asyncio
import functools
from urllib.parse import urlsplit, urlunsplit

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from sqlalchemy import create_engine, pool

from app.errors import StackError, first_line
from app.settings import redact_url

SCRIPT_LOCATION = "app:migrations"


def _sqlalchemy_url(database_url: str) -> str:
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def _alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # ConfigParser treats % as interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", _sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def probe(database_url: str) -> None:
    """Connect once, or raise a `StackError` that names DATABASE_URL and the fix."""
    try:
        with psycopg.connect(database_url, connect_timeout=5):
            pass
    except psycopg.Error as exc:
        raise StackError(
            f"cannot connect to PostgreSQL at DATABASE_URL={redact_url(database_url)} "
            f"({first_line(exc)}); fix DATABASE_URL, or unset it to use the embedded server"
        ) from None


def upgrade(database_url: str) -> None:
    """Bring the database to the newest schema. Safe to run any number of times."""
    command.upgrade(_alembic_config(database_url), "head")
    asyncio.run(_setup_checkpointer(database_url))


async def _setup_checkpointer(database_url: str) -> None:
    async with AsyncPostgresSaver.from_conn_string(database_url) as saver:
        await saver.setup()


def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    engine = create_engine(_sqlalchemy_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config("postgresql://unused/x")).get_current_head()
    assert head is not None
    return head
