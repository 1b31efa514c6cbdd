"""Loopback port checks, so a taken port is a clear message rather than a service's crash log."""

from __future__ import annotations

import socket

from app.errors import StackError


def ensure_free(port: int, *, service: str, env_name: str, host: str = "127.0.0.1") -> None:
    """Raise `StackError` naming the setting to change when `port` is already bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers themselves do: connections of a previous run lingering in TIME_WAIT
        # do not make a port "taken"; a live listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()
        except OSError:
            raise StackError(
                f"port {port} for {service} is already in use on {host}; stop what uses it "
                f"or choose another port with {env_name}=<port>"
            ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (for tests and ephemeral stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
