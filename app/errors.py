"""Errors that end a command with a clear, one-line reason instead of a traceback."""

from __future__ import annotations


class CadreError(Exception):
    """Base class for errors Cadre reports to a person as a single line."""


class ConfigError(CadreError):
    """A deployer's mistake. The message names the fix ("set DATABASE_URL to ...")."""


class StackError(CadreError):
    """A local service could not be started, reached or stopped; the message says why."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name), for one-line reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
