"""The task API end to end: submit, stream, approve, reject, cancel, list."""

from __future__ import annotations

import asyncio

from app.events import EventLog, stream_key
from graph.testing import call, plan, reply, verdict
from tests.service import Service


def _types(events: list[dict]) -> list[str]:  # type: ignore[type-arg]
    """Event types in order, a run of tokens counted once."""
    types = [e["type"] for e in events]
    return [t for i, t in enumerate(types) if t != "token" or i == 0 or types[i - 1] != "token"]


async def test_submit_then_stream_to_the_final_answer(service: Service) -> None:
    service.model.add(plan("Look up the price"), call("lookup_price", {"item": "apple"}),
                      reply("An apple costs 1.25 EUR."), verdict(True, "answered"))
    created = await service.submit("What does an apple cost?")
    assert created["status"] == "QUEUED"
    assert created["links"]["stream"].endswith(f"/v1/tasks/{created['id']}/stream")
    assert created["links"]["ws"].startswith("ws://")

    events = await service.sse(created["id"])
    assert _types(events) == ["status", "status", "model_call", "plan", "model_call",
                              "tool_call", "tool_result", "token", "model_call", "thought",
                              "model_call", "thought", "final", "status"]
    calls = [e["data"] for e in events if e["type"] == "model_call"]
    assert [(c["node"], c["model"], c["finish_reason"]) for c in calls] == [
        ("plan", "scripted", "tool_calls"), ("act", "scripted", "tool_calls"),
        ("act", "scripted", "stop"), ("verify", "scripted", "tool_calls")]
    assert all(e["data"]["schema_version"] == 1 for e in events)
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == [
        "QUEUED", "RUNNING", "SUCCEEDED"]
    assert "".join(e["data"]["text"] for e in events if e["type"] == "token") == \
        "An apple costs 1.25 EUR."
    tool_result = next(e for e in events if e["type"] == "tool_result")
    assert tool_result["data"]["name"] == "lookup_price" and tool_result["data"]["ok"]
    assert events[-2]["data"]["output"] == "An apple costs 1.25 EUR."
    assert len({e["id"] for e in events}) == len(events), "every event has its own id"

    task = await service.task(created["id"])
    assert task["status"] == "SUCCEEDED" and task["final_output"] == "An apple costs 1.25 EUR."
    assert task["usage"]["model_calls"] == 4
    assert [s["kind"] for s in task["steps"]] == [
        "model_called", "plan_made", "model_called", "tool_proposed", "tool_ran", "model_called",
        "model_called", "answer_checked"]
    assert [s["number"] for s in task["steps"]] == list(range(1, 9))


async def test_approval_flow_and_idempotent_decisions(service: Service) -> None:
    service.model.add(plan("Send"), call("send_report", {"to": "bo@example.com", "body": "hi"}))
    created = await service.submit("Send hi to Bo.")
    events = await service.sse(created["id"], stop_after="approval_required")
    approval = events[-1]["data"]
    assert approval["tool"] == "send_report" and approval["risk"] == "side_effect"
    assert approval["arguments"] == {"to": "bo@example.com", "body": "hi"}
    await service.wait_status(created["id"], "PENDING_APPROVAL")
    assert service.outbox.sent == []

    service.model.add(reply("Sent."), verdict(True))
    url = f"/v1/tasks/{created['id']}/approvals/{approval['approval_id']}"
    first = await service.http.post(url, json={"decision": "approve", "comment": "ok"},
                                    headers=service.auth())
    assert first.status_code == 200 and first.json()["status"] == "APPROVED"
    again = await service.http.post(url, json={"decision": "approve"}, headers=service.auth())
    assert again.status_code == 200, "the same decision twice is harmless"
    flip = await service.http.post(url, json={"decision": "reject"}, headers=service.auth())
    assert flip.status_code == 409
    assert flip.headers["content-type"] == "application/problem+json"
    assert flip.json()["type"] == "https://cadre.dev/problems/conflict"

    done = await service.wait_status(created["id"], "SUCCEEDED")
    assert len(service.outbox.sent) == 1
    assert done["approvals"][0]["status"] == "APPROVED"


async def test_reject_flow_replans(service: Service) -> None:
    service.model.add(plan("Send"), call("send_report", {"to": "x@example.com", "body": "y"}))
    created = await service.submit("Send y to x.")
    events = await service.sse(created["id"], stop_after="approval_required")
    service.model.add(plan("Explain"), reply("Not sent, as you asked."), verdict(True))
    response = await service.http.post(
        f"/v1/tasks/{created['id']}/approvals/{events[-1]['data']['approval_id']}",
        json={"decision": "reject", "comment": "no"}, headers=service.auth())
    assert response.status_code == 200
    done = await service.wait_status(created["id"], "SUCCEEDED")
    assert done["final_output"] == "Not sent, as you asked."
    assert service.outbox.sent == []


