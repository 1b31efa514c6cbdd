"""Agent profiles (guardrails/agents.toml): the shipped ones are valid and say what the
issue asks (a researcher with search and fetch_url, an analyst with python and sql, a writer
with no tools); every mistake in a profiles file is refused with its file and line, at
worker start and by `cadre agents check`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.errors import ConfigError
from app.settings import Settings
from app.tooling import worker_agents
from guardrails.agents import DEFAULT_FILE, AgentsError, load_agents, parse_agents
from tests.cli import run_cadre
from tools import Toolset

KNOWN = {"search", "fetch_url", "python", "sql", "send_email"}
GOOD = '''version = 1

[[agents]]
name = "researcher"
description = "Finds sources."
instructions = "Research it."
tools = ["search", "fetch_url"]

[[agents]]
name = "cheap-writer"
description = "Writes."
instructions = "Write it."
model = "gpt-4.1-nano"
max_iterations = 2
'''


def test_the_shipped_profiles() -> None:
    agents = load_agents(known_tools=KNOWN)
    assert agents.source == str(DEFAULT_FILE)
    assert {p.name: p.tools for p in agents} == {
        "researcher": ("search", "fetch_url"), "analyst": ("python", "sql"), "writer": ()}
    assert all(p.description and "\n" not in p.description and p.instructions for p in agents)


def test_a_valid_file_reads_as_written() -> None:
    agents = parse_agents(GOOD, known_tools=KNOWN)
    writer = agents.get("cheap-writer")
    assert writer is not None and writer.model == "gpt-4.1-nano" and writer.max_iterations == 2
    assert writer.tools == ()
    researcher = agents.get("researcher")
    assert researcher is not None and researcher.model is None
    assert researcher.max_iterations == 8  # the default


@pytest.mark.parametrize(("change", "line", "problem"), [
    (('"search", "fetch_url"', '"search", "teleport"'), 7, "unknown tool 'teleport'"),
    (('name = "cheap-writer"', 'name = "researcher"'), 10, "a second agent named 'researcher'"),
    (('name = "cheap-writer"', 'name = "manager"'), 10, "is the delegating agent's"),
    (('name = "cheap-writer"', 'name = "cheap writer"'), 10, "use letters, digits"),
    (('description = "Writes."', 'description = ""'), 11, "`description` is required"),
    (('max_iterations = 2', 'max_iterations = 0'), 14, "from 1 to 100, not 0"),
    (('max_iterations = 2', 'max_iterations = "2"'), 14, "from 1 to 100, not '2'"),
    (('model = "gpt-4.1-nano"', 'modle = "gpt-4.1-nano"'), 13, "unknown key 'modle'"),
    (('tools = ["search", "fetch_url"]', 'tools = "search"'), 7, "`tools` is a list"),
])
def test_mistakes_name_their_line(change: tuple[str, str], line: int, problem: str) -> None:
    text = GOOD.replace(*change)
    with pytest.raises(AgentsError) as raised:
        parse_agents(text, source="agents.toml", known_tools=KNOWN)
    assert str(raised.value).startswith(f"agents.toml, line {line}: "), raised.value
    assert problem in str(raised.value)


def test_files_that_are_not_profiles() -> None:
    with pytest.raises(AgentsError, match="not valid TOML"):
        parse_agents("[[agents]\n")
    with pytest.raises(AgentsError, match=r"line 1: no agents"):
        parse_agents("agents = []\n")
    with pytest.raises(AgentsError, match="unknown top-level key 'agent'"):
        parse_agents(GOOD + "\n[agent]\nname = 'x'\n")


async def test_a_worker_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "agents.toml"
    await asyncio.to_thread(bad.write_text, GOOD.replace('"fetch_url"', '"fetch_page"'))
    settings = await asyncio.to_thread(Settings.of, agents_file=bad)
    with pytest.raises(ConfigError, match=r"line 7: unknown tool 'fetch_page'.*CADRE_AGENTS_FILE"):
        await asyncio.to_thread(worker_agents, settings, Toolset())
    missing = await asyncio.to_thread(Settings.of, agents_file=tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read it"):
        await asyncio.to_thread(worker_agents, missing, Toolset())


async def test_cadre_agents_check(tmp_path: Path, clean_env: dict[str, str]) -> None:
    good = await run_cadre("agents", "check", env=clean_env, cwd=tmp_path)
    assert good.code == 0, good.stderr
    assert "valid -- 3 agent(s)" in good.stdout
    assert "researcher   search, fetch_url; model the default; at most 8 iterations" in good.stdout
    bad = tmp_path / "agents.toml"
    await asyncio.to_thread(bad.write_text, GOOD.replace("max_iterations = 2",
                                                         "max_iterations = 500"))
    refused = await run_cadre("agents", "check", str(bad), env=clean_env, cwd=tmp_path)
    assert refused.code == 2 and "line 14: `max_iterations` is a whole number" in refused.stderr
    assert "Traceback" not in refused.stderr
