"""Process-wide logging set-up for the long-running commands."""

from __future__ import annotations

import logging

from guardrails.redaction import RedactingFilter


def configure_logging(level: str, *, redact: bool = True) -> None:
    """Log lines to stderr; with `redact`, secrets and personal data are taken out of every
    line (CADRE_REDACT_LOGS)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    if redact:
        for handler in logging.getLogger().handlers:
            handler.addFilter(RedactingFilter())
    # boto's own debug chatter would drown the worker's lines.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
