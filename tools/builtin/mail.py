"""`send_email`: mail through the configured SMTP server, with the task's artifacts attached.

A side effect, so the default policy holds it for approval. It happens once: the ledger
replays a finished call instead of running it again, and the Message-ID is derived from the
call's idempotency key, so should a worker die after the server accepted the message but
before the ledger recorded it, the resend carries the same Message-ID and mail systems that
deduplicate on it (and the capture server's mailbox page) show one message."""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, parseaddr
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tools.builtin.deps import Context
from tools.contract import ToolError, Toolset

MAX_RECIPIENTS = 20
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class SmtpMailer:
    """Sends through `url`: smtp://[user:pass@]host[:port][?starttls=true] or smtps://..."""

    url: str
    sender: str
    timeout: float = 30.0

    def _connect(self) -> smtplib.SMTP:
        parts = urlsplit(self.url)
        host = parts.hostname or "localhost"
        options = parse_qs(parts.query)
        if parts.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(host, parts.port or 465, timeout=self.timeout,
                                                    context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(host, parts.port or 25, timeout=self.timeout)
            if options.get("starttls", ["false"])[0].lower() in ("1", "true", "yes"):
                client.starttls(context=ssl.create_default_context())
        if parts.username:
            client.login(unquote(parts.username), unquote(parts.password or ""))
        return client

    def _send(self, message: EmailMessage) -> None:
        with self._connect() as client:
            client.send_message(message)

    async def send(self, message: EmailMessage) -> None:
        try:
            await asyncio.to_thread(self._send, message)
        except smtplib.SMTPRecipientsRefused as exc:
            raise ToolError(f"the mail server refused the recipients: "
                            f"{', '.join(exc.recipients)}") from None
        except smtplib.SMTPAuthenticationError:
            raise ToolError("the mail server rejected Cadre's credentials (SMTP_URL); "
                            "tell the operator") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise ToolError(f"could not send the email: {type(exc).__name__}: {exc}") from None


def message_id(idempotency_key: str, sender: str) -> str:
    """The same for every attempt of one tool call."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "cadre.local"
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@{domain}>"


def _addresses(values: list[str]) -> list[str]:
    found = []
    for name, address in getaddresses(values):
        local, at, domain = address.rpartition("@")
        if not at or not local or "." not in domain or any(c.isspace() for c in address):
            raise ToolError(f"{address or name!r} is not an email address")
        found.append(str(Address(display_name=name, addr_spec=address)) if name else address)
    return found


def register(toolset: Toolset) -> None:
    @toolset.tool(risk="side_effect", timeout=90)
    async def send_email(ctx: Context, to: list[str], subject: str, body: str,
                         cc: list[str] | None = None,
                         attachments: list[str] | None = None) -> dict[str, Any]:
        """Send an email. A person may need to approve it first.

        Args:
            to: The recipients' addresses.
            subject: The subject line.
            body: The message, as plain text.
            cc: Addresses to copy.
            attachments: Names of files your Python code wrote in /workspace (this task's
                artifacts), e.g. "chart.png".
        """
        mailer: SmtpMailer | None = ctx.deps.mail
        if mailer is None:
            raise ToolError("email is not configured here (SMTP_URL is unset)")
        recipients = _addresses(to)
        copies = _addresses(cc or [])
        if not recipients:
            raise ToolError("give at least one address in `to`")
        if len(recipients) + len(copies) > MAX_RECIPIENTS:
            raise ToolError(f"at most {MAX_RECIPIENTS} recipients per email")
        if not subject.strip() or any(c in subject for c in "\r\n"):
            raise ToolError("the subject must be one non-empty line")
        message = EmailMessage()
        message["From"] = mailer.sender
        message["To"] = ", ".join(recipients)
        if copies:
            message["Cc"] = ", ".join(copies)
        message["Subject"] = subject.strip()
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = message_id(ctx.idempotency_key, mailer.sender)
        message["X-Cadre-Task"] = ctx.task_id
        message.set_content(body)
        attached = await _attach(ctx, message, attachments or [])
        await mailer.send(message)
        return {"sent": True, "to": recipients, "cc": copies, "subject": message["Subject"],
                "message_id": message["Message-ID"], "attachments": attached}


async def _attach(ctx: Context, message: EmailMessage, names: list[str]) -> list[str]:
    if not names:
        return []
    store = ctx.deps.artifacts
    if store is None:
        raise ToolError("attachments are not available here (no artifact store)")
    total, attached = 0, []
    for name in dict.fromkeys(n.strip().removeprefix("/workspace/") for n in names):
        artifact = await store.find(ctx.task_id, name)
        if artifact is None:
            have = [a.name for a in await store.list(ctx.task_id)]
            raise ToolError(f"no artifact named {name!r}; this task has: "
                            f"{', '.join(have) if have else 'none (write files with python first)'}")
        total += artifact.size_bytes
        if total > MAX_ATTACHMENT_BYTES:
            raise ToolError(f"attachments are limited to {MAX_ATTACHMENT_BYTES // 2**20} MiB in all")
        data = await store.read(artifact)
        maintype, _, subtype = artifact.content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=name.rpartition("/")[2])
        attached.append(name)
    return attached
