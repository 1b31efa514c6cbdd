"""Cadre as an A2A server, driven by the `a2a-sdk`'s own client (its JSON-RPC transport for
A2A 1.0 and its legacy one for 0.3): the card, a streamed task to its end, an approval
answered by reply, cancel and resubscribe, files both ways, push notifications, another
key's tasks, and bad requests answered as JSON-RPC errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from a2a.client import (
    A2ACardResolver,
    AuthInterceptor,
    Client,
    ClientCallContext,
    ClientConfig,
    ClientFactory,
    CredentialService,
)
from a2a.client.errors import A2AClientError
from a2a.compat.v0_3.jsonrpc_transport import CompatJsonRpcTransport
from a2a.helpers import get_data_parts, new_data_part
from a2a.types import (
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    InvalidParamsError,
    ListTaskPushNotificationConfigsRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskPushNotificationConfig,
    TaskState,
    UnsupportedOperationError,
)
from google.protobuf.json_format import ParseDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.api import create_app
from app.settings import Settings
from graph.testing import call, plan, reply, serving, verdict
from tests.service import Service, running_service
from tools.builtin import builtin_toolset

WORKING, INPUT = TaskState.TASK_STATE_WORKING, TaskState.TASK_STATE_INPUT_REQUIRED
COMPLETED, CANCELED = TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_CANCELED


class _Key(CredentialService):
    """The API key for the card's bearer scheme, as an A2A client keeps its credentials."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def get_credentials(self, security_scheme_name: str,
                              context: ClientCallContext | None) -> str | None:
        return self.key if security_scheme_name == "bearer" else None


@asynccontextmanager
async def a2a_client(base_url: str, key: str, *, streaming: bool = True,
                     polling: bool = False) -> AsyncIterator[Client]:
    """The SDK's client for the agent at `base_url`, found through its card."""
    async with httpx.AsyncClient(timeout=60) as http:
        factory = ClientFactory(ClientConfig(streaming=streaming, polling=polling,
                                             httpx_client=http))
        client = await factory.create_from_url(base_url, interceptors=[AuthInterceptor(_Key(key))])
        try:
            yield client
        finally:
            await client.close()


def text_message(text: str, *, task_id: str = "", context_id: str = "",
                 parts: list[Part] | None = None) -> SendMessageRequest:
    return SendMessageRequest(message=Message(
        role=Role.ROLE_USER, message_id=str(uuid.uuid4()), task_id=task_id,
        context_id=context_id, parts=[Part(text=text), *(parts or [])]))


