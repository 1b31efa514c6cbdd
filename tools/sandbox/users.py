"""Running a child as an unprivileged system user: used for the code sandbox and for the
embedded PostgreSQL (which refuses to run as root)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path
from typing import Any


class UserSetupError(Exception):
    """The system user could not be created."""


def ensure_system_user(name: str) -> None:
    """Create a no-login system user `name` if it does not exist (needs root)."""
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False)
    if result.returncode != 0 and "already exists" not in result.stderr:
        raise UserSetupError(f"creating the system user '{name}' failed: {result.stderr.strip()}")


def identity(user: str | None) -> dict[str, Any]:
    """`subprocess` arguments that run a child as `user` with only that user's own group.

    Setting `user=` alone keeps root's group, which makes a root-owned 0701 directory
    (pytest's temp dirs) untraversable: the group bits, not the "other" bits, then apply.
    """
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def ensure_traversable(path: Path) -> None:
    """Let other users walk down to `path`: only the search (x) bit is added to its
    ancestors, so directory listings stay private."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def chown(path: Path, user: str, *, recursive: bool = False) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    if recursive and path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
