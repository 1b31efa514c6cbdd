"""Cadre's MCP server driven by the official MCP Python client over streamable HTTP: a task
run with progress notifications, an approval answered through elicitation (or, for a client
that cannot be asked, with the approve tool), the transcript and artifact resources, and
another key's tasks and sessions out of reach."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.context import RequestContext
from mcp.shared.exceptions import McpError
from mcp.types import ElicitRequestParams, ElicitResult, TextResourceContents
from pydantic import AnyUrl

from app.tooling import artifact_store
from graph.testing import call, plan, reply, verdict
from tests.service import Service, running_service
from tools.artifacts import Artifacts

SEND = {"to": "bo@example.com", "body": "hi"}


@asynccontextmanager
async def mcp_session(service: Service, key: str | None = None, *, elicit: Any = None,
                      ) -> AsyncIterator[ClientSession]:
    async with httpx.AsyncClient(headers=service.auth(key), timeout=60) as http, \
            streamable_http_client(f"{service.base_url}/mcp", http_client=http) as (read, write, _), \
            ClientSession(read, write, elicitation_callback=elicit) as session:
        await session.initialize()
        yield session


async def test_run_task_reports_progress_and_asks_the_approval_by_elicitation(settings: Any) -> None:
    async with running_service(settings) as service:
        service.model.add(plan("Send"), call("send_report", SEND), reply("Sent."), verdict(True))
        asked: list[ElicitRequestParams] = []

        async def elicit(context: RequestContext[ClientSession, Any],
                         params: ElicitRequestParams) -> ElicitResult:
            asked.append(params)
            return ElicitResult(action="accept", content={"approve": True, "comment": "fine"})

        progress: list[tuple[float, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, message))

        async with mcp_session(service, elicit=elicit) as session:
            tools = {t.name for t in (await session.list_tools()).tools}
            assert tools == {"run_task", "get_task", "list_tasks", "cancel_task", "approve"}
            result = await session.call_tool("run_task", {"input": "Send hi to Bo."},
                                             progress_callback=on_progress)
            assert not result.isError, result.content
            outcome = result.structuredContent
            assert outcome is not None
            assert outcome["status"] == "SUCCEEDED" and outcome["output"] == "Sent."
            assert outcome["approval"] is None

            # The user was asked once, in their client, about the held call, and said yes.
            (question,) = asked
            assert "send_report" in question.message and "bo@example.com" in question.message
            assert set(question.requestedSchema["properties"]) == {"approve", "comment"}
            assert service.outbox.sent == [{**SEND, "key": service.outbox.sent[0]["key"]}]
            task = await service.task(outcome["task_id"])
            assert [(a["status"], a["comment"]) for a in task["approvals"]] == [("APPROVED", "fine")]

            # A notification per step, in order, with rising progress.
            messages = [m for _, m in progress]
            assert [v for v, _ in progress] == sorted({v for v, _ in progress})
            for expected in ("plan: 1. Send", "calling send_report",
                             "waiting for approval to run send_report", "send_report: done",
                             "answered", "status: succeeded"):
                assert expected in messages, (expected, messages)
            assert messages.index("calling send_report") < messages.index("send_report: done")

            transcript = await session.read_resource(
                AnyUrl(f"cadre://tasks/{outcome['task_id']}/transcript"))
            (text,) = transcript.contents
            assert isinstance(text, TextResourceContents) and text.mimeType == "text/markdown"
            assert "## Send hi to Bo." in text.text and "**Tool send_report**" in text.text
            assert "Approval asked for send_report: approved (fine)" in text.text
            assert "**Answer**\n\nSent." in text.text

            listed = await session.call_tool("list_tasks", {})
            assert [t["task_id"] for t in listed.structuredContent["items"]] == [outcome["task_id"]]

        # Another key: the task does not exist for them.
        async with mcp_session(service, service.other_key) as theirs:
            got = await theirs.call_tool("get_task", {"task_id": outcome["task_id"]})
            assert got.isError and "not found" in got.content[0].text  # type: ignore[union-attr]
            listed = await theirs.call_tool("list_tasks", {})
            assert listed.structuredContent == {"items": [], "next_cursor": None}
        service.model.assert_done()


async def test_a_client_without_elicitation_gets_the_approval_to_decide(settings: Any) -> None:
    async with running_service(settings) as service:
        service.model.add(plan("Send"), call("send_report", SEND))
        async with mcp_session(service) as session:
            result = await session.call_tool("run_task", {"input": "Send hi to Bo."})
            held = result.structuredContent
            assert held is not None and held["status"] == "PENDING_APPROVAL", result.content
            assert held["approval"]["tool"] == "send_report"
            assert held["approval"]["arguments"] == SEND
            assert service.outbox.sent == []

            # The task wrote a file: the artifact resources list and serve it.
            artifacts = Artifacts(service.deps.db, artifact_store(service.deps.settings))
            await artifacts.save(held["task_id"], "notes/draft.txt", b"hi Bo")
            base = f"cadre://tasks/{held['task_id']}/artifacts"
            listing = await session.read_resource(AnyUrl(base))
            assert '"uri": "' + base + "/" + quote("notes/draft.txt", "") + '"' in \
                listing.contents[0].text  # type: ignore[union-attr]
            blob = await session.read_resource(AnyUrl(f"{base}/{quote('notes/draft.txt', '')}"))
            assert blob.contents[0].blob == "aGkgQm8="  # type: ignore[union-attr]

            # Another key can neither decide it nor see it.
            async with mcp_session(service, service.other_key) as theirs:
                refused = await theirs.call_tool("approve", {
                    "task_id": held["task_id"], "approval_id": held["approval"]["approval_id"],
                    "approved": True})
                assert refused.isError and "not found" in refused.content[0].text  # type: ignore[union-attr]
                with pytest.raises(McpError, match="not found"):
                    await theirs.read_resource(AnyUrl(base))
            still = await service.task(held["task_id"])
            assert [a["status"] for a in still["approvals"]] == ["PENDING"]

            service.model.add(plan("Explain"), reply("Not sent, as you asked."), verdict(True))
            decided = await session.call_tool("approve", {
                "task_id": held["task_id"], "approval_id": held["approval"]["approval_id"],
                "approved": False, "comment": "not today"})
            done = decided.structuredContent
            assert done is not None and done["status"] == "SUCCEEDED", decided.content
            assert done["output"] == "Not sent, as you asked."
            assert service.outbox.sent == []

            # Cancel another task while it waits for its approval.
            service.model.add(plan("Send"), call("send_report", SEND))
            waiting = (await session.call_tool("run_task", {"input": "Send it again."}))
            assert waiting.structuredContent["status"] == "PENDING_APPROVAL"  # type: ignore[index]
            cancelled = await session.call_tool(
                "cancel_task", {"task_id": waiting.structuredContent["task_id"]})  # type: ignore[index]
            assert cancelled.structuredContent["status"] == "CANCELLED"  # type: ignore[index]
        service.model.assert_done()


async def test_mcp_needs_a_key_and_keeps_sessions_to_their_owner(settings: Any) -> None:
    async with running_service(settings) as service, httpx.AsyncClient(base_url=service.base_url) as http:
        anonymous = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1,
                                                  "method": "tools/list"})
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.headers["content-type"] == "application/problem+json"
        wrong = await http.post("/mcp", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401

        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "curl", "version": "1"}}}
        accept = {"Accept": "application/json, text/event-stream"}
        opened = await http.post("/mcp", json=initialize,
                                 headers={**service.auth(), **accept})
        assert opened.status_code == 200, opened.text
        session_id = opened.headers["mcp-session-id"]
        hijack = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 2,
                                               "method": "tools/list"},
                                 headers={**service.auth(service.other_key), **accept,
                                          "mcp-session-id": session_id})
        assert hijack.status_code == 404
        assert hijack.headers["content-type"] == "application/problem+json"
        own = await http.post("/mcp", json={"jsonrpc": "2.0", "method":
                                            "notifications/initialized"},
                              headers={**service.auth(), **accept,
                                       "mcp-session-id": session_id})
        assert own.status_code == 202, own.text


async def test_one_user_may_open_only_so_many_sessions(settings: Any) -> None:
    async with running_service(settings.model_copy(update={"mcp_sessions_per_user": 2})) \
            as service, httpx.AsyncClient(base_url=service.base_url) as http:
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "curl", "version": "1"}}}
        headers = {**service.auth(), "Accept": "application/json, text/event-stream"}
        opened = []
        for _ in range(2):
            response = await http.post("/mcp", json=initialize, headers=headers)
            assert response.status_code == 200, response.text
            opened.append(response.headers["mcp-session-id"])
        refused = await http.post("/mcp", json=initialize, headers=headers)
        assert refused.status_code == 429 and refused.json()["limit"] == "mcp_sessions"
        assert "CADRE_MCP_SESSIONS_PER_USER" in refused.json()["detail"]
        other = await http.post("/mcp", json=initialize, headers={
            **headers, **service.auth(service.other_key)})
        assert other.status_code == 200, "the limit is per user"
        ended = await http.delete("/mcp", headers={**headers, "mcp-session-id": opened[0]})
        assert ended.status_code == 200, ended.text
        again = await http.post("/mcp", json=initialize, headers=headers)
        assert again.status_code == 200, "ending a session frees its place"
