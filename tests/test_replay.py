"""Replaying an ended task from its record: the current graph reproduces it with no model
call and no tool call, and after a policy change it names the first step decided otherwise
(through the API, the graph-level function and `cadre replay`)."""

from __future__ import annotations

from pathlib import Path

import guardrails
from app.replays import replay_task
from app.settings import Settings
from app.store import task_row
from graph.testing import call, plan, reply, verdict
from guardrails.policy import parse_policy
from tests.agent import make_toolset
from tests.cli import run_cadre
from tests.service import Service, running_service
from tools.builtin import builtin_toolset

DEFAULT_POLICY = (Path(guardrails.__file__).parent / "policy.toml").read_text()


def _denying(tool: str) -> str:
    return DEFAULT_POLICY + (f'\n[[rules]]\nname = "no-{tool}"\ntool = "{tool}"\n'
                             f'verdict = "deny"\nreason = "{tool} is off for now"\n')


async def _approved_report(service: Service) -> str:
    service.model.add(plan("Price it", "Send it"), call("lookup_price", {"item": "pear"}),
                      call("send_report", {"to": "bo@example.com", "body": "2 EUR"}))
    created = await service.submit("Price a pear and send it to Bo.")
    held = await service.wait_status(created["id"], "PENDING_APPROVAL")
    service.model.add(reply("Sent: 2 EUR."), verdict(True))
    await service.http.post(f"/v1/tasks/{created['id']}/approvals/{held['approvals'][0]['id']}",
                            json={"decision": "approve", "comment": "ok"}, headers=service.auth())
    await service.wait_status(created["id"], "SUCCEEDED")
    return str(created["id"])


async def test_replay_reproduces_an_ended_task_without_calling_anything(service: Service) -> None:
    task_id = await _approved_report(service)
    steps = (await service.task(task_id))["steps"]
    sent = list(service.outbox.sent)
    calls = len(service.model.calls)
    response = await service.http.post(f"/v1/tasks/{task_id}/replay", headers=service.auth())
    assert response.status_code == 200, response.text
    report = response.json()
    assert report == {"reproduced": True, "compared": len(steps), "divergence": None,
                      "summary": f"reproduced: all {len(steps)} steps the same"}
    assert service.outbox.sent == sent, "no tool ran"
    assert len(service.model.calls) == calls, "no model call"
    theirs = await service.http.post(f"/v1/tasks/{task_id}/replay",
                                     headers=service.auth(service.other_key))
    assert theirs.status_code == 404

    # After a policy change: the held call would now be denied.
    task = await service.deps.db.fetchrow("SELECT * FROM tasks WHERE id = $1::uuid", task_id)
    changed = await replay_task(service.deps.db, task_row(task), toolset=make_toolset(
        service.outbox), policy=parse_policy(_denying("send_report")))
    held = next(s for s in steps if s["kind"] == "tool_held")
    assert changed.divergence is not None and changed.divergence.step == held["number"]
    assert "held for approval" in changed.divergence.recorded
    assert "not run (denied)" in changed.divergence.replayed


async def test_a_running_task_is_not_replayed(service: Service) -> None:
    service.model.add(plan("Send"), call("send_report", {"to": "x@example.com", "body": "y"}))
    created = await service.submit("Send y to x.")
    await service.wait_status(created["id"], "PENDING_APPROVAL")
    response = await service.http.post(f"/v1/tasks/{created['id']}/replay",
                                       headers=service.auth())
    assert response.status_code == 409 and "once it has ended" in response.json()["detail"]


async def test_cadre_replay_names_the_step_a_new_policy_changes(
        settings: Settings, service_env: dict[str, str], tmp_path: Path) -> None:
    async with running_service(settings, toolset=builtin_toolset(with_sql=False)) as service:
        service.model.add(plan("Look it up"), call("search", {"query": "lease"}),
                          reply("Leases are renewed every second."), verdict(True))
        created = await service.submit("How are leases renewed?")
        done = await service.wait_status(created["id"], "SUCCEEDED")
    same = await run_cadre("replay", created["id"], env=service_env)
    assert same.code == 0, same.stderr
    assert same.stdout.strip() == f"reproduced: all {len(done['steps'])} steps the same"

    strict = tmp_path / "policy.toml"
    strict.write_text(_denying("search"))
    changed = await run_cadre("replay", created["id"],
                              env={**service_env, "CADRE_POLICY_FILE": str(strict)})
    searched = next(s for s in done["steps"] if s["kind"] == "tool_ran")
    assert changed.code == 1, changed.stderr
    assert f"diverges at step {searched['number']}" in changed.stdout
    assert "search" in changed.stdout and "not run (denied)" in changed.stdout
    unknown = await run_cadre("replay", "not-a-task", env=service_env)
    assert unknown.code == 2 and "not found" in unknown.stderr
