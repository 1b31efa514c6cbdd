"""A team's worker agents as the graph sees them: the profiles (guardrails/agents.toml) and a
model per profile, and `for_agent`, the dependencies a node uses for the agent whose state it
runs on: a worker gets its profile's tools (a subset of the deployment's, still under the
role policy) and model, and no speculation (its calls share no turn with the manager's)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from langchain_core.language_models import BaseChatModel

from graph.state import AgentState
from guardrails.agents import AgentProfile, AgentProfiles

if TYPE_CHECKING:
    from graph.deps import GraphDeps


@dataclass(frozen=True, kw_only=True)
class Team:
    profiles: AgentProfiles
    # The model of each profile that names one (`model = ...`), by profile name; the others
    # use the deployment's model.
    models: Mapping[str, BaseChatModel] = field(default_factory=dict)

    def profile(self, name: str) -> AgentProfile | None:
        return self.profiles.get(name)


def call_key(state: AgentState, call_id: str) -> str:
    """A tool call's id in the task: a team worker's call ids are its model's, so its path
    makes them (and the ledger keys and approvals built on them) unique in the task."""
    agent = state.get("agent")
    return f"{agent}:{call_id}" if state.get("profile") and agent else call_id


def for_agent(deps: GraphDeps, state: AgentState) -> GraphDeps:
    """`deps` as the agent of `state` may use them: unchanged for a single agent or a team's
    manager; a worker agent's profile narrows the tools and may change the model."""
    name = state.get("profile")
    if not name or deps.team is None:
        return deps
    profile = deps.team.profile(name)
    if profile is None:  # a profile removed while its task waited: no tools, the default model
        return replace(deps, toolset=deps.toolset.only(()), speculator=None)
    return replace(deps, toolset=deps.toolset.only(profile.tools), speculator=None,
                   model=deps.team.models.get(name, deps.model))
