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


async def test_an_upload_with_nul_bytes_is_415_and_nothing_is_kept(service: Service) -> None:
    for content in (b"a,b\n1,\x002\n", b"x" * (1024 * 1024) + b"\x00"):  # in the first chunk or later
        response = await service.http.post("/v1/files", files={"file": ("data.csv", content)},
                                           headers=service.auth())
        _is_problem(response, "unsupported-media-type", 415)
        assert "NUL" in response.json()["detail"]
    assert await service.deps.db.fetchval("SELECT count(*) FROM files") == 0
    assert await service.deps.db.fetchval("SELECT count(*) FROM kb_documents") == 0
    files = service.deps.settings.home / "files"
    assert not files.exists() or not any(files.iterdir()), "no partial file stays on disk"
    # Other control bytes are text a CSV may hold: stored and searchable.
    kept = await service.http.post("/v1/files", files={"file": ("tty.txt", b"red \x1b[31mx\x01\n")},
                                   headers=service.auth())
    assert kept.status_code == 201, kept.text


@pytest.mark.parametrize(("body", "why"), [
    (b'{"input": "a\\u0000b"}', "NUL"),
    (b'{"input": "\\ud800 alone"}', "lone surrogate"),
    (b'{"input": "pay \\u202eevil"}', "right-to-left override"),
])
async def test_control_characters_in_text_are_422(service: Service, body: bytes, why: str) -> None:
    response = await service.http.post("/v1/tasks", content=body, headers={
        **service.auth(), "content-type": "application/json"})
    _is_problem(response, "invalid-request", 422)
    assert await _task_count(service) == 0


async def test_unicode_text_that_is_not_control_is_accepted(service: Service) -> None:
    from graph.testing import plan, reply, verdict

    service.model.add(plan("Answer"), reply("ok"), verdict(True))
    text = "Résumé 👩‍👩‍👧 naïve ﬁ مرحبا 中文 e\u0301 — tabs\tand\nlines"
    created = await service.submit(text)
    done = await service.wait_status(created["id"], "SUCCEEDED")
    assert done["input"] == text


async def test_a_comment_with_control_characters_is_422_and_decides_nothing(
        service: Service) -> None:
    from graph.testing import call, plan

    service.model.add(plan("Send"), call("send_report", {"to": "a@example.com", "body": "b"}))
    created = await service.submit("Send b to a.")
    held = await service.sse(created["id"], stop_after="approval_required")
    url = f"/v1/tasks/{created['id']}/approvals/{held[-1]['data']['approval_id']}"
    response = await service.http.post(url, json={"decision": "approve", "comment": "ok\x00"},
                                       headers=service.auth())
    _is_problem(response, "invalid-request", 422)
    assert (await service.task(created["id"]))["status"] == "PENDING_APPROVAL"
    await service.http.post(f"/v1/tasks/{created['id']}/cancel", headers=service.auth())


@pytest.mark.parametrize(("content", "kind"), [
    (b"input=hi", "application/x-www-form-urlencoded"),
    (b"hi", "text/plain"),
    (b'{"input": "hi"}', None),
])
async def test_a_json_operation_with_another_content_type_is_415(
        service: Service, content: bytes, kind: str | None) -> None:
    headers = {**service.auth(), **({"content-type": kind} if kind else {})}
    response = await service.http.post("/v1/tasks", content=content, headers=headers)
    _is_problem(response, "unsupported-media-type", 415)
    assert await _task_count(service) == 0


@pytest.mark.parametrize("content", [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{",
                                     b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
async def test_json_too_deep_or_not_utf8_is_400(service: Service, content: bytes) -> None:
    response = await service.http.post("/v1/tasks", content=content, headers={
        **service.auth(), "content-type": "application/json"})
    _is_problem(response, "invalid-request", 400)


@pytest.mark.parametrize("path", ["/v1/tasks/%00", "/v1/tasks/%ED%A0%80/artifacts",
                                  "/v1/tasks/%F0%9F%98%80/artifacts/%00",
                                  "/v1/conversations/%00/share"])
async def test_odd_bytes_in_paths_are_404(service: Service, path: str) -> None:
    method = "POST" if path.endswith("/share") else "GET"
    _is_problem(await service.http.request(method, path, headers=service.auth()),
                "not-found", 404)


async def test_odd_bytes_in_headers_are_4xx(service: Service) -> None:
    for headers in ({"Authorization": b"Bearer \xc3\xa9\xff"},
                    {**service.auth(), "Last-Event-ID": b"\xc3\xa9"}):
        response = await service.http.get(f"/v1/tasks/{uuid.uuid4()}/stream", headers=headers)
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"] == "application/problem+json"
