"""Policy (role x tool -> allow / approve / deny), screening, redaction, rate limits and quotas."""

from guardrails.policy import (
    DefaultPolicy,
    FilePolicy,
    Policy,
    PolicyCall,
    PolicyError,
    Risk,
    load_policy,
)
from guardrails.redaction import RedactingFilter, redact, redact_json
from guardrails.verdict import Allow, Deny, RequireApproval, Verdict

__all__ = ["Allow", "DefaultPolicy", "Deny", "FilePolicy", "Policy", "PolicyCall", "PolicyError",
           "RedactingFilter", "RequireApproval", "Risk", "Verdict", "load_policy", "redact",
           "redact_json"]
