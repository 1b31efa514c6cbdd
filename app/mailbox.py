"""The development mailbox: the mail the capture server kept (CADRE_DEV_MAILBOX_DIR), listed
at `/dev/mailbox` as a page and `/dev/mailbox.json`. Only mounted when that setting is set,
which `cadre up` does when it runs the capture server; it has no login, like the capture
server itself, so it is for a developer's machine, never an exposed deployment."""

from __future__ import annotations

import asyncio
import email
import email.policy
from email.message import EmailMessage
from html import escape
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

PREVIEW_CHARS = 4000


def read_mailbox(directory: Path) -> list[dict[str, Any]]:
    """Messages, newest first; a message delivered more than once is listed once with the
    number of deliveries (they share a Message-ID)."""
    by_id: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        key = str(message.get("Message-ID") or path.name)
        if key in by_id:
            by_id[key]["deliveries"] += 1
            continue
        body = message.get_body(preferencelist=("plain", "html"))
        attachments = [{"filename": part.get_filename() or "(unnamed)",
                        "content_type": part.get_content_type(),
                        "size_bytes": len(part.get_payload(decode=True) or b"")}
                       for part in message.iter_attachments()]
        by_id[key] = {
            "message_id": key, "file": path.name, "deliveries": 1,
            "from": str(message.get("From", "")), "to": str(message.get("To", "")),
            "cc": str(message.get("Cc", "")), "subject": str(message.get("Subject", "")),
            "date": str(message.get("Date", "")), "task_id": str(message.get("X-Cadre-Task", "")),
            "body": (body.get_content() if body is not None else "")[:PREVIEW_CHARS],
            "attachments": attachments,
        }
    return list(reversed(by_id.values()))


def _render(messages: list[dict[str, Any]], directory: Path) -> str:
    cards = []
    for m in messages:
        repeat = (f'<p class="warn">delivered {m["deliveries"]} times with this Message-ID</p>'
                  if m["deliveries"] > 1 else "")
        files = "".join(f"<li>{escape(a['filename'])} ({escape(a['content_type'])}, "
                        f"{a['size_bytes']:,} bytes)</li>" for a in m["attachments"])
        cards.append(
            f"<article><h2>{escape(m['subject']) or '(no subject)'}</h2>"
            f"<p class=meta>From {escape(m['from'])} to {escape(m['to'])}"
            f"{' cc ' + escape(m['cc']) if m['cc'] else ''} &middot; {escape(m['date'])}"
            f"{' &middot; task ' + escape(m['task_id']) if m['task_id'] else ''}</p>{repeat}"
            f"<pre>{escape(m['body'])}</pre>"
            f"{'<p>Attachments:</p><ul>' + files + '</ul>' if files else ''}</article>")
    empty = "<p>No mail yet. Email the agent sends shows up here; none is delivered.</p>"
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>Cadre dev mailbox</title>"
        "<meta http-equiv=refresh content=10><style>body{font-family:system-ui,sans-serif;"
        "max-width:60rem;margin:2rem auto;padding:0 1rem}article{border:1px solid #ccc;"
        "border-radius:.5rem;padding:0 1rem;margin:1rem 0}.meta{color:#555}"
        ".warn{color:#a40}pre{white-space:pre-wrap}</style></head><body>"
        f"<h1>Dev mailbox</h1><p class=meta>{len(messages)} message(s) captured in "
        f"{escape(str(directory))} by Cadre's capture server; nothing here was delivered.</p>"
        f"{''.join(cards) or empty}</body></html>")


def mailbox_router(directory: Path) -> APIRouter:
    router = APIRouter(prefix="/dev", include_in_schema=False)

    async def _messages() -> list[dict[str, Any]]:
        exists = await asyncio.to_thread(directory.is_dir)
        return await asyncio.to_thread(read_mailbox, directory) if exists else []

    @router.get("/mailbox", response_class=HTMLResponse)
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(_render(await _messages(), directory))

    @router.get("/mailbox.json")
    async def as_json() -> dict[str, Any]:
        return {"items": await _messages()}

    return router
