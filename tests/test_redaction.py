"""Redaction: planted secrets and personal data are gone, ordinary text and ids survive; log
lines are redacted when configured."""

from __future__ import annotations

import asyncio
import io
import json
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
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PERSONAL = ["ana.lopez@example.com", "+44 20 7946 0958", "+49 30 901820", "(212) 736-5000",
            "415.555.2671", "4111 1111 1111 1111", "5500-0000-0000-0004"]
KEPT = ["3f2b8c1e-9d4a-4e7b-8c2a-1b2c3d4e5f60", "2026-11-25", "2032-01-02 03:04:05", "$1,234.50",
        "EUR 99.50", "order 10023", "order #100234", "INV-2024-000123", "1,000,000 rows",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "commit 2d711642b726b04401627ca9fbac32f5c8530fb1", "epoch 1700000000", "port 5432",
        "revenue grew 4% in Q3", "version 3.11.7", "git@github.com:org/repo.git",
        "/usr/lib/python3.11/site-packages/detect_secrets/plugins",
        "max_tokens=4096", "The password must be at least 12 characters.",
        "client = Client(password=password, api_key=settings.api_key)",
        'password = os.environ["DB_PASSWORD"]', "prefix cadre_abc123 shown in the key list"]


def transcript() -> str:
    lines = [f"the tool printed {value}" for value in SECRETS]
    lines += [f"contact {value} today" for value in PERSONAL]
    lines += [PEM, "db postgresql://report:hunter2@db.internal:5432/sales",
              "cache redis://:pa$$w0rd@cache:6379/0",
              f'aws_secret_access_key = "{AWS_SECRET}"',
              'config: password = "s3cr3t-Pa55!"']
    lines += [f"keep {value}" for value in KEPT]
    return "\n".join(lines)


async def test_planted_secrets_and_personal_data_are_removed_and_the_rest_kept() -> None:
    clean = redact(transcript())
    for value, kind in SECRETS.items():
        assert value not in clean
        assert f"[REDACTED:{kind}]" in clean
    for value in PERSONAL:
        assert value not in clean, value
    assert clean.count("[REDACTED:email]") == 1
    assert clean.count("[REDACTED:phone]") == 4
    assert clean.count("[REDACTED:card]") == 2
    assert "BEGIN RSA PRIVATE KEY" not in clean and "MIIEow" not in clean
    assert "\n[REDACTED:private_key]\n" in clean, "the PEM block goes whole, BEGIN to END"
    assert "postgresql://report:[REDACTED:password]@db.internal:5432/sales" in clean
    assert "redis://:[REDACTED:password]@cache:6379/0" in clean
    assert AWS_SECRET not in clean
    assert "s3cr3t-Pa55!" not in clean and 'password = "[REDACTED:password]"' in clean
    for value in KEPT:
        assert f"keep {value}" in clean, f"{value!r} was redacted"


async def test_a_private_key_without_its_end_line_is_still_redacted() -> None:
    truncated = PEM.rsplit("\n", 1)[0]
    clean = redact(f"my key:\n{truncated}\n\nthanks, Ana")
    assert clean == "my key:\n[REDACTED:private_key]\n\nthanks, Ana"
    # As the value of a JSON string, with escaped line breaks.
    escaped = json.dumps({"key": PEM})
    assert json.loads(redact(escaped)) == {"key": "[REDACTED:private_key]"}


async def test_redacting_twice_changes_nothing_more() -> None:
    once = redact(transcript())
    assert redact(once) == once


async def test_json_values_are_redacted_and_credential_keys_replaced_whole() -> None:
    step = {"tool_call_id": "call_9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            "id": "call_Yp2nKx8LmQ4vR7sT1wZ3aB6c",
            "arguments": {"to": ["boss@example.com"], "api_key": "short", "password": "changeme",
                          "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k"}},
            "output": {"rows": [["Ana", "ana@example.com", 3]], "count": 1},
            "usage": {"prompt_tokens": 812, "total_tokens": 1024}, "token_budget": 200000}
    clean = redact_json(step)
    assert clean["tool_call_id"] == step["tool_call_id"], "ids keep linking the trace"
    assert clean["id"] == step["id"], "a random-looking id is not a secret"
    assert clean["arguments"]["to"] == ["[REDACTED:email]"]
    assert clean["arguments"]["api_key"] == "[REDACTED:secret]"
    assert clean["arguments"]["password"] == "[REDACTED:password]"
    assert clean["arguments"]["headers"] == {"Authorization": "[REDACTED:secret]",
                                             "X-Api-Key": "[REDACTED:secret]"}
    assert clean["output"]["rows"][0][0] == "Ana" and clean["output"]["count"] == 1
    assert clean["usage"] == step["usage"] and clean["token_budget"] == 200000
    assert step["arguments"]["to"] == ["boss@example.com"], "the original is not modified"


async def test_an_exported_trace_shows_none_of_the_planted_values() -> None:
    trace = [{"role": "user", "content": transcript()},
             {"role": "tool", "name": "sql_query", "content": {"rows": [[v] for v in PERSONAL]}},
             {"role": "assistant", "content": f"I used {next(iter(SECRETS))} as you asked."}]
    exported = json.dumps(redact_json(trace))
    for value in [*SECRETS, *PERSONAL, AWS_SECRET, "hunter2", "pa$$w0rd", "s3cr3t-Pa55!"]:
        assert json.dumps(value)[1:-1] not in exported, value


async def test_redaction_does_no_blocking_io_on_the_event_loop() -> None:
    # Runs under blockbuster: library metadata must already be loaded, nothing read lazily.
    assert "+44" not in redact("call +44 20 7946 0958 or ana@example.com")
    # Pure functions of their input: safe to run in threads side by side.
    text = transcript() * 50
    results = await asyncio.gather(*(asyncio.to_thread(redact, text) for _ in range(4)))
    assert set(results) == {redact(text)}


@pytest.mark.timeout(60)
async def test_crafted_text_cannot_stall_redaction() -> None:
    # A fetched page can put anything in a transcript. Each of these made one of the library's
    # patterns backtrack for minutes or more (cubic on the spaces, quadratic on the repeats).
    crafted = ["key" + " " * 30_000 + "x", "sl_key" + " " * 30_000, "sk-" * 30_000,
               "eyJ" * 30_000, "a." * 30_000 + "@", "-----BEGIN PRIVATE KEY-----\n" * 3_000]
    for text in crafted:
        assert redact(text)


async def test_log_lines_are_redacted_by_the_filter() -> None:
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
    assert "postgresql://u:[REDACTED:password]@db/x as [REDACTED:email]" in output
    assert "hunter2" not in output and "ana@example.com" not in output
    assert "ghp_1234567890" not in output and "[REDACTED:github_token]" in output
    assert "RuntimeError" in output, "the traceback is kept, only the secret is gone"


@pytest.mark.parametrize("enabled", [True, False])
async def test_configure_logging_attaches_the_filter_when_asked(enabled: bool) -> None:
    from app.logs import configure_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("INFO", redact=enabled)
    try:
        filters = [f for h in root.handlers for f in h.filters]
        assert any(isinstance(f, RedactingFilter) for f in filters) == enabled
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
