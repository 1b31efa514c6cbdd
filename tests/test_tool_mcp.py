"""MCP tools: a real stdio (and streamable HTTP) server from tests/mcp_server.py, listed from a
config file, its tools called through the Cadre tool contract."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tools import ToolContext, ToolOutcome, Toolset
from tools.mcp import MCPServerError, load_mcp_tools

SERVER = str(Path(__file__).with_name("mcp_server.py"))
SILENT = "import time; time.sleep(60)"
CTX = ToolContext(task_id="t", tool_call_id="c1")


def _config(tmp_path: Path, servers: dict[str, Any]) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return path


def _stdio(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [SERVER], "timeout": 20, **extra}


async def _load(tmp_path: Path, **extra: Any) -> Toolset:
    return await load_mcp_tools(_config(tmp_path, {"demo": _stdio(**extra)}))


def _servers_running(argument: str = SERVER) -> list[int]:
    """Our child processes with `argument` on their command line."""
    running = []
    for child in psutil.Process().children(recursive=True):
        try:
            if argument in child.cmdline():
                running.append(child.pid)
        except psutil.Error:  # it exited while we looked
            pass
    return running


def _get(toolset: Toolset, name: str) -> Any:
    tool = toolset.get(name)
    assert tool is not None, f"{name} not in {[t.name for t in toolset]}"
    return tool


async def test_tools_are_listed_with_descriptions_schemas_and_risk(tmp_path: Path) -> None:
    toolset = await _load(tmp_path, tools={"add": {"risk": "read_only"},
                                           "refuse": {"timeout": 3}})
    assert {t.name for t in toolset} == {"demo__add", "demo__text_shout", "demo__refuse",
                                         "demo__nap", "demo__whoami"}
    add = _get(toolset, "demo__add").schema()["function"]
    assert add["description"] == "Add two integers."
    assert add["parameters"]["required"] == ["a", "b"]
    assert add["parameters"]["properties"]["a"]["type"] == "integer"
    risks = {t.name: (t.risk, t.timeout) for t in toolset}
    assert risks["demo__add"] == ("read_only", 20)
    assert risks["demo__refuse"] == ("side_effect", 3)
    assert risks["demo__text_shout"] == ("side_effect", 20)


async def test_a_server_wide_risk_applies_to_its_tools(tmp_path: Path) -> None:
    toolset = await _load(tmp_path, risk="destructive", tools={"add": {"risk": "read_only"}})
    assert _get(toolset, "demo__add").risk == "read_only"
    assert _get(toolset, "demo__nap").risk == "destructive"


async def test_calls_return_results_and_model_visible_errors(tmp_path: Path) -> None:
    toolset = await _load(tmp_path, tools={"nap": {"timeout": 0.5}})
    add, shout, refuse, nap = (_get(toolset, f"demo__{n}")
                               for n in ("add", "text_shout", "refuse", "nap"))
    assert await add.invoke(CTX, {"a": 2, "b": 40}) == ToolOutcome(ok=True, content="42",
                                                                untrusted=True)
    assert await shout.invoke(CTX, {"text": "quiet"}) == ToolOutcome(ok=True, content="QUIET",
                                                                      untrusted=True)
    bad = await add.invoke(CTX, {"a": "two"})
    assert bad == ToolOutcome(ok=False, content="invalid arguments for demo__add: arguments: 'b' is "
                                                "a required property; a: 'two' is not of type 'integer'")
    refused = await refuse.invoke(CTX, {"reason": "not today"})
    assert not refused.ok and refused.content.endswith("refused: not today")
    slow = await nap.invoke(CTX, {"seconds": 30})
    assert slow == ToolOutcome(ok=False, content="demo__nap timed out after 0.5s")
    # each call's server process is gone once the call is, a timed-out one included
    await asyncio.sleep(0.2)
    assert _servers_running() == []


async def test_stdio_servers_get_configured_env_not_the_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADRE_TEST_USER", "the worker's secret")
    monkeypatch.setenv("CADRE_TEST_NAME", "ann")
    plain = await _load(tmp_path)
    assert (await _get(plain, "demo__whoami").invoke(CTX, {})).content == "nobody"
    given = await _load(tmp_path, env={"CADRE_TEST_USER": "${CADRE_TEST_NAME}"})
    assert (await _get(given, "demo__whoami").invoke(CTX, {})).content == "ann"


@pytest.fixture
async def http_server() -> AsyncIterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = await asyncio.create_subprocess_exec(sys.executable, SERVER, "--http", str(port),
                                                   stderr=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    await client.get(url)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_http_servers_get_headers_from_the_environment(
        tmp_path: Path, http_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADRE_TEST_TOKEN", "s3cret")
    toolset = await load_mcp_tools(_config(tmp_path, {"remote": {
        "url": http_server, "headers": {"Authorization": "Bearer ${CADRE_TEST_TOKEN}"}}}))
    whoami = _get(toolset, "remote__whoami")
    assert await whoami.invoke(CTX, {}) == ToolOutcome(ok=True, content="Bearer s3cret",
                                                           untrusted=True)
    assert await _get(toolset, "remote__add").invoke(CTX, {"a": 1, "b": 1}) == \
        ToolOutcome(ok=True, content="2", untrusted=True)


@pytest.mark.parametrize(("content", "problem"), [
    ("{not json", "Invalid JSON"),
    ('{"servers": {}}', "mcpServers: Field required"),
    ('{"mcpServers": {"x": {"command": "a", "url": "http://b"}}}', "either `command`"),
    ('{"mcpServers": {"x": {"command": "a", "rsik": "read_only"}}}',
     "mcpServers.x.rsik: Extra inputs are not permitted"),
    ('{"mcpServers": {"x": {"command": "a", "risk": "harmless"}}}', "mcpServers.x.risk: Input should be"),
    ('{"mcpServers": {"x": {"url": "http://b", "type": "stdio"}}}', "transport 'stdio' needs a `command`"),
    ('{"mcpServers": {"x y": {"command": "a"}}}', "server name 'x y' must be"),
    ('{"mcpServers": {"x": {"url": "http://b", "headers": {"A": "${CADRE_TEST_UNSET}"}}}}',
     r"server 'x': header 'A' uses \$\{CADRE_TEST_UNSET\}, which is not set"),
])
async def test_bad_config_files_say_what_is_wrong(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"MCP config {path}: .*{problem}"):
        await load_mcp_tools(path)


async def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"MCP config {tmp_path / 'nope.json'}: cannot read it"):
        await load_mcp_tools(tmp_path / "nope.json")


async def test_an_override_for_a_tool_the_server_lacks_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"server 'demo' has no tool 'ad' \(it offers add, nap, "):
        await _load(tmp_path, tools={"ad": {"risk": "read_only"}})


async def test_servers_that_cannot_start_are_named(tmp_path: Path) -> None:
    path = _config(tmp_path, {
        "ok": _stdio(),
        "exits": {"command": sys.executable, "args": ["-c", "raise SystemExit(3)"], "timeout": 20},
        "missing": {"command": str(tmp_path / "no-such-server")},
        "silent": {"command": sys.executable, "args": ["-c", SILENT], "timeout": 1},
    })
    with pytest.raises(MCPServerError) as raised:
        await load_mcp_tools(path)
    message = str(raised.value)
    assert message.startswith(f"MCP servers in {path} could not be listed: ")
    # the exit is seen as a closed connection, by the session or by the transport first
    assert re.search(r"'exits': [^;]*[Cc]onnection closed", message)
    assert "'missing': FileNotFoundError" in message
    assert "'silent': TimeoutError: no tool list within 1s" in message
    assert "'ok'" not in message
    assert _servers_running() == _servers_running(SILENT) == []


async def test_a_worker_offers_mcp_tools_from_cadre_mcp_config(tmp_path: Path) -> None:
    from app.errors import ConfigError
    from app.settings import Settings
    from app.tooling import worker_toolset

    good = _config(tmp_path, {"demo": _stdio(tools={"add": {"risk": "read_only"}})})
    toolset = await worker_toolset(await asyncio.to_thread(Settings.of, mcp_config=good))
    assert {"search", "fetch_url", "demo__add"} <= {t.name for t in toolset}
    outcome = await _get(toolset, "demo__add").invoke(CTX, {"a": 2, "b": 3})
    assert outcome.ok and outcome.content == "5"

    down = tmp_path / "down.json"
    down.write_text(json.dumps({"mcpServers": {"gone": {"command": "/nonexistent/server"},
                                               "demo": _stdio()}}))
    survived = await worker_toolset(await asyncio.to_thread(Settings.of, mcp_config=down))
    names = {t.name for t in survived}
    assert {"search", "demo__add"} <= names, "an unreachable server leaves the rest working"
    assert not any(t.name.startswith("gone__") for t in survived)

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json"):
        await worker_toolset(await asyncio.to_thread(Settings.of, mcp_config=broken))
