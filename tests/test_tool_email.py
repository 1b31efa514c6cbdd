"""`send_email` through the real capture server: attachments from the task's artifacts, a
Message-ID fixed by the idempotency key, clear errors, and the dev mailbox page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.api import create_app
from app.deps import open_deps
from app.mailbox import read_mailbox
from app.settings import Settings
from app.stack.mail import MailCapture
from app.stack.ports import free_port
from tools import ToolContext
from tools.artifacts import Artifacts, DiskStore
from tools.builtin import SmtpMailer, ToolDeps, builtin_toolset
from tools.builtin.mail import message_id

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    yield pool
    await pool.close()


async def _task(db: asyncpg.Pool) -> str:
    user = await db.fetchval("INSERT INTO users (email) VALUES ('ana@example.com') RETURNING id")
    conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
    return str(await db.fetchval("INSERT INTO tasks (user_id, conversation_id, input) "
                                 "VALUES ($1, $2, 'mail it') RETURNING id", user, conv))


async def _mailbox(capture: MailCapture) -> list[dict[str, Any]]:
    return await asyncio.to_thread(read_mailbox, capture.directory)


async def test_an_email_with_a_chart_attached_arrives_once_per_call(
        db: asyncpg.Pool, mail_capture: MailCapture, tmp_path: Path) -> None:
    task_id = await _task(db)
    artifacts = Artifacts(db, DiskStore(root=tmp_path / "artifacts"))
    await artifacts.save(task_id, "chart.png", PNG)
    tool = builtin_toolset(with_sql=False, with_email=True).get("send_email")
    assert tool is not None and tool.risk == "side_effect"
    deps = ToolDeps(mail=SmtpMailer(url=mail_capture.url, sender="Cadre <cadre@example.org>"),
                    artifacts=artifacts)
    ctx = ToolContext(task_id=task_id, tool_call_id="call_mail", deps=deps)
    args = {"to": ["Boss <boss@example.com>"], "cc": ["team@example.com"],
            "subject": "Sales summary", "body": "Sales rose 20% in March.",
            "attachments": ["chart.png"]}

    outcome = await tool.invoke(ctx, args)
    assert outcome.ok, outcome.content
    [mail] = await _mailbox(mail_capture)
    assert mail["subject"] == "Sales summary" and mail["to"] == "Boss <boss@example.com>"
    assert mail["cc"] == "team@example.com" and mail["from"] == "Cadre <cadre@example.org>"
    assert "Sales rose 20% in March." in mail["body"] and mail["task_id"] == task_id
    assert mail["attachments"] == [{"filename": "chart.png", "content_type": "image/png",
                                    "size_bytes": len(PNG)}]
    assert mail["message_id"] == message_id(ctx.idempotency_key, "cadre@example.org")

    # The same call sent again (a worker died before the ledger recorded it) carries the same
    # Message-ID: the mailbox shows one message, delivered twice. Another call is another mail.
    assert (await tool.invoke(ctx, args)).ok
    [again] = await _mailbox(mail_capture)
    assert again["message_id"] == mail["message_id"] and again["deliveries"] == 2
    other = ToolContext(task_id=task_id, tool_call_id="call_other", deps=deps)
    assert (await tool.invoke(other, {**args, "attachments": []})).ok
    assert len(await _mailbox(mail_capture)) == 2


async def test_bad_email_requests_are_explained_to_the_model(
        db: asyncpg.Pool, mail_capture: MailCapture, tmp_path: Path) -> None:
    task_id = await _task(db)
    artifacts = Artifacts(db, DiskStore(root=tmp_path / "artifacts"))
    await artifacts.save(task_id, "report.csv", b"a,b\n1,2\n")
    tool = builtin_toolset(with_sql=False, with_email=True).get("send_email")
    assert tool is not None
    deps = ToolDeps(mail=SmtpMailer(url=mail_capture.url, sender="cadre@example.org"),
                    artifacts=artifacts)

    async def send(deps: ToolDeps = deps, **args: Any) -> str:
        base = {"to": ["a@example.com"], "subject": "Hi", "body": "Hello"}
        outcome = await tool.invoke(ToolContext(task_id=task_id, tool_call_id="c", deps=deps),
                                    {**base, **args})
        assert not outcome.ok
        return outcome.content

    assert "'not-an-address' is not an email address" in await send(to=["not-an-address"])
    assert "at least one address" in await send(to=[])
    assert "one non-empty line" in await send(subject="Hi\r\nBcc: victim@example.com")
    missing = await send(attachments=["chart.png"])
    assert "no artifact named 'chart.png'" in missing and "report.csv" in missing
    assert "at most 20 recipients" in await send(to=[f"u{n}@example.com" for n in range(21)])
    assert "SMTP_URL is unset" in await send(deps=ToolDeps(artifacts=artifacts))
    closed = SmtpMailer(url=f"smtp://127.0.0.1:{free_port()}", sender="cadre@example.org")
    assert "could not send the email" in await send(deps=ToolDeps(mail=closed))
    assert await _mailbox(mail_capture) == [], "nothing was sent"


async def test_the_dev_mailbox_page_lists_captured_mail(settings: Settings,
                                                        mail_capture: MailCapture) -> None:
    mailer = SmtpMailer(url=mail_capture.url, sender="cadre@example.org")
    from email.message import EmailMessage

    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "cadre@example.org", "x@example.com", \
        "Quarterly <numbers>"
    message.set_content("Body text")
    await mailer.send(message)
    with_box = settings.model_copy(update={"dev_mailbox_dir": mail_capture.directory})
    async with open_deps(with_box) as deps:
        transport = httpx.ASGITransport(app=create_app(deps=deps))
        async with httpx.AsyncClient(transport=transport, base_url="http://cadre") as http:
            page = await http.get("/dev/mailbox")
            assert page.status_code == 200
            assert "Quarterly &lt;numbers&gt;" in page.text and "nothing here was delivered" in page.text
            listing = (await http.get("/dev/mailbox.json")).json()["items"]
            assert [m["subject"] for m in listing] == ["Quarterly <numbers>"]
    async with open_deps(settings) as deps:
        transport = httpx.ASGITransport(app=create_app(deps=deps))
        async with httpx.AsyncClient(transport=transport, base_url="http://cadre") as http:
            assert (await http.get("/dev/mailbox")).status_code == 404, \
                "no mailbox page unless the capture server is configured"
