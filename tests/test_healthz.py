"""`GET /healthz` reports each backing service through the real ASGI app."""

from __future__ import annotations

from typing import Any

import httpx

from app import migrate
from app.api import create_app
from app.settings import Settings
from app.stack.ports import free_port

HEAD = migrate.head_revision()  # read at import: the tests run on an event loop


async def _get(settings: Settings) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://cadre") as client:
        return await client.get("/healthz")


async def test_healthy_stack(settings: Settings) -> None:
    response = await _get(settings)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {name: c["ok"] for name, c in body["checks"].items()} == {
        "postgres": True, "redis": True, "sqs": True,
    }
    assert f"schema {HEAD}" in body["checks"]["postgres"]["detail"]


async def test_unreachable_redis_is_503_and_named(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    response = await _get(broken)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False
    assert "cannot reach" in body["checks"]["redis"]["detail"]
    assert body["checks"]["postgres"]["ok"] is True


async def test_unmigrated_database_is_reported(settings: Settings, empty_database_url: str) -> None:
    response = await _get(settings.model_copy(update={"database_url": empty_database_url}))
    assert response.status_code == 503
    assert "cadre migrate" in response.json()["checks"]["postgres"]["detail"]


async def test_metrics_report_tasks_queue_and_workers(service: object) -> None:
    from graph.testing import plan, reply, verdict

    service.model.add(plan("Answer"), reply("ok"), verdict(True))  # type: ignore[attr-defined]
    created = await service.submit("Q")  # type: ignore[attr-defined]
    await service.wait_status(created["id"], "SUCCEEDED")  # type: ignore[attr-defined]
    response = await service.http.get("/metrics")  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'cadre_tasks{status="SUCCEEDED"} 1.0' in text
    assert 'cadre_queue_messages{state="visible"} 0.0' in text
    assert "cadre_workers_alive 1.0" in text
    assert 'cadre_http_requests_total{method="POST",status="202"} 1.0' in text


async def test_metrics_count_every_workers_steps_tokens_tool_calls_and_approvals(
        service: object) -> None:
    from graph.testing import call, plan

    svc: Any = service
    svc.model.add(plan("Look up", "Send"), call("lookup_price", {"item": "apple"}),
                  call("lookup_price", {"item": "kiwi"}),
                  call("send_report", {"to": "a@example.com", "body": "b"}))
    held = await svc.submit("Price of an apple, then send it.")
    await svc.wait_status(held["id"], "PENDING_APPROVAL")
    text = (await svc.http.get("/metrics")).text
    assert "cadre_approvals_waiting 1.0" in text
    # Four model calls (plan + three acts), 30+15 and 3 x 20+10 tokens, three tools.
    assert 'cadre_step_latency_seconds_count{node="act"} 3.0' in text
    assert 'cadre_step_latency_seconds_count{node="plan"} 1.0' in text
    assert 'cadre_step_latency_seconds_count{node="execute"} 2.0' in text
    assert 'cadre_step_latency_seconds_bucket{le="+Inf",node="act"} 3.0' in text
    assert 'cadre_model_tokens_total{direction="input",model="scripted"} 90.0' in text
    assert 'cadre_model_tokens_total{direction="output",model="scripted"} 45.0' in text
    assert 'cadre_tool_calls_total{outcome="ok",tool="lookup_price"} 1.0' in text
    assert 'cadre_tool_calls_total{outcome="error",tool="lookup_price"} 1.0' in text
    assert 'cadre_tool_calls_total{outcome="held",tool="send_report"} 1.0' in text
    await svc.http.post(f"/v1/tasks/{held['id']}/cancel", headers=svc.auth())
    text = (await svc.http.get("/metrics")).text
    assert "cadre_approvals_waiting 0.0" in text
