"""A small MCP server for tests: stdio by default, streamable HTTP with `--http PORT`."""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.fastmcp import Context, FastMCP

server = FastMCP("cadre-test")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(name="text.shout")
def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


@server.tool()
def refuse(reason: str) -> str:
    """Always fails with the given reason."""
    raise ValueError(f"refused: {reason}")


@server.tool()
async def nap(seconds: float) -> str:
    """Sleep, then say so."""
    await asyncio.sleep(seconds)
    return "rested"


@server.tool()
def whoami(ctx: Context) -> str:  # type: ignore[type-arg]
    """Who the server was told it serves: the Authorization header over HTTP, else $CADRE_TEST_USER."""
    request = ctx.request_context.request
    if request is not None:
        return str(request.headers.get("authorization"))
    return os.environ.get("CADRE_TEST_USER", "nobody")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        server.settings.port = int(sys.argv[2])
        server.run("streamable-http")
    else:
        server.run()
