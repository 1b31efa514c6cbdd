"""Policy (role x tool -> allow / approve / deny), screening, redaction, rate limits and quotas."""
