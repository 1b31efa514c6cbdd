"""A guardrail's answer about one tool call: allow it, hold it for a human, or deny it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Allow:
    rule: str = "default"


@dataclass(frozen=True, kw_only=True)
class RequireApproval:
    reason: str
    rule: str = "default"


@dataclass(frozen=True, kw_only=True)
class Deny:
    message: str
    rule: str = "default"


Verdict = Allow | RequireApproval | Deny


def allow(rule: str = "default") -> Verdict:
    return Allow(rule=rule)


def require_approval(reason: str, rule: str = "default") -> Verdict:
    return RequireApproval(reason=reason, rule=rule)


def deny(message: str, rule: str = "default") -> Verdict:
    return Deny(message=message, rule=rule)
