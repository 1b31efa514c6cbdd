"""Bad requests: each gets the right status and problem type, and nothing is written."""

from __future__ import annotations

import uuid

import pytest

from tests.service import Service

PROBLEM = "https://cadre.dev/problems/"


async def _task_count(service: Service) -> int:
    return int(await service.deps.db.fetchval("SELECT count(*) FROM tasks"))


def _is_problem(response, kind: str, status: int) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEM + kind and body["status"] == status and body["detail"]


@pytest.mark.parametrize(("headers", "why"), [
    ({}, "missing"),
    ({"Authorization": "Bearer cadre_not-a-real-key"}, "unknown"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "wrong scheme"),
])
async def test_missing_or_invalid_key_is_401(service: Service, headers: dict[str, str],
                                             why: str) -> None:
    response = await service.http.post("/v1/tasks", json={"input": "hi"}, headers=headers)
    _is_problem(response, "unauthorized", 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert await _task_count(service) == 0


async def test_revoked_key_is_401(service: Service) -> None:
    await service.deps.db.execute("UPDATE api_keys SET revoked_at = now()")
    _is_problem(await service.http.get("/v1/tasks", headers=service.auth()), "unauthorized", 401)


@pytest.mark.parametrize("body", [
    {"input": ""},
    {"input": 42},
    {"input": "hi", "max_iterations": 0},
    {"input": "hi", "token_budget": "lots"},
    {"input": "hi", "multitask_strategy": "shove"},
    {"input": "hi", "unexpected": True},
    {"text": "hi"},
])
async def test_invalid_body_is_422(service: Service, body: dict) -> None:  # type: ignore[type-arg]
    response = await service.http.post("/v1/tasks", json=body, headers=service.auth())
    _is_problem(response, "invalid-request", 422)
    assert response.json()["errors"]
    assert await _task_count(service) == 0


async def test_malformed_json_is_422(service: Service) -> None:
    response = await service.http.post("/v1/tasks", content=b"{not json",
                                       headers={**service.auth(), "content-type": "application/json"})
    _is_problem(response, "invalid-request", 422)


async def test_oversized_body_is_413(service: Service) -> None:
    response = await service.http.post("/v1/tasks", json={"input": "x" * (2 * 1024 * 1024)},
                                       headers=service.auth())
    _is_problem(response, "payload-too-large", 413)
    assert await _task_count(service) == 0


async def test_overlong_input_is_422(service: Service) -> None:
    response = await service.http.post("/v1/tasks", json={"input": "x" * 20_001},
                                       headers=service.auth())
    _is_problem(response, "invalid-request", 422)


@pytest.mark.parametrize("path", ["/v1/tasks/{id}", "/v1/tasks/{id}/stream"])
async def test_unknown_task_is_404(service: Service, path: str) -> None:
    for task_id in (str(uuid.uuid4()), "not-a-uuid"):
        _is_problem(await service.http.get(path.format(id=task_id), headers=service.auth()),
                    "not-found", 404)


async def test_another_users_task_is_404_not_403(service: Service) -> None:
    from graph.testing import plan, reply, verdict

    service.model.add(plan("Answer"), reply("mine"), verdict(True))
    created = await service.submit("A private question.")
    await service.wait_status(created["id"], "SUCCEEDED")
    other = service.auth(service.other_key)
    for method, path in [("GET", f"/v1/tasks/{created['id']}"),
                         ("GET", f"/v1/tasks/{created['id']}/stream"),
                         ("POST", f"/v1/tasks/{created['id']}/cancel"),
                         ("POST", f"/v1/tasks/{created['id']}/approvals/{uuid.uuid4()}")]:
        response = await service.http.request(method, path, headers=other,
                                              json={"decision": "approve"} if "approvals" in path
                                              else None)
        _is_problem(response, "not-found", 404)
    sneaky = await service.http.post("/v1/tasks", headers=other, json={
        "input": "continue theirs", "conversation_id": created["conversation_id"]})
    _is_problem(sneaky, "not-found", 404)
    assert await _task_count(service) == 1


async def test_unknown_approval_is_404(service: Service) -> None:
    from graph.testing import plan, reply, verdict

    service.model.add(plan("Answer"), reply("ok"), verdict(True))
    created = await service.submit("Q")
    response = await service.http.post(
        f"/v1/tasks/{created['id']}/approvals/{uuid.uuid4()}", json={"decision": "approve"},
        headers=service.auth())
    _is_problem(response, "not-found", 404)
    await service.wait_status(created["id"], "SUCCEEDED")


async def test_bad_cursor_is_400(service: Service) -> None:
    _is_problem(await service.http.get("/v1/tasks?cursor=zzz", headers=service.auth()),
                "invalid-request", 400)