async def test_cancel_a_running_task_at_the_next_step(service: Service) -> None:
    service.model.add(plan("Wait"), call("wait_a_while", {"seconds": 1.5}))
    # Not started ahead while the model streams: the cancel must find it in `execute`.
    created = await service.submit("Wait a bit.", speculation=False)
    await asyncio.wait_for(service.outbox.slow.wait(), timeout=20)
    response = await service.http.post(f"/v1/tasks/{created['id']}/cancel", headers=service.auth())
    assert response.status_code == 200
    done = await service.wait_status(created["id"], "CANCELLED")
    assert done["error"]["type"] == "cancelled"
    events = await service.sse(created["id"])
    assert events[-1]["data"]["status"] == "CANCELLED"
    assert [s["kind"] for s in done["steps"]] == [
        "model_called", "plan_made", "model_called", "tool_proposed", "tool_ran", "run_stopped"], \
        "the step in flight finished, no later step ran"
    assert done["steps"][-1]["stop"] == "cancelled"


async def test_cancel_while_waiting_for_approval_is_immediate(service: Service) -> None:
    service.model.add(plan("Send"), call("send_report", {"to": "z@example.com", "body": "z"}))
    created = await service.submit("Send z.")
    await service.sse(created["id"], stop_after="approval_required")
    await service.wait_status(created["id"], "PENDING_APPROVAL")
    response = await service.http.post(f"/v1/tasks/{created['id']}/cancel", headers=service.auth())
    assert response.json()["status"] == "CANCELLED"
    task = await service.task(created["id"])
    assert task["approvals"][0]["status"] == "REJECTED"
    assert service.outbox.sent == []


async def test_list_own_tasks_with_cursor_and_filter(service: Service) -> None:
    ids = []
    for n in range(3):
        service.model.add(plan("Answer"), reply(f"answer {n}"), verdict(True))
        ids.append((await service.submit(f"question {n}"))["id"])
        await service.wait_status(ids[-1], "SUCCEEDED")
    page = (await service.http.get("/v1/tasks?limit=2", headers=service.auth())).json()
    assert [t["id"] for t in page["items"]] == [ids[2], ids[1]]
    rest = (await service.http.get(f"/v1/tasks?limit=2&cursor={page['next_cursor']}",
                                   headers=service.auth())).json()
    assert [t["id"] for t in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    failed = (await service.http.get("/v1/tasks?status=FAILED", headers=service.auth())).json()
    assert failed["items"] == []
    theirs = (await service.http.get("/v1/tasks", headers=service.auth(service.other_key))).json()
    assert theirs["items"] == []


async def test_a_task_uses_the_sandboxed_python_across_steps(settings) -> None:  # type: ignore[no-untyped-def]
    from tests.service import running_service
    from tools.builtin import builtin_toolset

    async with running_service(settings, toolset=builtin_toolset(
            with_sql=False, with_python=True)) as service:
        service.model.add(plan("Compute", "Check"),
                          call("python", {"code": "x = 6 * 7\nx"}),
                          call("python", {"code": "x + 1"}),
                          reply("42, and one more is 43."), verdict(True))
        created = await service.submit("Compute 6 times 7 in Python, then add one.")
        events = await service.sse(created["id"])
        results = [e["data"] for e in events if e["type"] == "tool_result"]
        assert [r["name"] for r in results] == ["python", "python"]
        assert '"value": "42"' in results[0]["content"] and '"value": "43"' in results[1]["content"]
        assert events[-1]["data"]["status"] == "SUCCEEDED"
        service.model.assert_done()


async def test_an_approval_request_a_dead_worker_did_not_announce_is_shown(
        service: Service) -> None:
    """A worker that dies between recording a hold and publishing its `approval_required`
    leaves the request unshown; the decision (or the next delivery of the task's message:
    the same repair) shows it, before the decision's own status."""
    log = EventLog(service.deps.redis)
    service.model.add(plan("Send it"), call("send_report", {"to": "bo@example.com", "body": "hi"}))
    created = await service.submit("Send hi to Bo.")
    held = await service.wait_status(created["id"], "PENDING_APPROVAL")
    approval_id = held["approvals"][0]["id"]
    # As if the worker had died before publishing it: the request is not in the stream.
    [request] = [e for e in await log.history(created["id"])
                 if e.type == "approval_required"]
    await service.deps.redis.xdel(stream_key(created["id"]), request.id)
    assert "approval_required" not in [e.type for e in await log.history(created["id"])]

    service.model.add(reply("Sent."), verdict(True))
    decided = await service.http.post(f"/v1/tasks/{created['id']}/approvals/{approval_id}",
                                      json={"decision": "approve"}, headers=service.auth())
    assert decided.status_code == 200, decided.text
    await service.wait_status(created["id"], "SUCCEEDED")
    kinds = [(e["type"], e["data"].get("approval_id") or e["data"].get("approval"))
             for e in await service.sse(created["id"])]
    shown = kinds.index(("approval_required", approval_id))
    assert kinds[shown + 1:shown + 3] == [("status", None), ("status", "APPROVED")]
