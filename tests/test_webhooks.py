"""Signed webhooks from the workers to a loopback receiver: the receiver checks each
signature with the Standard Webhooks algorithm as published (written out here, not taken
from Cadre), fails the first attempts, and must see each event once per id."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.settings import Settings
from graph.testing import call, plan, reply, serving, verdict
from tests.service import Service, running_service


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
    ("Verifying webhook authenticity"): HMAC-SHA256 over "{id}.{timestamp}.{body}" with the
    base64-decoded secret after the whsec_ prefix; any of the space-separated v1 signatures."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    if abs(time.time() - int(headers["webhook-timestamp"])) > 300:
        return False
    return any(hmac.compare_digest(expected, sig.split(",", 1)[1])
               for sig in headers["webhook-signature"].split() if sig.startswith("v1,"))


@dataclass
class Receiver:
    secret: str = ""
    fail_first: int = 2
    attempts: Counter[str] = field(default_factory=Counter)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    forged: int = 0

    async def hook(self, request: Request) -> JSONResponse:
        body = await request.body()
        headers = {k: request.headers[k] for k in ("webhook-id", "webhook-timestamp",
                                                    "webhook-signature")}
        if not verify(self.secret, headers, body):
            self.forged += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        msg_id = headers["webhook-id"]
        self.attempts[msg_id] += 1
        if self.attempts[msg_id] <= self.fail_first:
            return JSONResponse({"error": "try again"}, status_code=503)
        if any(seen["id"] == msg_id for seen in self.accepted):
            return JSONResponse({"ok": "duplicate"})  # deduped by id, as receivers do
        self.accepted.append({"id": msg_id, **json.loads(body)})
        return JSONResponse({"ok": True})

    async def down(self, request: Request) -> JSONResponse:
        self.attempts["down:" + request.headers["webhook-id"]] += 1
        return JSONResponse({"error": "down"}, status_code=500)


@pytest.fixture
async def hooked(settings: Settings) -> Any:
    """The service with webhooks allowed to this machine's loopback, three tries each."""
    allowed = settings.model_copy(update={"webhook_allow_private": "127.0.0.1",
                                          "webhook_max_attempts": 3})
    async with running_service(allowed) as running:
        yield running
        running.model.assert_done()


async def _secret(service: Service, key: str | None = None) -> str:
    response = await service.http.post("/v1/webhooks/secret", headers=service.auth(key))
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    assert secret.startswith("whsec_")
    return secret


async def _deliveries(service: Service, **params: str) -> list[dict[str, Any]]:
    response = await service.http.get("/v1/webhooks/deliveries", params=params,
                                      headers=service.auth())
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _until(check: Any, timeout: float = 60) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := await check()):
            await asyncio.sleep(0.1)
    return found


async def test_signed_events_arrive_once_per_id_after_retries(hooked: Service) -> None:
    receiver = Receiver()
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with serving(app) as port:
        receiver.secret = await _secret(hooked)
        url = f"http://127.0.0.1:{port}/hook"
        hooked.model.add(plan("Send"), call("send_report", {"to": "bo@example.com",
                                                            "body": "hi"}))
        created = await hooked.submit("Send hi to Bo.", webhook_url=url)
        task_id = created["id"]

        async def event(kind: str) -> dict[str, Any] | None:
            return next((e for e in receiver.accepted if e["type"] == kind), None)

        held = await _until(lambda: event("approval.required"))
        assert held["data"]["task_id"] == task_id and held["data"]["tool"] == "send_report"
        assert held["data"]["arguments"] == {"to": "bo@example.com", "body": "hi"}
        hooked.model.add(reply("Sent."), verdict(True))
        decided = await hooked.http.post(
            f"/v1/tasks/{task_id}/approvals/{held['data']['approval_id']}",
            json={"decision": "approve"}, headers=hooked.auth())
        assert decided.status_code == 200, decided.text
        done = await _until(lambda: event("task.succeeded"))
        assert done["data"]["status"] == "SUCCEEDED" and done["data"]["final_output"] == "Sent."

        # Each event: three attempts (two refused), one id, accepted once.
        assert receiver.forged == 0
        assert sorted(receiver.attempts.values()) == [3, 3]
        assert [e["type"] for e in receiver.accepted] == ["approval.required", "task.succeeded"]
        rows = await _deliveries(hooked, task_id=task_id)
        assert {(r["event"], r["status"], r["attempts"], r["last_status"]) for r in rows} == {
            ("approval.required", "DELIVERED", 3, 200), ("task.succeeded", "DELIVERED", 3, 200)}
        assert {r["id"] for r in rows} == set(receiver.attempts)
        # Another user sees none of them.
        other = await hooked.http.get("/v1/webhooks/deliveries", headers=hooked.auth(
            hooked.other_key))
        assert other.status_code == 200 and other.json()["items"] == []


