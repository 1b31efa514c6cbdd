"""Tools from MCP servers, listed in a JSON file of the shape most MCP clients read:

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/data"],
                  "risk": "read_only", "tools": {"write_file": {"risk": "destructive"}}},
        "tickets": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"},
                    "timeout": 30}}}

A server is stdio (`command`, `args`, `env`, `cwd`) or HTTP (`url`, `headers`, `transport`
"streamable_http" by default or "sse"; `type` is accepted for `transport`, as some clients
write it). Cadre adds `risk`, `timeout` and per-tool `tools` overrides of both. `${VAR}` in
`url`, `headers` and `env` values comes from the worker's environment; a stdio server otherwise
inherits only a minimal environment (PATH, HOME, ...), never the worker's secrets.

A server's tools are named `<server>__<tool>`: servers cannot collide with each other or with
the built-in tools, and the name keeps to the OpenAI function-name pattern (other characters
become `_`; a name past 64 characters is cut and given a hash of the whole).

Risk defaults to "side_effect": a remote tool's own annotations (`readOnlyHint`) come from
the server and MCP says to treat them as untrusted, so only the deployer can call a tool
read-only (or destructive) by naming it in the file.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import anyio
import jsonschema
from langchain_core.tools import BaseTool, ToolException
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.sessions import (
    Connection,
    SSEConnection,
    StdioConnection,
    StreamableHttpConnection,
)
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from guardrails.policy import Risk
from tools.contract import (
    Tool,
    ToolContext,
    ToolError,
    ToolFunction,
    Toolset,
    describe_validation_error,
)

__all__ = ["MCPServerError", "load_mcp_tools"]

_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
_VARIABLE = re.compile(r"\$\{([^}]+)\}")
_MAX_NAME = 64


class MCPServerError(RuntimeError):
    """An MCP server named in the config could not be started, reached or listed."""


class _ToolOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    risk: Risk | None = None
    timeout: PositiveFloat | None = None


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    args: list[str] = []
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    transport: Literal["stdio", "streamable_http", "streamable-http", "http", "sse"] | None = Field(
        None, validation_alias=AliasChoices("transport", "type"))
    risk: Risk = "side_effect"
    timeout: PositiveFloat = 60.0
    tools: dict[str, _ToolOverride] = {}

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (a stdio server) or `url` (an HTTP server)")
        if self.command is not None:
            if self.transport not in (None, "stdio"):
                raise ValueError(f"transport {self.transport!r} needs a `url`, not a `command`")
            if self.headers is not None:
                raise ValueError("`headers` are for HTTP servers; a stdio server takes `env`")
        else:
            if self.transport == "stdio":
                raise ValueError("transport 'stdio' needs a `command`, not a `url`")
            if self.args or self.env is not None or self.cwd is not None:
                raise ValueError("`args`, `env` and `cwd` are for stdio servers; "
                                 "an HTTP server takes `headers`")
        return self


class _Config(BaseModel):
    # Other top-level keys are other clients' settings in a shared file; a server entry is ours.
    model_config = ConfigDict(extra="ignore")

    mcpServers: dict[str, _Server]  # the name every MCP client uses


async def load_mcp_tools(config_path: str | Path) -> Toolset:
    """The tools of every MCP server in the JSON file at `config_path`, as Cadre tools.

    Each server is asked for its tools once, here; each call then opens its own session (a new
    process for a stdio server), so calls from different tasks share no server state and a
    crashed server costs one failed call, not the worker. Raises `ValueError` naming the file
    for a bad config, `MCPServerError` naming each server that could not be listed."""
    toolset, failures = await load_mcp_servers(config_path)
    if failures:
        raise MCPServerError(f"MCP servers in {config_path} could not be listed: "
                             f"{'; '.join(failures)}")
    return toolset


async def load_mcp_servers(config_path: str | Path) -> tuple[Toolset, list[str]]:
    """Like `load_mcp_tools`, but a server that cannot be listed is left out: returns the
    tools of the servers that answered and one line per server that did not."""
    path = Path(config_path)
    config = await asyncio.to_thread(_read_config, path)
    client = MultiServerMCPClient({name: _connection(server, path) for name, server in
                                   config.mcpServers.items()}, handle_tool_errors=False)
    names = list(config.mcpServers)
    listed = await asyncio.gather(*(_list_tools(client, name, config.mcpServers[name])
                                    for name in names), return_exceptions=True)
    failures = [f"{name!r}: {_describe(result)}" for name, result in zip(names, listed, strict=True)
                if isinstance(result, BaseException)]
    toolset = Toolset()
    for name, lc_tools in zip(names, listed, strict=True):
        if isinstance(lc_tools, BaseException):
            continue
        try:
            tools = list(_tools_of(name, config.mcpServers[name], lc_tools, path))
        except MCPServerError as exc:
            failures.append(f"{name!r}: {exc}")
            continue
        for tool in tools:
            toolset.add(tool)
    return toolset, failures


def _read_config(path: Path) -> _Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"MCP config {path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        config = _Config.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(f"MCP config {path}: {describe_validation_error(exc)}") from exc
    for name, server in config.mcpServers.items():
        if not _SERVER_NAME.match(name):
            raise ValueError(f"MCP config {path}: server name {name!r} must be 1-40 letters, "
                             "digits, '_' or '-' (it prefixes its tools' names)")
        try:
            if server.url is not None:
                server.url = _expand(server.url, "url")
            if server.headers is not None:
                server.headers = {k: _expand(v, f"header {k!r}") for k, v in server.headers.items()}
            if server.env is not None:
                server.env = {k: _expand(v, f"env {k!r}") for k, v in server.env.items()}
        except ValueError as exc:
            raise ValueError(f"MCP config {path}: server {name!r}: {exc}") from exc
    return config


def _expand(value: str, where: str) -> str:
    def variable(match: re.Match[str]) -> str:
        if match[1] not in os.environ:
            raise ValueError(f"{where} uses ${{{match[1]}}}, which is not set")
        return os.environ[match[1]]

    return _VARIABLE.sub(variable, value)


def _connection(server: _Server, path: Path) -> Connection:
    if server.command is not None:
        stdio: StdioConnection = {"transport": "stdio", "command": server.command,
                                  "args": server.args, "env": server.env}
        if server.cwd is not None:
            stdio["cwd"] = str(path.parent / server.cwd)  # a relative cwd is the config's
        return stdio
    assert server.url is not None
    if server.transport == "sse":
        sse: SSEConnection = {"transport": "sse", "url": server.url, "headers": server.headers}
        return sse
    http: StreamableHttpConnection = {"transport": "streamable_http", "url": server.url,
                                      "headers": server.headers}
    return http


async def _list_tools(client: MultiServerMCPClient, name: str, server: _Server) -> list[BaseTool]:
    deadline = asyncio.timeout(server.timeout)
    try:
        async with deadline:
            try:
                return await client.get_tools(server_name=name)
            except Exception as exc:
                _keep_cancellation(exc)
                raise
    except TimeoutError as exc:
        if deadline.expired():
            raise TimeoutError(f"no tool list within {server.timeout:g}s") from exc
        raise


def _keep_cancellation(exc: Exception) -> None:
    """Raise CancelledError in place of `exc` if this task is being cancelled (a timeout, a
    shutdown): an MCP transport closing under cancellation can raise an error of its own
    (anyio's BrokenResourceError) instead, which would swallow the cancellation and report a
    timeout as a server failure."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def _tools_of(server_name: str, server: _Server, lc_tools: list[BaseTool], path: Path
              ) -> Iterator[Tool]:
    offered = {tool.name for tool in lc_tools}
    if unknown := sorted(set(server.tools) - offered):
        raise ValueError(f"MCP config {path}: server {server_name!r} has no tool "
                         f"{', '.join(map(repr, unknown))} (it offers {', '.join(sorted(offered))})")
    for lc_tool in lc_tools:
        override = server.tools.get(lc_tool.name, _ToolOverride())
        schema = lc_tool.args_schema
        if not isinstance(schema, dict):
            raise MCPServerError(f"MCP server {server_name!r}: tool {lc_tool.name!r} has no JSON schema")
        try:
            arguments = _arguments_model(f"{server_name}__{lc_tool.name}", schema)
        except jsonschema.SchemaError as exc:
            raise MCPServerError(f"MCP server {server_name!r}: tool {lc_tool.name!r} has an invalid "
                                 f"input schema: {exc.message}") from exc
        yield Tool(
            name=_tool_name(server_name, lc_tool.name),
            description=lc_tool.description or f"{lc_tool.name} (from MCP server {server_name})",
            args_model=arguments,
            function=_caller(server_name, lc_tool),
            risk=override.risk or server.risk,
            timeout=override.timeout or server.timeout,
            max_output_chars=20_000,
            untrusted_output=True,
            _whole_model=True,
        )


