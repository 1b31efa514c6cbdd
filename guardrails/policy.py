"""Tool policy. Until the policy file lands (guardrails issue) this is the built-in default:
read-only tools are allowed, side effects need a human's approval, destructive tools are
denied — for every role."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol

from guardrails.verdict import Verdict, allow, deny, require_approval

Risk = Literal["read_only", "side_effect", "destructive"]


class Policy(Protocol):
    def decide(self, *, role: str, tool: str, risk: Risk, arguments: Mapping[str, Any]) -> Verdict:
        """The verdict for `role` calling `tool` with `arguments`."""
        ...


class DefaultPolicy:
    """Risk decides: read-only -> allow, side effect -> approve, destructive -> deny."""

    def decide(self, *, role: str, tool: str, risk: Risk, arguments: Mapping[str, Any]) -> Verdict:
        if risk == "read_only":
            return allow(rule="default:read_only")
        if risk == "side_effect":
            return require_approval(
                f"`{tool}` has side effects outside Cadre; a person must approve it",
                rule="default:side_effect",
            )
        return deny(f"`{tool}` is destructive and not allowed by the default policy",
                    rule="default:destructive")
