"""Traces of tasks: one trace per task from `POST /v1/tasks` through the queue into the worker
and across an approval, with spans after the OpenTelemetry GenAI conventions; content only
when opted in, and then redacted."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.api import create_app
from app.deps import open_deps
from app.keys import create_key
from app.settings import Settings
from graph.testing import (
    FakeOpenAIServer,
    FakeResponse,
    call,
    completion,
    plan,
    reply,
    serving,
    verdict,
)
from tests.service import running_service

ROOT = Path(__file__).resolve().parent.parent

EMAIL = "ana.lopez@example.org"


async def _approved_task(settings: Settings) -> tuple[dict[str, Any], str]:
    """plan -> lookup_price -> send_report (held, approved) -> answer; the task and the
    approval's id."""
    async with running_service(settings) as service:
        service.model.add(plan("Look up the price", "Send it"),
                          call("lookup_price", {"item": "apple"}, id="c-look"),
                          call("send_report", {"to": EMAIL, "body": "1.25 EUR"}, id="c-send"))
        created = await service.submit(f"Price of an apple? Send it to {EMAIL}.")
        held = await service.sse(created["id"], stop_after="approval_required")
        approval_id = held[-1]["data"]["approval_id"]
        service.model.add(reply("An apple costs 1.25 EUR; sent."), verdict(True, "done"))
        decided = await service.http.post(
            f"/v1/tasks/{created['id']}/approvals/{approval_id}", json={"decision": "approve"},
            headers=service.auth())
        assert decided.status_code == 200
        done = await service.wait_status(created["id"], "SUCCEEDED")
        service.model.assert_done()
    return done, approval_id


def _submit(spans: list[ReadableSpan]) -> ReadableSpan:
    """The server span of `POST /v1/tasks` (FastAPI's own instrumentation)."""
    found = [s for s in spans if s.kind == SpanKind.SERVER and s.name == "POST /v1/tasks"]
    assert len(found) == 1, [s.name for s in spans if s.kind == SpanKind.SERVER]
    return found[0]


