"""Passwords of the embedded services and the chat UI's cookie-signing key, generated once and
kept private under `.cadre/`."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def local_secrets(home: Path) -> dict[str, str]:
    """Read `secrets.json`, creating any missing password; the file is readable by its owner only."""
    path = home / "secrets.json"
    try:
        values: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        values = {}
    changed = False
    for name in ("postgres_password", "redis_password", "ui_secret"):
        if not values.get(name):
            values[name] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle)
    return values
