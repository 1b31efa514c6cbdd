"""Agent profiles: the worker agents a manager may delegate part of a task to.

A profile names the agent, says in one line what it is for (the manager reads it), gives its
instructions, the tools it may call (a subset of the deployment's, still under the role
policy: a profile never widens what a user's role may do), and optionally another model and
an iteration cap. They are read from a TOML file (`guardrails/agents.toml` by default,
CADRE_AGENTS_FILE for another) and validated when a worker starts; a mistake is an
`AgentsError` naming the file and the line."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrails.tomlfile import TomlFile, read_text

DEFAULT_FILE = Path(__file__).with_name("agents.toml")
DEFAULT_MAX_ITERATIONS = 8
RESERVED = frozenset({"manager"})  # the agent that delegates
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_KEYS = ("name", "description", "instructions", "tools", "model", "max_iterations")


class AgentsError(ValueError):
    """An agent profiles file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, kw_only=True)
class AgentProfile:
    name: str
    description: str
    instructions: str
    tools: tuple[str, ...]
    model: str | None = None
    max_iterations: int = DEFAULT_MAX_ITERATIONS


@dataclass(frozen=True, kw_only=True)
class AgentProfiles:
    source: str
    profiles: dict[str, AgentProfile]

    def __iter__(self) -> Any:
        return iter(self.profiles.values())

    def __len__(self) -> int:
        return len(self.profiles)

    def get(self, name: str) -> AgentProfile | None:
        return self.profiles.get(name)


def load_agents(path: Path | None = None, *,
                known_tools: Iterable[str] | None = None) -> AgentProfiles:
    """Read and validate a profiles file (the bundled one when `path` is None); tool names
    are checked against `known_tools` when given. Raises AgentsError naming file and line."""
    path = path or DEFAULT_FILE
    text = read_text(path, "agent profiles file", AgentsError)
    return parse_agents(text, source=str(path), known_tools=known_tools)


def parse_agents(text: str, *, source: str = "<agents>",
                 known_tools: Iterable[str] | None = None) -> AgentProfiles:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AgentsError(f"{source}: not valid TOML: {exc}") from None
    known = set(known_tools) if known_tools is not None else None
    return _Validator(text, source, known).run(data)


class _Validator(TomlFile):
    def __init__(self, text: str, source: str, known: set[str] | None) -> None:
        super().__init__(text, source, error=AgentsError)
        self.known = known

    def run(self, data: dict[str, Any]) -> AgentProfiles:
        unknown = set(data) - {"version", "agents"}
        if unknown:
            key = sorted(unknown)[0]
            raise self.fail(f"unknown top-level key {key!r}; expected version, agents",
                            token=key)
        if data.get("version", 1) != 1:
            raise self.fail(f"unsupported version {data['version']!r}; this Cadre reads "
                            "version 1", token="version")
        entries = data.get("agents")
        if not isinstance(entries, list) or not entries:
            raise self.fail("no agents: add an [[agents]] table per profile", token="agents")
        profiles: dict[str, AgentProfile] = {}
        for index, entry in enumerate(entries):
            profile = self.profile(entry, index)
            if profile.name in profiles:
                raise self.fail(f"a second agent named {profile.name!r}: names are unique",
                                section="agents", index=index, token="name")
            profiles[profile.name] = profile
        return AgentProfiles(source=self.source, profiles=profiles)

    def profile(self, entry: Any, index: int) -> AgentProfile:
        def fail(problem: str, token: str | None = None) -> ValueError:
            return self.fail(problem, section="agents", index=index, token=token)

        if not isinstance(entry, dict):
            raise fail("each agent is a table: [[agents]]")
        extra = set(entry) - set(_KEYS)
        if extra:
            key = sorted(extra)[0]
            raise fail(f"unknown key {key!r}; expected {', '.join(_KEYS)}", key)
        for key in ("name", "description", "instructions"):
            value = entry.get(key)
            if not isinstance(value, str) or not value.strip():
                raise fail(f"`{key}` is required: a non-empty string", key)
        name = entry["name"]
        if not _NAME.match(name):
            raise fail(f"name {name!r}: use letters, digits, _ and - (at most 40), starting "
                       "with a letter", "name")
        if name in RESERVED:
            raise fail(f"name {name!r} is the delegating agent's; choose another", "name")
        description = entry["description"].strip()
        if "\n" in description or len(description) > 200:
            raise fail("`description` is one line of at most 200 characters (the manager "
                       "reads it to choose)", "description")
        tools = entry.get("tools", [])
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            raise fail("`tools` is a list of tool names, e.g. [\"search\", \"fetch_url\"]",
                       "tools")
        for tool in tools:
            if self.known is not None and tool not in self.known:
                raise fail(f"unknown tool {tool!r}; known tools: {', '.join(sorted(self.known))}",
                           tool)
        model = entry.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise fail("`model` is a model name, e.g. \"gpt-4.1-mini\"", "model")
        cap = entry.get("max_iterations", DEFAULT_MAX_ITERATIONS)
        if not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap <= 100:
            raise fail(f"`max_iterations` is a whole number from 1 to 100, not {cap!r}",
                       "max_iterations")
        return AgentProfile(name=name, description=description,
                            instructions=entry["instructions"].strip(),
                            tools=tuple(dict.fromkeys(tools)), model=model, max_iterations=cap)
