"""The flagship task end to end on real processes: upload a CSV, the agent analyses it with
pandas in the sandbox, draws a chart, and emails the summary with the chart attached once a
person approves. The worker is SIGKILLed the moment the mail server receives the message;
another worker resumes the step, and the mailbox holds exactly one such email."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api import create_app
from app.deps import open_deps
from app.keys import create_key
from app.mailbox import read_mailbox
from app.settings import Settings
from app.stack.mail import MailCapture
from graph.testing import FakeOpenAIServer, FakeResponse, completion, serving

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

CSV = "region,month,revenue\n" + "".join(
    f"{region},{month},{base + 10 * month}\n"
    for region, base in (("north", 100), ("south", 80)) for month in range(1, 7))

ANALYSIS = """
import pandas as pd
import matplotlib.pyplot as plt
df = pd.read_csv("inputs/sales.csv")
by_region = df.groupby("region")["revenue"].sum()
df.pivot(index="month", columns="region", values="revenue").plot(title="Revenue by month")
plt.savefig("chart.png")
plt.close("all")
f"total={int(df.revenue.sum())} north={int(by_region['north'])} south={int(by_region['south'])}"
"""


def csv_flow_model(body: dict[str, Any]) -> FakeResponse:
    """A model that analyses, then emails what the analysis printed, then reports."""
    choice = body.get("tool_choice")
    name = choice["function"]["name"] if isinstance(choice, dict) else None
    if name == "submit_plan":
        return FakeResponse(body=completion(tool_calls=[("submit_plan", json.dumps(
            {"steps": ["Analyse the CSV", "Chart it", "Email the summary"]}))]))
    if name == "submit_verdict":
        return FakeResponse(body=completion(tool_calls=[
            ("submit_verdict", '{"goal_met": true, "reason": "emailed"}')]))
    results = {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}
    if "call_py" not in results:
        return FakeResponse(body=completion(tool_calls=[
            ("python", json.dumps({"code": ANALYSIS}), "call_py")]))
    if "call_mail" not in results:
        # The result computed from the uploaded file reaches the model marked as untrusted data.
        marked = results["call_py"].splitlines()
        assert marked[0].startswith("<<untrusted ") and marked[-1].startswith("<<end-untrusted ")
        summary = json.loads("\n".join(marked[1:-1]))["value"].strip("'")
        return FakeResponse(body=completion(tool_calls=[("send_email", json.dumps({
            "to": ["boss@example.com"], "subject": "Sales summary",
            "body": f"Summary of sales.csv: {summary}.", "attachments": ["chart.png"]}),
            "call_mail")]))
    return FakeResponse(body=completion("I emailed the summary with the chart to boss@example.com."))


async def test_csv_to_chart_to_email_once_even_when_the_worker_dies_mid_send(
        settings: Settings, service_env: dict[str, str], mail_capture: MailCapture,
        tmp_path: Path) -> None:
    async with FakeOpenAIServer() as model, open_deps(settings) as deps, AsyncExitStack() as stack:
        model.responder = csv_flow_model
        # A killed worker's message comes back after 10 s; its lease lapses as fast.
        await asyncio.to_thread(deps.queue._client.set_queue_attributes, QueueUrl=deps.queue.url,
                                Attributes={"VisibilityTimeout": "10"})
        await asyncio.sleep(1.5)  # a long poll in flight keeps the old timeout
        key = (await create_key(deps.db, email="ana@example.com", role="analyst")).secret
        app = create_app(deps=deps)
        stack.push_async_callback(app.state.streams.aclose)
        port = await stack.enter_async_context(serving(app))
        env = {**service_env, "OPENAI_BASE_URL": model.base_url, "CADRE_MODEL": "fake",
               "SMTP_URL": mail_capture.url, "CADRE_MAIL_FROM": "Cadre <cadre@example.org>",
               "CADRE_LEASE_SECONDS": "10", "CADRE_SQS_WAIT_SECONDS": "1",
               "PYTHONPATH": str(ROOT)}
        spawned: list[asyncio.subprocess.Process] = []

        async def spawn() -> asyncio.subprocess.Process:
            log = await asyncio.to_thread((tmp_path / f"worker-{len(spawned) + 1}.log").open, "wb")
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "worker", env=env, cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT)
            spawned.append(worker)
            return worker

        try:
            worker = await spawn()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                         headers={"Authorization": f"Bearer {key}"}) as http:
                upload = await http.post("/v1/files", files={"file": ("sales.csv", CSV.encode())})
                assert upload.status_code == 201, upload.text
                created = await http.post("/v1/tasks", json={
                    "input": "Analyse this CSV and email the summary with a chart to "
                             "boss@example.com", "files": [upload.json()["id"]]})
                task_id = created.json()["id"]

                task = await _wait(http, task_id, "PENDING_APPROVAL")
                [pending] = [a for a in task["approvals"] if a["status"] == "PENDING"]
                # boss@example.com shares ana's domain, which the policy allows without asking;
                # the email is held because it follows content from the uploaded file.
                assert "untrusted content" in pending["reason"] and "python output" in pending["reason"]
                assert pending["tool"] == "send_email"
                assert pending["arguments"]["attachments"] == ["chart.png"]
                assert "total=1500 north=810 south=690" in pending["arguments"]["body"]
                assert await asyncio.to_thread(read_mailbox, mail_capture.directory) == [], \
                    "nothing is sent before the approval"
                decided = await http.post(f"/v1/tasks/{task_id}/approvals/{pending['id']}",
                                          json={"decision": "approve"})
                assert decided.status_code == 200, decided.text

                # The instant the mail server has the message, the worker dies.
                async with asyncio.timeout(60):
                    while not await asyncio.to_thread(
                            lambda: list(mail_capture.directory.glob("*.eml"))):
                        await asyncio.sleep(0.005)
                worker.send_signal(signal.SIGKILL)
                await worker.wait()
                await spawn()

                done = await _wait(http, task_id, "SUCCEEDED", "FAILED", timeout=90)
                assert done["status"] == "SUCCEEDED", done["error"]
                assert "emailed the summary" in done["final_output"]
                chart = await http.get(f"/v1/tasks/{task_id}/artifacts/chart.png")
                assert chart.status_code == 200 and chart.content.startswith(b"\x89PNG")
            ledger = await deps.db.fetch(
                "SELECT status FROM tool_calls WHERE task_id = $1::uuid AND tool_name = 'send_email'",
                task_id)
        finally:
            for process in spawned:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            await asyncio.gather(*(p.wait() for p in spawned))

    [mail] = await asyncio.to_thread(read_mailbox, mail_capture.directory)
    print(f"\nthe mail server received the message {mail['deliveries']} time(s) "
          "under one Message-ID")
    assert mail["subject"] == "Sales summary" and mail["to"] == "boss@example.com"
    assert "total=1500 north=810 south=690" in mail["body"]
    assert mail["attachments"] == [{"filename": "chart.png", "content_type": "image/png",
                                    "size_bytes": len(chart.content)}]
    assert [r["status"] for r in ledger] == ["SUCCEEDED"]
    assert len(spawned) == 2


async def _wait(http: httpx.AsyncClient, task_id: str, *statuses: str,
                timeout: float = 60) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            task = (await http.get(f"/v1/tasks/{task_id}")).json()
            if task["status"] in statuses:
                return task  # type: ignore[no-any-return]
            await asyncio.sleep(0.1)
