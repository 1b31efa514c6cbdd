"""What the TOML configuration files (the policy, the agent profiles) share: errors that
name the file and the line the problem is on."""

from __future__ import annotations

import re
from pathlib import Path


def read_text(path: Path, what: str, error: type[ValueError]) -> str:
    """The file's text, or `error` saying which file could not be read and why."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None


class TomlFile:
    """A TOML file's text, for errors that point at a line in it."""

    def __init__(self, text: str, source: str, *, error: type[ValueError]) -> None:
        self.lines = text.splitlines()
        self.source = source
        self.error = error

    def fail(self, problem: str, *, section: str | None = None, index: int = 0,
             token: str | None = None) -> ValueError:
        line = self._locate(section, index, token)
        where = f"{self.source}, line {line}" if line else self.source
        return self.error(f"{where}: {problem}")

    def _locate(self, section: str | None, index: int, token: str | None) -> int | None:
        """The line of `token` inside the `index`-th `[section]`/`[[section]]` (1-based)."""
        start, end = 0, len(self.lines)
        if section is not None:
            header = re.compile(r"^\s*\[\[?\s*" + re.escape(section) + r"\s*\]\]?\s*(#.*)?$")
            found = [i for i, line in enumerate(self.lines) if header.match(line)]
            if index < len(found):
                start = found[index]
                end = next((i for i in range(start + 1, len(self.lines))
                            if self.lines[i].lstrip().startswith("[")), len(self.lines))
                if token is None:
                    return start + 1
        if token is not None:
            pattern = re.compile(r"(?<![\w.-])" + re.escape(token) + r"(?![\w.-])")
            for i in range(start, end):
                if pattern.search(self.lines[i].split("#", 1)[0]):
                    return i + 1
            return start + 1 if section is not None else None
        return None
