"""Tool plug-ins: an installed distribution declaring `cadre.tools` entry points, a CADRE_TOOLS
`module:attribute` name, and both together with an MCP server's tools."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tools import ToolContext, ToolOutcome
from tools.mcp import load_mcp_tools
from tools.registry import include, load_toolset

CTX = ToolContext(task_id="t", tool_call_id="c1")

PLUGIN = '''
from tools import ToolContext, Toolset

toolset = Toolset()


@toolset.tool(risk="read_only")
async def {name}_greet(ctx: ToolContext, who: str) -> str:
    """Greet someone."""
    return f"hello {{who}} from {name}"


def not_a_tool() -> None:
    pass
'''


def _install(site: Path, entry_points: dict[str, str]) -> str:
    """A plug-in distribution laid out as pip installs one: its module and a dist-info folder."""
    name = f"plugin_{uuid.uuid4().hex[:8]}"
    (site / f"{name}.py").write_text(textwrap.dedent(PLUGIN.format(name=name)))
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{ep} = {target.format(module=name)}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cadre.tools]\n{lines}")
    return name


async def test_installed_entry_points_are_discovered_and_callable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _install(tmp_path, {"greetings": "{module}:toolset"})
    monkeypatch.syspath_prepend(str(tmp_path))
    # discovery scans site-packages: off the loop, as the worker does it
    toolset = await asyncio.to_thread(load_toolset)
    greet = toolset.get(f"{name}_greet")
    assert greet is not None and greet.risk == "read_only"
    assert await greet.invoke(CTX, {"who": "ann"}) == ToolOutcome(ok=True,
                                                                  content=f"hello ann from {name}")


async def test_a_broken_entry_point_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, {"broken": "{module}:not_a_tool"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match="entry point broken is a function, not a Toolset or a Tool"):
        await asyncio.to_thread(load_toolset)


async def test_cadre_tools_names_load_a_toolset_or_a_single_tool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _install(tmp_path, {})
    (tmp_path / f"{name}_one.py").write_text(f"from {name} import toolset\n"
                                             f"greet = toolset.get('{name}_greet')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    whole = await asyncio.to_thread(load_toolset, [f"{name}:toolset"])
    single = await asyncio.to_thread(load_toolset, [f"{name}_one:greet"])
    assert [t.name for t in whole] == [t.name for t in single] == [f"{name}_greet"]
    with pytest.raises(ValueError, match=r"must look like package\.module:attribute"):
        await asyncio.to_thread(load_toolset, [name])
    with pytest.raises(TypeError, match=f"{name}:not_a_tool is a function"):
        await asyncio.to_thread(load_toolset, [f"{name}:not_a_tool"])


async def test_entry_point_and_mcp_tools_share_one_toolset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _install(tmp_path, {"greetings": "{module}:toolset"})
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"demo": {
        "command": sys.executable, "args": [str(Path(__file__).with_name("mcp_server.py"))]}}}))
    toolset = await asyncio.to_thread(load_toolset)
    include(toolset, await load_mcp_tools(config), source=f"MCP config {config}")
    greet, add = toolset.get(f"{name}_greet"), toolset.get("demo__add")
    assert greet is not None and add is not None
    assert (await greet.invoke(CTX, {"who": "bo"})).content == f"hello bo from {name}"
    assert await add.invoke(CTX, {"a": 1, "b": 2}) == ToolOutcome(ok=True, content="3",
                                                                  untrusted=True)
    assert {s["function"]["name"] for s in toolset.schemas()} >= {f"{name}_greet", "demo__add"}
