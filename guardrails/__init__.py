"""Policy (role x tool -> allow / approve / deny), screening, redaction, rate limits and quotas."""

from guardrails.policy import DefaultPolicy, Policy, Risk
from guardrails.verdict import Allow, Deny, RequireApproval, Verdict

__all__ = ["Allow", "DefaultPolicy", "Deny", "Policy", "RequireApproval", "Risk", "Verdict"]
