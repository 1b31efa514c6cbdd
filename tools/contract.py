"""The tool contract: an async function with typed parameters and a docstring, registered on
a `Toolset` with its risk, timeout and output cap. Its JSON schema comes from the signature:
each parameter's type, default, and description — from `Annotated[..., Field(description=...)]`
or from the docstring's `Args:` section, which then leaves the tool's description.

    toolset = Toolset()

    @toolset.tool(risk="read_only", timeout=10)
    async def add(ctx: ToolContext[MyDeps], a: int, b: Annotated[int, Field(ge=0)]) -> int:
        \"\"\"Add two integers.

        Args:
            a: The first one.
            b: The second one, not negative.
        \"\"\"
        return a + b

`ToolContext[DepsT]` types `ctx.deps`, the dependencies object the tool runs with. Output
that comes from outside (a web page, a search hit, a file a user uploaded) is returned as
`Untrusted(value)`: the model reads it marked as data, and side effects after it need a
person's approval. Errors the model should see and correct (bad arguments, a failed lookup)
come back to it as the tool's result, never as an exception out of the run.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar, get_args, get_origin, get_type_hints

from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from guardrails.policy import Risk

RISKS: tuple[Risk, ...] = get_args(Risk)
DepsT = TypeVar("DepsT")
T = TypeVar("T")
log = logging.getLogger("cadre.tools")


class ToolError(Exception):
    """Raised by a tool for an error the model should read and correct (not a crash)."""


@dataclass(frozen=True, kw_only=True)
class ToolContext(Generic[DepsT]):
    """What a tool knows about the call: whose task, which call, and the dependencies object
    it runs with (typed by `DepsT`: `ToolContext[ToolDeps]` for the built-in tools)."""

    task_id: str
    tool_call_id: str
    role: str = "analyst"
    deps: DepsT = None  # type: ignore[assignment]
    # Where untrusted content in the conversation's context came from when the call was made
    # (the graph state's `untrusted`): what the call writes may carry it on (`remember`).
    untrusted: tuple[str, ...] = ()

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and resumes of this call: use it to make side effects once-only."""
        return f"{self.task_id}:{self.tool_call_id}"


