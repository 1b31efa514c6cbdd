"""The mail capture server `cadre up` runs when SMTP_URL is unset: an aiosmtpd SMTP server on
loopback that accepts every message and keeps it as a `.eml` file in a mailbox directory,
delivering nothing. Every delivery is kept, repeats included, so a duplicate send shows.

    python -m app.stack.mail --port 8025 --dir .cadre/mail
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import smtplib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.stack.process import ManagedProcess, wait_ready

MAX_MESSAGE_BYTES = 40 * 1024 * 1024


class _Keep:
    """aiosmtpd handler: write each accepted message to `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        envelope_lines = (f"X-Cadre-Envelope-From: {envelope.mail_from}\r\n"
                          f"X-Cadre-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        data = envelope_lines + envelope.original_content

        def _write() -> None:
            partial = self.directory / (name + ".partial")
            partial.write_bytes(data)
            partial.replace(self.directory / name)

        await asyncio.to_thread(_write)
        return "250 Message accepted for delivery"


async def serve(port: int, directory: Path, host: str = "127.0.0.1") -> None:
    """Run until SIGTERM or SIGINT."""
    from aiosmtpd.smtp import SMTP

    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(_Keep(directory), data_size_limit=MAX_MESSAGE_BYTES, enable_SMTPUTF8=True,
                     hostname="cadre-mail"),
        host=host, port=port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"mail capture server on {host}:{port}, keeping mail in {directory}", flush=True)
    async with server:
        await stop.wait()


@dataclass(kw_only=True)
class MailCapture:
    """The capture server as a process `cadre up` supervises."""

    port: int
    directory: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def process(self, python: str) -> ManagedProcess:
        return ManagedProcess(name="mail", argv=[python, "-m", "app.stack.mail", "--port",
                                                 str(self.port), "--dir", str(self.directory)],
                              log_path=self.log_path)

    def wait_ready(self, proc: ManagedProcess, timeout: float = 30.0) -> None:
        def _probe() -> None:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as client:
                client.noop()

        wait_ready(proc, _probe, what="the mail capture server",
                   errors=(OSError, smtplib.SMTPException), timeout=timeout, interval=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.dir, args.host))


if __name__ == "__main__":
    main()