def _tool_name(server: str, tool: str) -> str:
    name = f"{server}__{_NOT_IN_NAME.sub('_', tool)}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(f"{server}__{tool}".encode()).hexdigest()[:8]
    return f"{name[:_MAX_NAME - 9]}_{digest}"


class _Arguments(BaseModel):
    """Arguments checked against an MCP tool's own input schema, which is also the schema the
    model is shown: nothing is lost converting it to pydantic fields and back."""

    model_config = ConfigDict(extra="allow")
    input_schema: ClassVar[dict[str, Any]] = {}
    validator: ClassVar[Any] = None

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return copy.deepcopy(cls.input_schema)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        errors = sorted(cls.validator.iter_errors(obj), key=lambda e: [str(p) for p in e.path])
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, [
                {"type": PydanticCustomError("json_schema", error.message),
                 "loc": tuple(error.absolute_path), "input": error.instance}
                for error in errors])
        return super().model_validate(obj, *args, **kwargs)


def _arguments_model(name: str, schema: dict[str, Any]) -> type[_Arguments]:
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    return type(f"{name}_args", (_Arguments,), {
        "input_schema": schema, "validator": validator_class(schema)})


def _caller(server: str, lc_tool: BaseTool) -> ToolFunction:
    async def call(ctx: ToolContext[Any], args: BaseModel) -> str:
        try:
            content = await lc_tool.ainvoke(args.model_dump())
        except ToolException as exc:  # the tool ran and reported an error (isError)
            raise ToolError(str(exc)) from exc
        except Exception as exc:
            _keep_cancellation(exc)
            raise ToolError(f"MCP server {server!r} failed: {_describe(exc)}") from exc
        return _text(content)

    return call


def _text(content: Any) -> str:
    """The text of a tool result's content blocks; other blocks are named, not inlined."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content if isinstance(content, list) else [content]:
        if isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, Mapping):
            parts.append(f"[{block.get('type')} content ({block.get('mime_type') or 'unknown type'}) "
                         "not shown]")
        else:
            parts.append(str(block))
    return "\n".join(parts)


def _describe(exc: BaseException) -> str:
    """What went wrong, for a message: the first leaf of an exception group (anyio task groups
    wrap transport errors), a closed stream said in words."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError):
        return "connection closed (the server exited or dropped it)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