async def collect(responses: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    return [r async for r in responses]


def states(responses: list[StreamResponse]) -> list[int]:
    return [r.status_update.status.state for r in responses if r.HasField("status_update")]


def steps(responses: list[StreamResponse]) -> list[tuple[str, dict[str, Any]]]:
    """Each status update's message: its words and the Cadre event it carries."""
    return [(m.parts[0].text, get_data_parts(list(m.parts))[0])
            for r in responses if r.HasField("status_update")
            for m in [r.status_update.status.message] if len(m.parts) == 2]


def artifacts(responses: list[StreamResponse]) -> dict[str, Any]:
    return {r.artifact_update.artifact.name: r.artifact_update.artifact
            for r in responses if r.HasField("artifact_update")}


async def test_the_card_names_the_bearer_scheme_and_the_deployments_tools(
        service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.base_url) as http:
        card = await A2ACardResolver(http, service.base_url).get_agent_card()
        raw = (await http.get("/.well-known/agent-card.json")).json()
    url = f"{service.base_url}/a2a"
    assert [(i.url, i.protocol_binding, i.protocol_version) for i in card.supported_interfaces] \
        == [(url, "JSONRPC", "1.0"), (url, "JSONRPC", "0.3")]
    assert raw["url"] == url and raw["protocolVersion"] == "0.3", "a 0.3 client reads it too"
    assert card.capabilities.streaming and card.capabilities.push_notifications
    assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "Bearer"
    assert [list(r.schemes) for r in card.security_requirements] == [["bearer"]]
    skills = {s.id: s for s in card.skills}
    assert {"search", "fetch_url"} <= set(skills)
    assert "send_email" not in skills and "sql" not in skills, \
        "only tools this deployment offers (no SMTP_URL, no AGENT_SQL_URL here)"
    assert skills["fetch_url"].description and "read_only" in skills["fetch_url"].tags


async def test_a_streamed_task_runs_to_its_answer_and_is_read_back_from_postgres(
        service: Service) -> None:
    service.model.add(plan("Look up the price"), call("lookup_price", {"item": "apple"}),
                      reply("An apple costs 1.25 EUR."), verdict(True, "answered"))
    async with a2a_client(service.base_url, service.key) as client:
        responses = await collect(client.send_message(text_message("What does an apple cost?")))
        first = responses[0].task
        assert first.status.state == TaskState.TASK_STATE_SUBMITTED
        assert first.history[0].parts[0].text == "What does an apple cost?"
        assert states(responses)[-1] == COMPLETED
        assert set(states(responses)[:-1]) <= {TaskState.TASK_STATE_SUBMITTED, WORKING}
        assert {"plan", "tool_call", "tool_result", "thought"} <= {
            event["type"] for _, event in steps(responses)}
        text, event = next(step for step in steps(responses) if step[1]["type"] == "tool_call")
        assert "lookup_price" in text and event["arguments"] == {"item": "apple"}
        assert artifacts(responses)["answer"].parts[0].text == "An apple costs 1.25 EUR."

    rest = await service.task(first.id)
    assert rest["status"] == "SUCCEEDED" and rest["conversation_id"] == first.context_id
    # Another API process (a restart) answers from Postgres.
    async with serving(create_app(deps=service.deps), lifespan=True) as port, \
            a2a_client(f"http://127.0.0.1:{port}", service.key) as client:
        task = await client.get_task(GetTaskRequest(id=first.id))
    assert task.status.state == COMPLETED and task.context_id == first.context_id
    assert task.artifacts[0].parts[0].text == "An apple costs 1.25 EUR."
    assert task.history[0].parts[0].text == "What does an apple cost?"


async def test_a_context_is_a_conversation_and_a_client_may_name_a_new_one(
        service: Service) -> None:
    named = str(uuid.uuid4())
    for n in range(3):
        service.model.add(plan("Answer"), reply(f"answer {n}"), verdict(True))
    async with a2a_client(service.base_url, service.key) as client:
        first = (await collect(client.send_message(text_message("q0", context_id=named))))[0]
        second = (await collect(client.send_message(text_message("q1", context_id=named))))[0]
        fresh = (await collect(client.send_message(text_message("q2"))))[0]
        with pytest.raises(InvalidParamsError, match="UUID"):
            await collect(client.send_message(text_message("q3", context_id="my-chat")))
    assert first.task.context_id == second.task.context_id == named
    assert fresh.task.context_id != named
    assert (await service.task(second.task.id))["conversation_id"] == named
    async with a2a_client(service.base_url, service.other_key) as theirs:
        with pytest.raises(TaskNotFoundError, match="conversation"):
            await collect(theirs.send_message(text_message("q4", context_id=named)))


async def test_an_approval_is_input_required_and_the_reply_decides_it(service: Service) -> None:
    service.model.add(plan("Send"), call("send_report", {"to": "bo@example.com", "body": "hi"}))
    async with a2a_client(service.base_url, service.key) as client:
        held = await collect(client.send_message(text_message("Send hi to Bo.")))
        assert states(held)[-1] == INPUT, "the stream ends where the task waits for a person"
        asking = held[-1].status_update.status.message
        assert "send_report" in asking.parts[0].text and "approve" in asking.parts[0].text
        approval = get_data_parts(list(asking.parts))[0]
        assert approval["type"] == "approval_required"
        task_id, context_id = held[0].task.id, held[0].task.context_id
        assert (await service.task(task_id))["status"] == "PENDING_APPROVAL"
        assert (await client.get_task(GetTaskRequest(id=task_id))).status.state == INPUT
        assert service.outbox.sent == []

        with pytest.raises(InvalidParamsError, match="approve"):
            await collect(client.send_message(text_message(
                "maybe later", task_id=task_id, context_id=context_id)))
        service.model.add(reply("Sent."), verdict(True))
        resumed = await collect(client.send_message(text_message(
            "Approve, looks good", task_id=task_id, context_id=context_id)))
        assert resumed[0].task.id == task_id
        assert states(resumed)[-1] == COMPLETED
        assert artifacts(resumed)["answer"].parts[0].text == "Sent."
        with pytest.raises(UnsupportedOperationError, match="has ended"):
            await collect(client.send_message(text_message("approve", task_id=task_id)))

    assert len(service.outbox.sent) == 1
    decided = (await service.task(task_id))["approvals"][0]
    assert decided["id"] == approval["approval_id"]
    assert (decided["status"], decided["comment"]) == ("APPROVED", "looks good")


async def test_a_rejection_as_a_data_part_over_a2a_0_3(service: Service) -> None:
    """The 0.3 method names (`message/stream`, `message/send`, `tasks/get`) through the SDK's
    legacy transport."""
    service.model.add(plan("Send"), call("send_report", {"to": "x@example.com", "body": "y"}))
    async with httpx.AsyncClient(timeout=60, headers=service.auth()) as http:
        card = await A2ACardResolver(http, service.base_url).get_agent_card()
        legacy = CompatJsonRpcTransport(http, card, f"{service.base_url}/a2a")
        streamed = await collect(legacy.send_message_streaming(text_message("Send y to x.")))
        held = streamed[0].task
        assert states(streamed)[-1] == INPUT, "message/stream ends where the task waits"
        service.model.add(plan("Explain"), reply("Not sent, as you asked."), verdict(True))
        request = SendMessageRequest(message=Message(
            role=Role.ROLE_USER, message_id=str(uuid.uuid4()), task_id=held.id, parts=[
                new_data_part({"decision": "reject", "comment": "not to x"})]))
        done = (await legacy.send_message(request)).task
        assert done.status.state == COMPLETED, "message/send blocks until the task ends"
        assert (await legacy.get_task(GetTaskRequest(id=held.id))).artifacts[0].parts[0].text \
            == "Not sent, as you asked."
    assert service.outbox.sent == []
    decided = (await service.task(held.id))["approvals"][0]
    assert (decided["status"], decided["comment"]) == ("REJECTED", "not to x")


async def test_cancel_a_running_task_while_subscribed_to_it(service: Service) -> None:
    service.model.add(plan("Wait"), call("wait_a_while", {"seconds": 1.5}))
    async with a2a_client(service.base_url, service.key, streaming=False,
                          polling=True) as sender, \
            a2a_client(service.base_url, service.key) as client:
        sent = await collect(sender.send_message(text_message("Wait a bit.")))
        task_id = sent[0].task.id
        assert sent[0].task.status.state == TaskState.TASK_STATE_SUBMITTED, \
            "returnImmediately answers at once"
        following = client.subscribe(SubscribeToTaskRequest(id=task_id))
        assert (await anext(following)).task.id == task_id
        await asyncio.wait_for(service.outbox.slow.wait(), timeout=20)
        cancelled = await client.cancel_task(CancelTaskRequest(id=task_id))
        assert cancelled.id == task_id
        rest = await collect(following)
        assert WORKING in states(rest) and states(rest)[-1] == CANCELED
        assert "cancelled" in rest[-1].status_update.status.message.parts[0].text
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(CancelTaskRequest(id=task_id))
        with pytest.raises(UnsupportedOperationError, match="ended"):
            await collect(client.subscribe(SubscribeToTaskRequest(id=task_id)))
    assert (await service.task(task_id))["status"] == "CANCELLED"


async def test_another_keys_tasks_do_not_exist_for_it(service: Service) -> None:
    service.model.add(plan("Send"), call("send_report", {"to": "z@example.com", "body": "z"}))
    async with a2a_client(service.base_url, service.key) as mine:
        held = await collect(mine.send_message(text_message("Send z.")))
    task_id = held[0].task.id
    async with a2a_client(service.base_url, service.other_key) as theirs:
        for attempt in (
                theirs.get_task(GetTaskRequest(id=task_id)),
                theirs.cancel_task(CancelTaskRequest(id=task_id)),
                collect(theirs.subscribe(SubscribeToTaskRequest(id=task_id))),
                collect(theirs.send_message(text_message("approve", task_id=task_id))),
                theirs.list_task_push_notification_configs(
                    ListTaskPushNotificationConfigsRequest(task_id=task_id)),
                theirs.get_task(GetTaskRequest(id="not-a-task-id"))):
            with pytest.raises(TaskNotFoundError):
                await attempt
    assert (await service.task(task_id))["status"] == "PENDING_APPROVAL", "nothing was decided"
    async with a2a_client(service.base_url, "cadre_not_a_key") as stranger:
        with pytest.raises(A2AClientError, match="401"):
            await stranger.get_task(GetTaskRequest(id=task_id))


async def test_a2a_requests_count_against_the_keys_rate_with_the_rest_api(
        settings: Settings) -> None:
    async with running_service(settings.model_copy(update={"rate_limit": "3/minute"})) as service:
        assert (await service.http.get("/v1/tasks", headers=service.auth())).status_code == 200
        async with a2a_client(service.base_url, service.key) as client:
            for _ in range(2):
                with pytest.raises(TaskNotFoundError):
                    await client.get_task(GetTaskRequest(id=str(uuid.uuid4())))
            with pytest.raises(A2AClientError, match="429"):
                await client.get_task(GetTaskRequest(id=str(uuid.uuid4())))
        refused = await service.http.post("/a2a", headers=service.auth(), json={
            "jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "x"}})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["data"]["problem"] == "rate-limited"
        async with a2a_client(service.base_url, service.other_key) as client:
            with pytest.raises(TaskNotFoundError):
                await client.get_task(GetTaskRequest(id=str(uuid.uuid4())))


async def test_bad_requests_are_json_rpc_errors(service: Service) -> None:
    headers = {**service.auth(), "A2A-Version": "1.0"}

    async def rpc(body: Any, **extra: str) -> dict[str, Any]:
        response = await service.http.post("/a2a", headers={**headers, **extra},
                                           **({"content": body} if isinstance(body, bytes)
                                              else {"json": body}))
        assert response.headers["content-type"].startswith("application/json"), response.text
        return response.json()  # type: ignore[no-any-return]

    def call_(method: str, params: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}

    message = {"role": "ROLE_USER", "messageId": "m1", "parts": [
        {"text": "look at this"}, {"url": "http://169.254.169.254/latest", "filename": "x"}]}
    cases = [
        (b"{not json", -32700),
        (call_("NoSuchMethod", {}), -32601),
        (call_("SendMessage", {"message": {"role": "ROLE_USER"}}), -32602),
        (call_("SendMessage", {"message": message}), -32602),
        (call_("SendMessage", {"message": {"role": "ROLE_USER", "messageId": "m2",
                                           "parts": [{"text": " "}]}}), -32602),
        (call_("GetTask", {"id": "nope"}), -32001),
        (call_("GetTask", {"id": "nope", "historyLength": -1}), -32602),
        (call_("ListTasks", {}), -32004),
    ]
    for body, code in cases:
        answer = await rpc(body)
        assert answer["error"]["code"] == code, (body, answer)
        assert "Traceback" not in str(answer)
    legacy = await rpc(call_("tasks/get", {"id": str(uuid.uuid4())}), **{"A2A-Version": "0.3"})
    assert legacy["error"]["code"] == -32001, legacy
    mismatch = await rpc(call_("GetTask", {"id": "x"}), **{"A2A-Version": "0.3"})
    assert mismatch["error"]["code"] == -32009, "1.0 names need A2A-Version 1.0"

    unauthenticated = await service.http.post("/a2a", json=call_("GetTask", {"id": "x"}))
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"] == "Bearer"
    assert unauthenticated.json()["id"] == 7 and unauthenticated.json()["error"]["code"] == -32600


async def test_files_go_in_as_uploads_and_come_back_as_artifacts(settings: Settings) -> None:
    code = ("rows = open('/workspace/inputs/sales.csv').read().splitlines()[1:]\n"
            "open('total.txt', 'w').write(str(sum(int(r.split(',')[1]) for r in rows)))")
    async with running_service(settings, toolset=builtin_toolset(
            with_sql=False, with_python=True)) as service:
        service.model.add(plan("Add up"), call("python", {"code": code}), reply("The total is 42."),
                          verdict(True))
        csv = Part(raw=b"month,sales\njan,20\nfeb,22\n", filename="sales.csv",
                   media_type="text/csv")
        async with a2a_client(service.base_url, service.key) as client:
            responses = await collect(client.send_message(text_message(
                "Add up my sales.", parts=[csv])))
            task = await client.get_task(GetTaskRequest(id=responses[0].task.id))
        assert states(responses)[-1] == COMPLETED
        total = artifacts(responses)["total.txt"].parts[0]
        assert total.filename == "total.txt" and total.media_type == "text/plain"
        assert total.url.endswith(f"/v1/tasks/{task.id}/artifacts/total.txt")
        download = await service.http.get(total.url, headers=service.auth())
        assert download.text == "42"
        assert [a.name for a in task.artifacts] == ["answer", "total.txt"]
        service.model.assert_done()


@dataclass
class Receiver:
    """A client's push endpoint: what it was sent, and with which token."""

    received: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def pushed(self) -> list[StreamResponse]:
        return [ParseDict(body, StreamResponse(), ignore_unknown_fields=True)
                for _, body in self.received]

    async def hook(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.received.append((request.headers.get("x-a2a-notification-token"), body))
        if body.get("statusUpdate", {}).get("status", {}).get("state") == "TASK_STATE_COMPLETED":
            self.ended.set()
        return JSONResponse({"ok": True})


async def test_push_notifications_reach_the_clients_url_and_configs_are_managed(
        settings: Settings) -> None:
    allowed = settings.model_copy(update={"webhook_allow_private": "127.0.0.1"})
    receiver = Receiver()
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with running_service(allowed) as service, serving(app) as port:
        hook = f"http://127.0.0.1:{port}/hook"
        service.model.add(plan("Send"), call("send_report", {"to": "q@example.com", "body": "q"}))
        async with a2a_client(service.base_url, service.key) as client:
            request = text_message("Send q.")
            request.configuration.CopyFrom(SendMessageConfiguration(
                task_push_notification_config=TaskPushNotificationConfig(url=hook, token="t1")))
            held = await collect(client.send_message(request))
            task_id = held[0].task.id
            # Configs get the events sent after they are set (and a moment before).
            async with asyncio.timeout(30):
                while INPUT not in states(receiver.pushed()):
                    await asyncio.sleep(0.05)
            extra = await client.create_task_push_notification_config(TaskPushNotificationConfig(
                task_id=task_id, id="second", url=hook, token="t2"))
            assert extra.id == "second"
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id))
            assert [(c.id, c.token) for c in listed.configs] == [
                (task_id, "t1"), ("second", "t2")], "the config sent with the message first"
            await client.delete_task_push_notification_config(
                DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="second"))
            with pytest.raises(TaskNotFoundError):
                await client.get_task_push_notification_config(
                    GetTaskPushNotificationConfigRequest(task_id=task_id, id="second"))
            for refused in ("http://10.1.2.3/hook", "http://169.254.169.254/latest",
                            "file:///etc/passwd"):
                with pytest.raises(InvalidParamsError):
                    await client.create_task_push_notification_config(
                        TaskPushNotificationConfig(task_id=task_id, url=refused))

            service.model.add(reply("Sent."), verdict(True))
            await collect(client.send_message(text_message("yes", task_id=task_id)))
        await asyncio.wait_for(receiver.ended.wait(), timeout=30)

    tokens = {token for token, _ in receiver.received}
    assert tokens == {"t1"}, "the deleted config got nothing"
    pushed = receiver.pushed()
    assert all(p.status_update.task_id == task_id or p.artifact_update.task_id == task_id
               for p in pushed)
    assert INPUT in states(pushed) and states(pushed)[-1] == COMPLETED
    assert artifacts(pushed)["answer"].parts[0].text == "Sent."


async def test_another_api_process_takes_over_the_pushes_of_one_that_stopped(
        settings: Settings) -> None:
    allowed = settings.model_copy(update={"webhook_allow_private": "127.0.0.1"})
    receiver = Receiver()
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    async with running_service(allowed) as service, serving(app) as port:
        service.model.add(plan("Send"), call("send_report", {"to": "r@example.com", "body": "r"}))
        request = text_message("Send r.")
        request.configuration.task_push_notification_config.CopyFrom(TaskPushNotificationConfig(
            url=f"http://127.0.0.1:{port}/hook", token="t"))
        async with serving(create_app(deps=service.deps), lifespan=True) as first, \
                a2a_client(f"http://127.0.0.1:{first}", service.key) as client:
            task_id = (await collect(client.send_message(request)))[0].task.id
            async with asyncio.timeout(30):
                while INPUT not in states(receiver.pushed()):
                    await asyncio.sleep(0.05)
        # The first process has stopped; the next one's sweep takes the task over at start.
        async with serving(create_app(deps=service.deps), lifespan=True):
            service.model.add(reply("Sent."), verdict(True))
            approval = (await service.task(task_id))["approvals"][0]["id"]
            decided = await service.http.post(f"/v1/tasks/{task_id}/approvals/{approval}",
                                              json={"decision": "approve"}, headers=service.auth())
            assert decided.status_code == 200
            await asyncio.wait_for(receiver.ended.wait(), timeout=30)

    pushed = states(receiver.pushed())
    assert pushed.count(INPUT) == 1 and pushed.count(COMPLETED) == 1, \
        "each event once: the second process went on from the first one's last"
    assert pushed.index(INPUT) < pushed.index(COMPLETED) == len(pushed) - 1