@dataclass(frozen=True, kw_only=True)
class ToolOutcome:
    """A tool call's result as the model will read it."""

    ok: bool
    content: str
    # The content comes from outside (a web page, a search hit, an uploaded file, a third-party
    # server): the model reads it marked as data, and side effects after it need approval.
    untrusted: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ok": self.ok, "content": self.content}
        if self.untrusted:
            data["untrusted"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ToolOutcome:
        return cls(ok=bool(data["ok"]), content=str(data["content"]),
                   untrusted=bool(data.get("untrusted", False)))


@dataclass(frozen=True)
class Untrusted(Generic[T]):
    """A tool's result that comes from outside Cadre's control: the model reads it marked as
    data, never as instructions, and a side effect after it waits for a person."""

    value: T


ToolFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, kw_only=True)
class Tool:
    name: str
    description: str
    args_model: type[BaseModel]
    function: ToolFunction
    risk: Risk
    timeout: float
    max_output_chars: int
    # Everything this tool returns is untrusted (e.g. tools of third-party MCP servers). A
    # tool can also mark one result by returning it as `Untrusted(value)`.
    untrusted_output: bool = False
    # What it returns may change from one moment to the next for the same arguments (the
    # web, a database, a third party): answers built on it are served from the semantic task
    # cache only within CADRE_CACHE_LIVE_TTL_SECONDS. False for pure computation and fixed
    # documents. Unknown tools count as live.
    live_data: bool = True
    _whole_model: bool = False

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-tool schema the model sees (a copy: the caller may change it)."""
        return copy.deepcopy(self._schema)

    @functools.cached_property
    def _schema(self) -> dict[str, Any]:
        # Built once: pydantic's model_json_schema() was 2 % of a worker's CPU when rebuilt
        # for every model call (bench/cpu_profile.py).
        parameters = self.args_model.model_json_schema()
        parameters.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description,
                         "parameters": parameters},
        }

    def validate(self, arguments: Mapping[str, Any]) -> BaseModel:
        return self.args_model.model_validate(dict(arguments))

    async def invoke(self, ctx: ToolContext[Any], arguments: Mapping[str, Any]) -> ToolOutcome:
        """Validate, run within the timeout, and cap the output. Never raises for tool errors."""
        try:
            args = self.validate(arguments)
        except ValidationError as exc:
            return ToolOutcome(ok=False, content=f"invalid arguments for {self.name}: "
                                                 f"{describe_validation_error(exc)}")
        try:
            async with asyncio.timeout(self.timeout):
                if self._whole_model:
                    value = await self.function(ctx, args)
                else:
                    value = await self.function(ctx, **{k: getattr(args, k)
                                                         for k in type(args).model_fields})
        except TimeoutError:
            return ToolOutcome(ok=False, content=f"{self.name} timed out after {self.timeout:g}s")
        except ToolError as exc:
            return ToolOutcome(ok=False, content=str(exc))
        except Exception as exc:
            return ToolOutcome(ok=False, content=f"{self.name} failed: {type(exc).__name__}: {exc}")
        untrusted = self.untrusted_output
        if isinstance(value, Untrusted):
            untrusted, value = True, value.value
        elif isinstance(value, dict) and value.get("untrusted") is True:
            # The older way to mark a result: still honoured, and the marker is not shown to
            # the model.
            _warn_marker(self.name)
            untrusted, value = True, {k: v for k, v in value.items() if k != "untrusted"}
        return ToolOutcome(ok=True, content=cap_text(_render(value), self.max_output_chars),
                           untrusted=untrusted)


@dataclass
class Toolset:
    """An explicit, named collection of tools."""

    tools: dict[str, Tool] = field(default_factory=dict)

    def tool(
        self,
        *,
        risk: Risk,
        name: str | None = None,
        timeout: float = 60.0,
        max_output_chars: int = 20_000,
        live_data: bool = True,
    ) -> Callable[[ToolFunction], ToolFunction]:
        if risk not in RISKS:
            raise ValueError(f"risk must be one of {RISKS}, not {risk!r}")

        def register(function: ToolFunction) -> ToolFunction:
            self.add(_tool_from_function(function, name=name, risk=risk, timeout=timeout,
                                         max_output_chars=max_output_chars, live_data=live_data))
            return function

        return register

    def add(self, tool: Tool) -> None:
        if tool.name in self.tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self.tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def schemas(self) -> list[dict[str, Any]]:
        return [tool.schema() for tool in self.tools.values()]

    def only(self, names: Iterable[str]) -> Toolset:
        """The tools of this set named in `names` (a worker agent's allowlist), in this set's
        order; names it does not hold are left out."""
        wanted = set(names)
        return Toolset({name: tool for name, tool in self.tools.items() if name in wanted})

    def __iter__(self) -> Iterator[Tool]:
        return iter(self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)


_WARNED: set[str] = set()


def _warn_marker(tool: str) -> None:
    if tool not in _WARNED:
        _WARNED.add(tool)
        log.warning("tool %s marks untrusted output with an \"untrusted\" key; return "
                    "tools.Untrusted(value) instead (the key still works, and is not shown to "
                    "the model)", tool)


def _tool_from_function(function: ToolFunction, *, name: str | None, risk: Risk, timeout: float,
                        max_output_chars: int, live_data: bool = True) -> Tool:
    if not inspect.iscoroutinefunction(function):
        raise TypeError(f"tool {function.__name__} must be an async function")
    docstring = inspect.getdoc(function)
    if not docstring:
        raise TypeError(f"tool {function.__name__} needs a docstring: it is what the model reads")
    description, documented = parse_docstring(docstring)
    hints = get_type_hints(function, include_extras=True)
    params = list(inspect.signature(function).parameters.values())
    first = hints.get(params[0].name) if params else None
    if first is not ToolContext and get_origin(first) is not ToolContext:
        raise TypeError(f"tool {function.__name__}'s first parameter must be "
                        "`ctx: ToolContext` (or `ToolContext[YourDeps]`)")
    rest = params[1:]
    whole = (len(rest) == 1 and isinstance(hints.get(rest[0].name), type)
             and issubclass(hints[rest[0].name], BaseModel))
    if whole:
        args_model: type[BaseModel] = hints[rest[0].name]
    else:
        fields: dict[str, Any] = {}
        for p in rest:
            if p.name not in hints:
                raise TypeError(f"tool {function.__name__}: parameter {p.name} needs a type")
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (_described(hints[p.name], documented.get(p.name)), default)
        unknown = set(documented) - {p.name for p in rest}
        if unknown:
            raise TypeError(f"tool {function.__name__}: its docstring describes "
                            f"{', '.join(sorted(unknown))}, which it does not take")
        args_model = create_model(f"{function.__name__}_args", **fields)
    return Tool(name=name or function.__name__, description=description, args_model=args_model,
                function=function, risk=risk, timeout=timeout, max_output_chars=max_output_chars,
                live_data=live_data, _whole_model=whole)


def _described(hint: Any, text: str | None) -> Any:
    """`hint` with the docstring's description, unless its own `Field` already has one."""
    if text is None:
        return hint
    if get_origin(hint) is Annotated and any(isinstance(m, FieldInfo) and m.description
                                             for m in hint.__metadata__):
        return hint
    return Annotated[hint, Field(description=text)]


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$")
_ARGUMENT = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def parse_docstring(docstring: str) -> tuple[str, dict[str, str]]:
    """A Google-style docstring split into the description (without its `Args:` section)
    and each argument's description."""
    described: dict[str, str] = {}
    kept: list[str] = []
    lines = docstring.splitlines()
    i = 0
    while i < len(lines):
        header = _SECTION.match(lines[i].strip())
        if header is None or header.group(1) not in ("Args", "Arguments", "Parameters"):
            kept.append(lines[i])
            i += 1
            continue
        i += 1
        current: str | None = None
        described_indent = 0
        while i < len(lines) and (not lines[i].strip() or lines[i][:1].isspace()):
            text = lines[i].strip()
            found = _ARGUMENT.match(text)
            indent = len(lines[i]) - len(lines[i].lstrip())
            if found and (current is None or indent <= described_indent):
                current, described_indent = found.group(1), indent
                described[current] = found.group(2)
            elif current is not None and text:
                described[current] = f"{described[current]} {text}".strip()
            i += 1
    return "\n".join(kept).strip(), described


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return json.dumps(value, default=str, ensure_ascii=False)


def cap_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[output truncated: {len(text) - limit} more characters]"


def describe_validation_error(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
    )
