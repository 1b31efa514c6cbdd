"""Live streams: SSE reconnection with Last-Event-ID, and the WebSocket with commands."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets

from app.events import EventLog
from app.settings import Settings
from app.streams import READER_NAME
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


async def _approval(service: Service, text: str) -> tuple[str, str]:
    """A task held for approval: (task id, approval id)."""
    service.model.add(plan("Send"), call("send_report", {"to": "a@example.com", "body": text}))
    created = await service.submit(f"Send {text} to a.")
    held = await service.sse(created["id"], stop_after="approval_required")
    return created["id"], held[-1]["data"]["approval_id"]


async def test_150_followers_of_one_task_all_complete_and_the_api_keeps_answering(
        service: Service) -> None:
    # Over the 100 connections of redis-py's default pool, which each follower used to hold.
    task_id, approval_id = await _approval(service, "b")
    followers = 150
    opened = asyncio.Event()
    ready = 0
    done: list[list[str]] = []

    async def follow(http: httpx.AsyncClient) -> None:
        nonlocal ready
        async with http.stream("GET", f"/v1/tasks/{task_id}/stream", headers=service.auth(),
                               timeout=60) as response:
            assert response.status_code == 200, await response.aread()
            ids: list[str] = []
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    ids.append(line[4:])
                elif line.startswith("event: approval_required"):
                    ready += 1
                    if ready == followers:
                        opened.set()
            done.append(ids)

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    before = (await service.deps.redis.info("clients"))["connected_clients"]
    async with httpx.AsyncClient(base_url=service.base_url, limits=limits) as http:
        running = [asyncio.create_task(follow(http)) for _ in range(followers)]
        await asyncio.wait_for(opened.wait(), timeout=60)
        # Every follower is now waiting live. Redis holds no connection per follower: at
        # most the commands pool (their replays ran at once), the rate limiter's pool (each
        # follower's request was counted), the readers, and a few for the in-process
        # worker's loops. The other endpoints answer as usual.
        clients = (await service.deps.redis.info("clients"))["connected_clients"]
        settings = service.deps.settings
        bound = (settings.redis_pool_size + settings.limiter_pool_size + settings.stream_readers
                 + 5)
        assert clients - before <= bound < followers, \
            f"{clients - before} more Redis connections for {followers} followers"
        readers = [c for c in await service.deps.redis.client_list()
                   if c["name"] == READER_NAME]
        assert 1 <= len(readers) <= service.deps.settings.stream_readers
        assert (await service.http.get(f"/v1/tasks/{task_id}", headers=service.auth())
                ).status_code == 200
        # One scripted model serves both tasks: the second runs once the first is done.
        service.model.add(plan("Answer"), reply("Hello."), verdict(True))
        other = await service.submit("Say hello.")
        await service.wait_status(other["id"], "SUCCEEDED")
        service.model.add(reply("Sent."), verdict(True))
        decided = await service.http.post(f"/v1/tasks/{task_id}/approvals/{approval_id}",
                                          json={"decision": "approve"}, headers=service.auth())
        assert decided.status_code == 200
        await asyncio.wait_for(asyncio.gather(*running), timeout=60)
    history = [e.id for e in await EventLog(service.deps.redis).history(task_id)]
    assert len(done) == followers
    assert all(ids == history for ids in done), "every follower got every event once, in order"


async def test_a_stream_resumed_at_its_terminal_event_ends_at_once(service: Service) -> None:
    service.model.add(plan("Answer"), reply("Done."), verdict(True))
    created = await service.submit("Answer.")
    events = await service.sse(created["id"])
    assert events[-1]["data"]["status"] == "SUCCEEDED"
    for resume_at in (events[-1]["id"], "99999999999999-0"):
        again = await asyncio.wait_for(service.sse(created["id"], last_event_id=resume_at),
                                       timeout=10)
        assert [(e["type"], e["data"]["status"]) for e in again] == [("status", "SUCCEEDED")]
    # Over the WebSocket too.
    url = (service.base_url.replace("http://", "ws://") + f"/v1/tasks/{created['id']}/ws"
           f"?last_event_id={events[-1]['id']}")
    async with websockets.connect(url, additional_headers=service.auth()) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        assert message["type"] == "status" and message["data"]["status"] == "SUCCEEDED"


async def test_a_malformed_last_event_id_is_a_400(service: Service) -> None:
    service.model.add(plan("Answer"), reply("Done."), verdict(True))
    created = await service.submit("Answer.")
    for bad in ("not-an-id", "-1", "1-2-3", "1" * 30, "18446744073709551616-0"):
        response = await service.http.get(f"/v1/tasks/{created['id']}/stream",
                                           headers={**service.auth(), "Last-Event-ID": bad})
        assert response.status_code == 400, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert "Last-Event-ID" in response.json()["detail"]
    url = (service.base_url.replace("http://", "ws://") + f"/v1/tasks/{created['id']}/ws"
           "?last_event_id=nope")
    async with websockets.connect(url, additional_headers=service.auth()) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    await service.wait_status(created["id"], "SUCCEEDED")


async def test_over_the_stream_limit_a_new_stream_gets_503_and_nothing_else_degrades(
        settings: Settings) -> None:
    from tests.service import running_service

    async with running_service(settings.model_copy(update={"stream_limit": 2})) as service:
        task_id, approval_id = await _approval(service, "c")
        async with service.http.stream("GET", f"/v1/tasks/{task_id}/stream",
                                       headers=service.auth()) as one, \
                service.http.stream("GET", f"/v1/tasks/{task_id}/stream",
                                    headers=service.auth()) as two:
            assert one.status_code == two.status_code == 200
            # One line iterator per stream, kept: an abandoned one closes its response.
            lines = [one.aiter_lines(), two.aiter_lines()]
            for stream_lines in lines:
                await _read_until(stream_lines, "event: approval_required")
            full = await service.http.get(f"/v1/tasks/{task_id}/stream", headers=service.auth())
            assert full.status_code == 503
            assert full.headers["retry-after"] == "5"
            assert full.headers["content-type"] == "application/problem+json"
            assert "CADRE_STREAM_LIMIT" in full.json()["detail"]
            assert (await service.http.get(f"/v1/tasks/{task_id}", headers=service.auth())
                    ).status_code == 200
        service.model.add(reply("Sent."), verdict(True))
        await service.http.post(f"/v1/tasks/{task_id}/approvals/{approval_id}",
                                json={"decision": "approve"}, headers=service.auth())
        # The closed streams gave their places back.
        events = await service.sse(task_id)
        assert events[-1]["data"]["status"] == "SUCCEEDED"


async def _read_until(lines: AsyncIterator[str], wanted: str) -> None:
    async with asyncio.timeout(20):
        while not (await anext(lines)).startswith(wanted):
            pass
