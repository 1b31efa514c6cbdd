"""The dependencies object every node receives as its LangGraph runtime context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from redis.asyncio import Redis

from graph.agents import Team
from graph.fence import Fence, Unfenced
from graph.model_cache import ModelCache
from graph.outputs import OutputStore
from graph.recorder import StepRecorder
from graph.speculation import Speculator
from graph.tracing import Tracing
from guardrails import Policy
from guardrails.audit import AuditSink
from guardrails.screening import RuleScreen, Screen
from tools import Ledger, Toolset


@dataclass(frozen=True, kw_only=True)
class GraphDeps:
    model: BaseChatModel
    toolset: Toolset
    policy: Policy
    ledger: Ledger
    recorder: StepRecorder
    # Mirror of each task's current prompt window; None only where no Redis is configured.
    redis: Redis | None = None
    context_tokens: int = 6_000
    context_ttl_seconds: int = 24 * 3600
    # Handed to tools as `ToolContext.deps` (sandbox, database pools, ...).
    tool_deps: Any = None
    # Where every policy decision is written; None in tests that do not look.
    audit: AuditSink | None = None
    # Screens untrusted tool output for instructions.
    screen: Screen = field(default_factory=RuleScreen)
    # What the run's spans carry (content only when opted in).
    tracing: Tracing = field(default_factory=Tracing)
    # The run writes only while its worker holds the task's lease (graph/fence.py).
    fence: Fence = field(default_factory=Unfenced)
    # How many read-only calls of one model turn run at once (CADRE_PARALLEL_TOOLS).
    parallel_tools: int = 4
    # The run's speculative calls (graph/speculation.py); None: no speculation.
    speculator: Speculator | None = None
    # The exact model-call cache (graph/model_cache.py); None: every call asks the model.
    model_cache: ModelCache | None = None
    # The worker agents a team's manager may delegate to (graph/team.py); None: no team mode.
    team: Team | None = None
    # Where large tool results go instead of the checkpoints (graph/outputs.py); None: every
    # result stays in the messages whole.
    outputs: OutputStore | None = None

    @property
    def model_name(self) -> str:
        """The model's name as its client knows it (`CADRE_MODEL`), for step records."""
        return str(getattr(self.model, "model_name", None) or type(self.model).__name__)
