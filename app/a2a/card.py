"""The agent card at `/.well-known/agent-card.json`: what Cadre is, where it answers (JSON-RPC,
A2A 1.0 and 0.3 on one URL), how to authenticate (a bearer API key), and a skill per tool of
the deployment."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from starlette.requests import Request
from starlette.responses import JSONResponse

from app.settings import Settings
from app.tooling import local_toolset

CARD_PATH = "/.well-known/agent-card.json"
RPC_PATH = "/a2a"
SCHEME = "bearer"
INPUT_MODES = ["text/plain", "application/json", "text/csv", "text/tab-separated-values",
               "text/markdown", "application/pdf"]


@dataclass(frozen=True, kw_only=True)
class Skill:
    name: str
    description: str
    risk: str


def deployment_skills(settings: Settings) -> list[Skill]:
    """The tools a worker of this configuration offers, built-in and plug-in ones. The tools of
    MCP servers (CADRE_MCP_CONFIG) are left out: listing them means connecting to each server.
    Reads PATH and entry points: call off the loop."""
    toolset = local_toolset(settings)
    return [Skill(name=t.name, description=t.description, risk=t.risk) for t in toolset]


async def card_endpoint(request: Request) -> JSONResponse:
    """The card, with this request's base URL; the skills are listed once per app."""
    state = request.app.state
    skills: list[Skill] | None = getattr(state, "a2a_skills", None)
    if skills is None:
        skills = state.a2a_skills = await asyncio.to_thread(deployment_skills,
                                                            state.deps.settings)
    url = str(request.base_url).rstrip("/") + RPC_PATH
    card = AgentCard(
        name="Cadre", version=request.app.version,
        description="Runs multi-step tasks with tools (search, Python, SQL, files, email) and "
                    "answers them. A risky step waits for your approval (input-required): "
                    "reply \"approve\" or \"reject\", optionally with a comment.",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC",
                                             protocol_version=version)
                              for version in ("1.0", "0.3")],
        capabilities=AgentCapabilities(streaming=True, push_notifications=True,
                                       extended_agent_card=False),
        security_schemes={SCHEME: SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(
            scheme="Bearer", description="A Cadre API key (`cadre keys create`)"))},
        security_requirements=[SecurityRequirement(schemes={SCHEME: StringList()})],
        default_input_modes=INPUT_MODES,
        default_output_modes=["text/markdown", "application/octet-stream"],
        skills=[AgentSkill(id=s.name, name=s.name, description=s.description,
                           tags=["tool", s.risk]) for s in skills])
    return JSONResponse(agent_card_to_dict(card))
