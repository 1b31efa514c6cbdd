"""Live streams: SSE reconnection with Last-Event-ID, and the WebSocket with commands."""

from __future__ import annotations

import asyncio
import json

import websockets

from app.events import EventLog
from graph.testing import call, plan, reply, verdict
from tests.service import Service


async def test_sse_reconnect_with_last_event_id_loses_and_repeats_nothing(service: Service) -> None:
    service.model.add(plan("Send"), call("send_report", {"to": "a@example.com", "body": "b"}))
    created = await service.submit("Send b to a.")
    first = await service.sse(created["id"], stop_after="approval_required")
    assert first[-1]["type"] == "approval_required"

    service.model.add(reply("Sent."), verdict(True))
    await service.http.post(
        f"/v1/tasks/{created['id']}/approvals/{first[-1]['data']['approval_id']}",
        json={"decision": "approve"}, headers=service.auth())
    await asyncio.sleep(0.3)  # the task moves on while nobody listens
    second = await service.sse(created["id"], last_event_id=first[-1]["id"])

    history = await EventLog(service.deps.redis).history(created["id"])
    assert [e["id"] for e in first + second] == [e.id for e in history]
    assert second[-1]["data"]["status"] == "SUCCEEDED"


async def test_websocket_streams_and_takes_an_approval(service: Service) -> None:
    service.model.add(plan("Send"), call("send_report", {"to": "c@example.com", "body": "d"}))
    created = await service.submit("Send d to c.")
    url = service.base_url.replace("http://", "ws://") + f"/v1/tasks/{created['id']}/ws"
    seen: list[dict] = []  # type: ignore[type-arg]
    async with websockets.connect(url, additional_headers=service.auth()) as ws:
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=20))
            if message["type"] in ("ack", "heartbeat"):
                continue
            seen.append(message)
            if message["type"] == "approval_required":
                service.model.add(reply("Sent."), verdict(True))
                await ws.send(json.dumps({"type": "approve",
                                          "approval_id": message["data"]["approval_id"]}))
            if message["type"] == "status" and message["data"]["status"] == "SUCCEEDED":
                break
    types = [m["type"] for m in seen]
    assert types[:2] == ["status", "status"] and "approval_required" in types
    assert types[-2:] == ["final", "status"]
    assert len(service.outbox.sent) == 1


async def test_websocket_refuses_a_bad_key(service: Service) -> None:
    from graph.testing import plan as p

    service.model.add(p("Answer"), reply("x"), verdict(True))
    created = await service.submit("Q")
    url = service.base_url.replace("http://", "ws://") + f"/v1/tasks/{created['id']}/ws"
    async with websockets.connect(url + "?access_token=wrong") as ws:
        try:
            await asyncio.wait_for(ws.recv(), timeout=5)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4401
        else:
            raise AssertionError("an unauthenticated socket got data")
    await service.wait_status(created["id"], "SUCCEEDED")


async def test_idle_stream_sends_keep_alive_comments(settings: object) -> None:
    from tests.service import running_service

    quick = settings.model_copy(update={"sse_heartbeat_seconds": 0.3})  # type: ignore[attr-defined]
    async with running_service(quick) as service:
        service.model.add(plan("Send"), call("send_report", {"to": "e@example.com", "body": "f"}))
        created = await service.submit("Send f to e.")
        await service.sse(created["id"], stop_after="approval_required")
        keep_alives = 0
        async with service.http.stream("GET", f"/v1/tasks/{created['id']}/stream",
                                       headers=service.auth()) as response:
            async for line in response.aiter_lines():
                if line == ": keep-alive":
                    keep_alives += 1
                    if keep_alives == 3:
                        break
        assert keep_alives == 3, "an idle stream stays alive with comments"
        await service.http.post(f"/v1/tasks/{created['id']}/cancel", headers=service.auth())
