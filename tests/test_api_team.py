"""A team task through the API and an in-process worker: `mode: "team"`, the nested events
over SSE, usage per agent, and the share page's nesting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.settings import Settings
from graph.testing import ScriptedModel, call, reply, team_plan, verdict
from tests.service import Service, running_service

PROFILES = '''version = 1

[[agents]]
name = "researcher"
description = "Looks up prices."
instructions = "Find the figure you are asked for with lookup_price."
tools = ["lookup_price"]

[[agents]]
name = "writer"
description = "Writes the summary."
instructions = "Write from the inputs you are given."
'''
APPLE, PEAR, SUMMARY = "Find the apple price", "Find the pear price", "Summarise both prices"


@pytest.fixture
async def team_service(settings: Settings, tmp_path: Path) -> AsyncIterator[Service]:
    profiles = tmp_path / "agents.toml"
    profiles.write_text(PROFILES)
    async with running_service(settings.model_copy(update={"agents_file": profiles})) as running:
        yield running
        running.model.assert_done()


def script(model: ScriptedModel) -> None:
    model.add(team_plan((APPLE, "researcher", []), (PEAR, "researcher", []),
                        (SUMMARY, "writer", [1, 2])))
    model.add_for(APPLE, call("lookup_price", {"item": "apple"}, id="c1"),
                  reply("An apple costs 1.25 EUR."))
    model.add_for(PEAR, call("lookup_price", {"item": "pear"}, id="c1"),
                  reply("A pear costs 2.0 EUR."))
    model.add_for(SUMMARY, reply("Apples 1.25 EUR, pears 2.0 EUR."))
    model.add(reply("An apple costs 1.25 EUR and a pear 2.0 EUR."), verdict(True, "both"))


async def test_a_team_task_streams_its_agents_nested(team_service: Service) -> None:
    service = team_service
    script(service.model)
    created = await service.submit("Price an apple and a pear and sum it up.", mode="team")

    events = await service.sse(created["id"])

    r1, r2, w1 = "manager/researcher#1", "manager/researcher#2", "manager/writer#1"
    steps = [(e["type"], e["data"]["agent"]) for e in events if "agent" in e["data"]]
    agents = [(e["data"]["to"], e["data"]["status"]) for e in events if e["type"] == "agent"]
    assert agents == [(r1, "started"), (r2, "started"), (r1, "returned"), (r2, "returned"),
                      (w1, "started"), (w1, "returned")]
    # Each worker's own steps carry its path; the two researchers' may interleave.
    for path in (r1, r2):
        assert [t for t, a in steps if a == path] == ["model_call", "tool_call", "tool_result",
                                                      "model_call"]
    assert [t for t, a in steps if a == w1] == ["model_call"]
    assert [t for t, a in steps if a == "manager"] == [
        "model_call", "plan", "agent", "agent", "agent", "agent", "agent", "agent",
        "model_call", "thought", "model_call", "thought"]
    plan = next(e["data"]["plan"] for e in events if e["type"] == "plan")
    assert [(p["agent"], p["depends_on"]) for p in plan] == [
        ("researcher", []), ("researcher", []), ("writer", [1, 2])]
    # Only the manager's answer streams as tokens.
    assert "".join(e["data"]["text"] for e in events if e["type"] == "token") == \
        "An apple costs 1.25 EUR and a pear 2.0 EUR."
    final = next(e["data"] for e in events if e["type"] == "final")
    assert set(final["agents"]) == {"manager", r1, r2, w1}

    task = await service.task(created["id"])
    assert task["status"] == "SUCCEEDED"
    assert task["usage"]["model_calls"] == 8
    assert task["usage"]["agents"][r1]["model_calls"] == 2
    assert {s["agent"] for s in task["steps"]} == {"manager", r1, r2, w1}

    conversation = created["conversation_id"]
    link = (await service.http.post(f"/v1/conversations/{conversation}/share",
                                    headers=service.auth())).json()
    page = (await service.http.get(f"/share/{link['token']}")).text
    assert page.count("Delegated to manager/") == 3
    assert page.index(f"Delegated to {r1}") < page.index(f"Tool lookup_price · {r1}") \
        < page.index(f"Delegated to {r2}") < page.index(f"Tool lookup_price · {r2}")
    assert f"{w1} returned" in page
    assert f"Reasoning · {r1}" not in page, "a worker's answer shows once, where it returns"

    replayed = await service.http.post(f"/v1/tasks/{created['id']}/replay",
                                       headers=service.auth())
    assert replayed.status_code == 409
    assert "ran as a team of agents" in replayed.json()["detail"]


async def test_a_team_task_without_usable_profiles_fails_clearly(service: Service) -> None:
    """The bundled profiles' tools are not in this test toolset: the manager may still plan,
    but a plan naming an unknown agent is refused, and re-asked, then the task fails."""
    for _ in range(3):
        service.model.add(team_plan(("Do it", "nobody", [])))
    created = await service.submit("Do something.", mode="team")
    task = await service.wait_status(created["id"], "FAILED")
    assert task["error"]["type"] == "goal_not_met"
    assert "'nobody', which is not a worker agent" in task["error"]["message"]
