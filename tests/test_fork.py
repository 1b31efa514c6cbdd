"""Forking a task from one of its steps: the fork starts from that checkpoint, an edited
instruction is followed, and what the original already did is never done again — a side
effect re-executed under its call id is replayed from the ledger, one proposed anew waits
for approval (counted at the receiving end)."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage

from graph.testing import call, plan, reply, verdict
from tests.service import Service

SEND = {"to": "bo@example.com", "body": "hi"}


async def _sent_once(service: Service) -> dict[str, Any]:
    """A finished task that sent one report, after approval."""
    service.model.add(plan("Send the report"), call("send_report", SEND, id="c1"))
    created = await service.submit("Send hi to Bo.")
    held = await service.wait_status(created["id"], "PENDING_APPROVAL")
    service.model.add(reply("Sent."), verdict(True))
    decided = await service.http.post(
        f"/v1/tasks/{created['id']}/approvals/{held['approvals'][0]['id']}",
        json={"decision": "approve"}, headers=service.auth())
    assert decided.status_code == 200, decided.text
    done = await service.wait_status(created["id"], "SUCCEEDED")
    assert [m["to"] for m in service.outbox.sent] == ["bo@example.com"]
    return done


async def _fork(service: Service, task_id: str, **body: Any) -> dict[str, Any]:
    response = await service.http.post(f"/v1/tasks/{task_id}/fork", json=body,
                                       headers=service.auth())
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def _step(task: dict[str, Any], kind: str) -> int:
    return next(s["number"] for s in task["steps"] if s["kind"] == kind)


async def test_a_fork_before_the_email_follows_its_new_instruction(service: Service) -> None:
    original = await _sent_once(service)
    planned = _step(original, "plan_made")
    service.model.add(call("send_report", {"to": "cy@example.com", "body": "hi"}, id="c2"))
    forked = await _fork(service, original["id"], from_step=planned,
                         input="Send it to cy@example.com instead.", note="wrong recipient")
    assert forked["conversation_id"] != original["conversation_id"]
    held = await service.wait_status(forked["id"], "PENDING_APPROVAL")
    # The fork's record starts as the original's up to the fork point.
    assert held["steps"][:planned] == original["steps"][:planned]
    # The model saw the original request and the edit, and nothing of what came after.
    act = service.model.calls[-1].messages
    asked = [str(m.content) for m in act if isinstance(m, HumanMessage)]
    assert asked[-2:] == ["Send hi to Bo.", "Send it to cy@example.com instead."]
    assert not any("sent to bo@example.com" in str(m.content) for m in act)
    # Its own side effect waits for approval like any other; the original's is not redone.
    assert [a["tool"] for a in held["approvals"]] == ["send_report"]
    assert [m["to"] for m in service.outbox.sent] == ["bo@example.com"]

    service.model.add(reply("Sent to Cy."), verdict(True))
    decided = await service.http.post(
        f"/v1/tasks/{forked['id']}/approvals/{held['approvals'][0]['id']}",
        json={"decision": "approve"}, headers=service.auth())
    assert decided.status_code == 200
    done = await service.wait_status(forked["id"], "SUCCEEDED")
    assert done["final_output"] == "Sent to Cy."
    assert [m["to"] for m in service.outbox.sent] == ["bo@example.com", "cy@example.com"]
    assert done["options"]["fork"] == {"task_id": original["id"], "from_step": planned,
                                       "instruction": "Send it to cy@example.com instead.",
                                       "note": "wrong recipient"}

    # The shared transcript says where the fork came from.
    shared = await service.http.post(f"/v1/conversations/{forked['conversation_id']}/share",
                                     headers=service.auth())
    assert shared.status_code == 201, shared.text
    page = await service.http.get(f"/share/{shared.json()['token']}")
    assert f"This run is a retry of task {original['id']} from its step {planned}" in page.text


async def test_a_fork_that_executes_the_approved_email_again_replays_it(service: Service) -> None:
    original = await _sent_once(service)
    # The state after the approval, before the call ran: the fork executes it again.
    approved = _step(original, "tool_held")
    service.model.add(reply("Sent, again."), verdict(True))
    forked = await _fork(service, original["id"], from_step=approved)
    done = await service.wait_status(forked["id"], "SUCCEEDED")
    ran = [s for s in done["steps"] if s["kind"] == "tool_ran"]
    assert [(s["call_id"], s["replayed"]) for s in ran] == [("c1", True)]
    assert [m["to"] for m in service.outbox.sent] == ["bo@example.com"], "sent once, ever"
    assert done["approvals"] == [], "nothing new to approve"


async def test_a_fork_with_an_edited_tool_result(service: Service) -> None:
    service.model.add(plan("Price it"), call("lookup_price", {"item": "pear"}, id="p1"),
                      reply("A pear costs 2 EUR."), verdict(True))
    original = await service.submit("What does a pear cost?")
    done = await service.wait_status(original["id"], "SUCCEEDED")
    priced = next(s for s in done["steps"] if s["kind"] == "tool_ran")["number"]
    bad = await service.http.post(f"/v1/tasks/{original['id']}/fork", headers=service.auth(),
                                  json={"from_step": priced, "tool_results": {"nope": "x"}})
    assert bad.status_code == 422 and "no tool call nope" in bad.json()["detail"]
    edited = '{"item": "pear", "price_eur": 9.0}'
    service.model.add(reply("A pear costs 9 EUR."), verdict(True))
    forked = await _fork(service, original["id"], from_step=priced,
                         tool_results={"p1": edited})
    again = await service.wait_status(forked["id"], "SUCCEEDED")
    assert again["final_output"] == "A pear costs 9 EUR."
    seen = [str(m.content) for m in service.model.calls[-2].messages
            if getattr(m, "tool_call_id", None) == "p1"]
    assert seen == [edited], "the fork's model read the edited result"


async def test_fork_errors(service: Service) -> None:
    original = await _sent_once(service)
    too_far = await service.http.post(f"/v1/tasks/{original['id']}/fork",
                                      json={"from_step": 999}, headers=service.auth())
    assert too_far.status_code == 422 and "from_step" in too_far.json()["detail"]
    theirs = await service.http.post(f"/v1/tasks/{original['id']}/fork", json={"from_step": 1},
                                     headers=service.auth(service.other_key))
    assert theirs.status_code == 404
    service.model.add(plan("Wait"), call("wait_a_while", {"seconds": 3}))
    busy = await service.submit("Wait a bit.", speculation=False)
    await service.wait_status(busy["id"], "RUNNING")
    running = await service.http.post(f"/v1/tasks/{busy['id']}/fork", json={"from_step": 1},
                                      headers=service.auth())
    assert running.status_code == 409
    service.model.add(reply("Waited."), verdict(True))
    await service.wait_status(busy["id"], "SUCCEEDED")
