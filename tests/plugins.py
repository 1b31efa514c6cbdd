"""A tool plug-in for tests that run real worker processes (loaded with CADRE_TOOLS)."""

from __future__ import annotations

import asyncio
import os

import httpx

from tools import ToolContext, Toolset

toolset = Toolset()


@toolset.tool(risk="side_effect", timeout=30)
async def record_effect(ctx: ToolContext, label: str) -> str:
    """Record a labelled effect at the receiving service (a stand-in for an email or a payment)."""
    await asyncio.sleep(0.3)  # work before the effect: a kill may land here
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(os.environ["CADRE_TEST_RECEIVER"] + "/effect",
                                     json={"label": label},
                                     headers={"Idempotency-Key": ctx.idempotency_key})
    response.raise_for_status()
    return f"recorded {label}"
