"""Where a worker's tools come from: the built-in ones, every installed plug-in registered
under the `cadre.tools` entry-point group, and `module:attribute` names from CADRE_TOOLS."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points

from tools.contract import Tool, Toolset

ENTRY_POINT_GROUP = "cadre.tools"


def load_toolset(names: Iterable[str] = (), *, builtin: Toolset | None = None) -> Toolset:
    """All tools available to this process: `builtin`, then plug-ins. A plug-in exposes a
    `Toolset` or a `Tool`."""
    toolset = Toolset()
    if builtin is not None:
        include(toolset, builtin, source="built-in tools")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        include(toolset, entry.load(), source=f"entry point {entry.name}")
    for name in names:
        module, _, attribute = name.partition(":")
        if not attribute:
            raise ValueError(f"tool plug-in {name!r} must look like package.module:attribute")
        include(toolset, getattr(importlib.import_module(module), attribute), source=name)
    return toolset


def include(toolset: Toolset, plugin: object, *, source: str) -> None:
    if isinstance(plugin, Toolset):
        for tool in plugin:
            toolset.add(tool)
    elif isinstance(plugin, Tool):
        toolset.add(plugin)
    else:
        raise TypeError(f"{source} is a {type(plugin).__name__}, not a Toolset or a Tool")
