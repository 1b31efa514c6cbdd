"""Redaction: planted secrets and personal data are gone, ordinary text and ids survive; log
lines are redacted when configured."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest

from guardrails.redaction import RedactingFilter, redact, redact_json

PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq9Xz0n3kQ2v\n"
       "Q8dF4hW1yL0sT7uB2nC5eA9mK3pR\n-----END RSA PRIVATE KEY-----")
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6Ikpv"
       "aG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")
SECRETS = {
    "AKIAIOSFODNN7EXAMPLE": "aws_key",
    "ghp_1234567890abcdefghijklmnopqrstuvwxyzAB": "github_token",
    "sk-proj-4f9Tq2LmZx8RvW3nK7pY1sHdJ6bGcE0aU5iO": "openai_key",
    "xoxb-2048-4096-AbCdEfGhIjKlMnOpQrStUvWx": "slack_token",
    JWT: "jwt",
    "cadre_Zq8mT2xV9rL4kP7wN3bY6cF1hJ5dS0aG8uE2iO4tW6z": "cadre_key",
}
PERSONAL = ["ana.lopez@example.com", "+44 20 7946 0958", "(212) 736-5000",
            "4111 1111 1111 1111", "5500-0000-0000-0004"]
KEPT = ["3f2b8c1e-9d4a-4e7b-8c2a-1b2c3d4e5f60", "2026-11-25", "$1,234.50", "order 10023",
        "INV-2024-000123", "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "revenue grew 4% in Q3", "version 3.11.7"]


def transcript() -> str:
    lines = [f"the tool printed {value}" for value in SECRETS]
    lines += [f"contact {value} today" for value in PERSONAL]
    lines += [PEM, "db postgresql://report:hunter2@db.internal:5432/sales",
              'config: password = "s3cr3t-Pa55!"']
    lines += [f"keep {value}" for value in KEPT]
    return "\n".join(lines)


def test_planted_secrets_and_personal_data_are_removed_and_the_rest_kept() -> None:
    text = transcript()
    clean = redact(text)
    for value, kind in SECRETS.items():
        assert value not in clean
        assert f"[REDACTED:{kind}]" in clean
    for value in PERSONAL:
        assert value not in clean, value
    assert "BEGIN RSA PRIVATE KEY" not in clean and "[REDACTED:private_key]" in clean
    assert "hunter2" not in clean
    assert "postgresql://report:[REDACTED:password]@db.internal:5432/sales" in clean
    assert "s3cr3t-Pa55!" not in clean
    for value in KEPT:
        assert f"keep {value}" in clean, f"{value!r} was redacted"


def test_json_values_are_redacted_and_credential_keys_replaced_whole() -> None:
    step = {"tool_call_id": "call_9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            "arguments": {"to": ["boss@example.com"], "api_key": "short",
                          "headers": {"Authorization": "Bearer abc"}},
            "output": {"rows": [["Ana", "ana@example.com", 3]], "count": 1}}
    clean = redact_json(step)
    assert clean["tool_call_id"] == step["tool_call_id"], "ids keep linking the trace"
    assert clean["arguments"]["to"] == ["[REDACTED:email]"]
    assert "short" not in str(clean["arguments"]["api_key"])
    assert "abc" not in str(clean["arguments"]["headers"]["Authorization"])
    assert clean["output"]["rows"][0][0] == "Ana" and clean["output"]["count"] == 1
    assert step["arguments"]["to"] == ["boss@example.com"], "the original is not modified"


async def test_redaction_does_no_blocking_io_on_the_event_loop() -> None:
    # Runs under blockbuster: library metadata must already be loaded, nothing read lazily.
    assert "+44" not in redact("call +44 20 7946 0958 or ana@example.com")
    assert await asyncio.to_thread(redact, transcript() * 50) == redact(transcript() * 50)


def test_log_lines_are_redacted_by_the_filter() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("cadre.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("connecting to %s as %s", "postgresql://u:hunter2@db/x", "ana@example.com")
        try:
            raise RuntimeError("token ghp_1234567890abcdefghijklmnopqrstuvwxyzAB rejected")
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "hunter2" not in output and "ana@example.com" not in output
    assert "ghp_1234567890" not in output and "[REDACTED:github_token]" in output
    assert "RuntimeError" in output, "the traceback is kept, only the secret is gone"


@pytest.mark.parametrize("enabled", [True, False])
def test_configure_logging_attaches_the_filter_when_asked(enabled: bool) -> None:
    from app.logs import configure_logging

    configure_logging("INFO", redact=enabled)
    try:
        filters = [f for h in logging.getLogger().handlers for f in h.filters]
        assert any(isinstance(f, RedactingFilter) for f in filters) == enabled
    finally:
        configure_logging("WARNING", redact=False)