def _by_name(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_a_task_is_one_trace_from_the_request_to_the_answer(
        settings: Settings, spans: InMemorySpanExporter) -> None:
    done, approval_id = await _approved_task(settings)
    finished = list(spans.get_finished_spans())
    submit = _submit(finished)
    trace_id = submit.context.trace_id
    task_spans = [s for s in finished if s.context.trace_id == trace_id]
    ids = {s.context.span_id: s for s in task_spans}
    endpoint = next(s for s in task_spans if s.name == "fastapi.endpoint"
                    and s.parent is not None and s.parent.span_id == submit.context.span_id)

    # Two runs (before and after the approval), both under the submitting request, which
    # is the trace's root.
    runs = _by_name(task_spans, "invoke_agent")
    assert len(runs) == 2
    assert all(r.parent is not None and r.parent.span_id == endpoint.context.span_id
               for r in runs)
    assert submit.parent is None
    for run in runs:
        assert run.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert run.attributes["gen_ai.agent.name"] == "cadre"
        assert run.attributes["cadre.task.id"] == done["id"]
        assert run.attributes["gen_ai.conversation.id"] == done["conversation_id"]
    assert [r.attributes["cadre.run.status"] for r in sorted(runs, key=lambda s: s.start_time)] \
        == ["PENDING_APPROVAL", "SUCCEEDED"]

    # The wait for a person, between the runs.
    wait = _by_name(task_spans, "approval_wait")
    assert len(wait) == 1 and wait[0].attributes["cadre.approval.id"] == approval_id
    assert wait[0].parent is not None and wait[0].parent.span_id == endpoint.context.span_id
    assert wait[0].attributes["cadre.approval.status"] == "APPROVED"

    chats = _by_name(task_spans, "chat ")
    assert len(chats) == 5, [c.name for c in chats]
    for chat in chats:
        assert chat.kind == SpanKind.CLIENT
        assert chat.parent is not None and ids[chat.parent.span_id].name.startswith("invoke_agent")
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "openai"
        assert chat.attributes["gen_ai.request.model"] == "scripted"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
        assert chat.attributes["gen_ai.response.finish_reasons"] in (("tool_calls",), ("stop",))
    assert [c.attributes["cadre.purpose"] for c in sorted(chats, key=lambda s: s.start_time)] \
        == ["plan", "act", "act", "act", "verify"]

    tools = _by_name(task_spans, "execute_tool")
    assert [(t.attributes["gen_ai.tool.name"], t.attributes["gen_ai.tool.call.id"])
            for t in sorted(tools, key=lambda s: s.start_time)] == [
        ("lookup_price", "c-look"), ("send_report", "c-send")]
    assert all(t.attributes["gen_ai.operation.name"] == "execute_tool" for t in tools)
    assert all(t.status.status_code != StatusCode.ERROR for t in tools)

    policies = {s.attributes["gen_ai.tool.name"]: s.attributes["cadre.policy.verdict"]
                for s in _by_name(task_spans, "policy ")}
    assert policies == {"lookup_price": "allow", "send_report": "approve"}
    assert len(_by_name(task_spans, "budget_check")) == len(chats), "one check per model call"

    # Content is off by default: no prompt, completion, arguments or result on any span.
    for s in task_spans:
        assert not {"gen_ai.input.messages", "gen_ai.output.messages",
                    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result"} & set(s.attributes)
        assert EMAIL not in str(dict(s.attributes))
    assert done["links"].get("trace") is None, "no viewer configured, no link"


async def test_content_on_spans_only_when_opted_in_and_then_redacted(
        settings: Settings, spans: InMemorySpanExporter) -> None:
    opted = settings.model_copy(update={"genai_capture_content": True,
                                        "trace_url": "http://viewer.test/t/{trace_id}"})
    done, _ = await _approved_task(opted)
    finished = list(spans.get_finished_spans())
    submit = _submit(finished)
    chats = [s for s in finished if s.name.startswith("chat ")
             and s.context.trace_id == submit.context.trace_id]
    prompts = [str(c.attributes["gen_ai.input.messages"]) for c in chats]
    assert any("Price of an apple?" in p for p in prompts), "the prompt is there"
    assert all(EMAIL not in p for p in prompts) and any("[REDACTED:email]" in p for p in prompts)
    answers = [str(c.attributes["gen_ai.output.messages"]) for c in chats]
    assert any("An apple costs 1.25 EUR" in a for a in answers)
    send = next(s for s in finished if s.name == "execute_tool send_report")
    assert "[REDACTED:email]" in str(send.attributes["gen_ai.tool.call.arguments"])
    assert send.attributes["gen_ai.tool.call.result"]
    assert done["links"]["trace"] == f"http://viewer.test/t/{submit.context.trace_id:032x}"


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9/v1/traces"])
async def test_an_unreachable_collector_does_not_fail_a_task(
        settings: Settings, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The workers' own exporter set-up, pointed where nothing listens.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from graph import tracing

    provider = TracerProvider()
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=1))
    provider.add_span_processor(processor)
    monkeypatch.setattr(tracing, "TRACER", provider.get_tracer("cadre.graph"))
    async with running_service(settings) as service:
        service.model.add(plan("Answer"), reply("Fine."), verdict(True))
        created = await service.submit("How are you?")
        assert (await service.wait_status(created["id"], "SUCCEEDED"))["final_output"] == "Fine."
    provider.shutdown()


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (protobuf), keeping what the workers export."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []

    async def traces(self, request: Request) -> Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        for resource in export.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource.scope_spans:
                for s in scope.spans:
                    self.spans.append({
                        "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "service": service,
                        "attributes": {a.key: a.value.string_value or a.value.int_value
                                       for a in s.attributes}})
        return Response(b"", media_type="application/x-protobuf")


@pytest.mark.slow
async def test_a_run_resumed_on_another_worker_joins_the_tasks_trace(
        settings: Settings, service_env: dict[str, str], tmp_path: Path,
        spans: InMemorySpanExporter) -> None:
    receiver = OtlpReceiver()
    first_act = asyncio.Event()

    def model_policy(body: dict[str, Any]) -> FakeResponse:
        choice = body.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else None
        if name == "submit_plan":
            return FakeResponse(body=completion(tool_calls=[
                ("submit_plan", '{"steps": ["Answer"]}')]))
        if name == "submit_verdict":
            return FakeResponse(body=completion(tool_calls=[
                ("submit_verdict", '{"goal_met": true, "reason": "ok"}')]))
        first_act.set()
        return FakeResponse(body=completion("42."), delay=3)  # the first worker dies meanwhile

    async with serving(Starlette(routes=[Route("/v1/traces", receiver.traces, methods=["POST"])])) \
            as otlp_port, FakeOpenAIServer() as model, open_deps(settings) as deps, \
            AsyncExitStack() as stack:
        model.responder = model_policy
        # A killed worker's message comes back after 10 s, its lease lapses after 10 s.
        await asyncio.to_thread(deps.queue._client.set_queue_attributes, QueueUrl=deps.queue.url,
                                Attributes={"VisibilityTimeout": "10"})
        key = (await create_key(deps.db, email="ops@example.com", role="operator")).secret
        app = create_app(deps=deps)
        stack.push_async_callback(app.state.streams.aclose)
        port = await stack.enter_async_context(serving(app))
        env = {**service_env, "OPENAI_BASE_URL": model.base_url, "CADRE_MODEL": "fake",
               "CADRE_LEASE_SECONDS": "10", "CADRE_SQS_WAIT_SECONDS": "1",
               "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
               "OTEL_BSP_SCHEDULE_DELAY": "100", "PYTHONPATH": str(ROOT)}

        async def worker(n: int) -> asyncio.subprocess.Process:
            log = (tmp_path / f"worker-{n}.log").open("wb")
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "worker", env=env, cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)

        first = await worker(1)
        second: asyncio.subprocess.Process | None = None
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                         headers={"Authorization": f"Bearer {key}"}) as http:
                created = (await http.post("/v1/tasks", json={"input": "6 x 7?"})).json()
                await asyncio.wait_for(first_act.wait(), timeout=60)
                first.kill()  # mid model call
                await first.wait()
                second = await worker(2)
                async with asyncio.timeout(120):
                    while (await http.get(f"/v1/tasks/{created['id']}")).json()["status"] \
                            != "SUCCEEDED":
                        await asyncio.sleep(0.2)
                    # The second worker's run ends with the task; its spans follow within the
                    # batch delay.
                    while not [s for s in receiver.spans if s["name"] == "invoke_agent cadre"]:
                        await asyncio.sleep(0.1)
        finally:
            for proc in (first, second):
                if proc is not None and proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
        stored = await deps.db.fetchval("SELECT trace_context FROM tasks WHERE id = $1::uuid",
                                        created["id"])
    traceparent = json.loads(stored)["traceparent"]
    _, trace_id, parent_id, _ = traceparent.split("-")
    submit = _submit(list(spans.get_finished_spans()))
    assert f"{submit.context.trace_id:032x}" == trace_id, "the task keeps its request's trace"
    runs = [s for s in receiver.spans if s["name"] == "invoke_agent cadre"]
    assert len(runs) == 1, "the killed worker's run never ended, so never left"
    assert runs[0]["trace_id"] == trace_id and runs[0]["parent"] == parent_id
    assert runs[0]["service"] == "cadre-worker"
    assert runs[0]["attributes"]["cadre.task.id"] == created["id"]
    resumed = [s for s in receiver.spans if s["trace_id"] == trace_id]
    assert {"chat fake", "budget_check"} <= {s["name"] for s in resumed}
    assert all(s["trace_id"] == trace_id for s in receiver.spans
               if s["attributes"].get("cadre.task.id") == created["id"])