async def test_a_receiver_that_never_answers_2xx_leaves_a_failed_record(hooked: Service) -> None:
    receiver = Receiver()
    app = Starlette(routes=[Route("/down", receiver.down, methods=["POST"])])
    async with serving(app) as port:
        await _secret(hooked)
        # The user's default URL: used by a task that names none.
        put = await hooked.http.put("/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/down"},
                                    headers=hooked.auth())
        assert put.status_code == 200 and put.json()["has_secret"] is True, put.text
        hooked.model.add(plan("Answer"), reply("Done."), verdict(True))
        created = await hooked.submit("Answer.")

        async def given_up() -> list[dict[str, Any]]:
            return [r for r in await _deliveries(hooked, task_id=created["id"])
                    if r["status"] == "FAILED"]

        (row,) = await _until(given_up)
        assert row["event"] == "task.succeeded" and row["attempts"] == 3
        assert row["last_status"] == 500 and "answered 500" in row["last_error"]
        assert row["next_attempt_at"] is None
        assert list(receiver.attempts.values()) == [3]


async def test_webhook_urls_are_checked_at_submit(hooked: Service) -> None:
    no_secret = await hooked.http.post("/v1/tasks", headers=hooked.auth(hooked.other_key), json={
        "input": "Hi.", "webhook_url": "https://example.com/hook"})
    assert no_secret.status_code == 409, no_secret.text
    assert "POST /v1/webhooks/secret" in no_secret.json()["detail"]
    await _secret(hooked)
    for url, why in (("http://10.1.2.3/hook", "a private address"),
                     ("http://localhost:9/hook", "a loopback address"),
                     ("http://169.254.169.254/latest", "a cloud metadata address"),
                     ("ftp://example.com/x", "only http:// and https://"),
                     ("not a url", "not a full URL")):
        response = await hooked.http.post("/v1/tasks", headers=hooked.auth(), json={
            "input": "Hi.", "webhook_url": url})
        assert response.status_code == 422, (url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert why in response.json()["detail"], (url, response.json())
        put = await hooked.http.put("/v1/webhooks", json={"url": url}, headers=hooked.auth())
        assert put.status_code == 422, (url, put.text)
    assert int(await hooked.deps.db.fetchval("SELECT count(*) FROM tasks")) == 0


async def test_a_rotated_secret_signs_from_then_on(hooked: Service) -> None:
    first = await _secret(hooked)
    second = await _secret(hooked)
    assert first != second
    shown = (await hooked.http.get("/v1/webhooks", headers=hooked.auth())).json()
    assert shown["has_secret"] is True and "secret" not in shown
    receiver = Receiver(secret=second, fail_first=0)
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with serving(app) as port:
        hooked.model.add(plan("Answer"), reply("Done."), verdict(True))
        await hooked.submit("Answer.", webhook_url=f"http://127.0.0.1:{port}/hook")
        await _until(lambda: asyncio.sleep(0, result=receiver.accepted))
    assert receiver.forged == 0 and [e["type"] for e in receiver.accepted] == ["task.succeeded"]
