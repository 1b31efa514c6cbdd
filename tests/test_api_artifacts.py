"""Artifacts: what a task's code writes is recorded, listed and downloadable by its owner only,
kept on local disk or in S3."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from app.settings import Settings
from app.stack.sqs import LOCAL_CREDENTIALS
from app.tooling import artifact_store
from graph.testing import call, plan, reply, verdict
from tests.conftest import Services
from tests.service import running_service
from tools.artifacts import Artifacts, S3Store
from tools.builtin import builtin_toolset

CHART = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.plot([1, 2, 3], [10, 30, 20])
plt.savefig("sales.png")
plt.close("all")
import os
os.makedirs("notes", exist_ok=True)
open("notes/summary.txt", "w").write("peak in month 2")
"""


async def test_files_the_code_writes_are_listed_and_downloadable(settings: Settings) -> None:
    async with running_service(settings, toolset=builtin_toolset(
            with_sql=False, with_python=True)) as service:
        service.model.add(plan("Chart the sales"), call("python", {"code": CHART}, id="c1"),
                          call("python", {"code": "open('notes/summary.txt','w').write('v2')"},
                               id="c2"),
                          reply("Charted."), verdict(True))
        created = await service.submit("Chart my sales.")
        done = await service.wait_status(created["id"], "SUCCEEDED", timeout=60)
        first = next(s for s in done["steps"] if s["kind"] == "tool_ran")
        assert '"artifacts": ["notes/summary.txt", "sales.png"]' in first["content"]

        base = f"/v1/tasks/{created['id']}/artifacts"
        listing = await service.http.get(base, headers=service.auth())
        assert listing.status_code == 200
        items = {a["name"]: a for a in listing.json()["items"]}
        assert set(items) == {"sales.png", "notes/summary.txt"}
        assert items["sales.png"]["content_type"] == "image/png"
        assert items["sales.png"]["url"].endswith(f"{base}/sales.png")
        png = await service.http.get(f"{base}/sales.png", headers=service.auth())
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert png.headers["content-type"] == "image/png"
        assert "sales.png" in png.headers["content-disposition"]
        assert len(png.content) == items["sales.png"]["size_bytes"]
        notes = await service.http.get(f"{base}/notes/summary.txt", headers=service.auth())
        assert notes.text == "v2", "writing a file again replaces the artifact"

        assert (await service.http.get(f"{base}/nope.png", headers=service.auth())).status_code == 404
        for path in (base, f"{base}/sales.png"):
            other = await service.http.get(path, headers=service.auth(service.other_key))
            assert other.status_code == 404, "another user's artifacts do not exist for them"
        unknown = await service.http.get(f"/v1/tasks/{uuid.uuid4()}/artifacts",
                                         headers=service.auth())
        assert unknown.status_code == 404
        service.model.assert_done()


async def test_a_file_rewritten_twenty_times_ends_as_its_last_version(settings: Settings) -> None:
    async with running_service(settings, toolset=builtin_toolset(
            with_sql=False, with_python=True)) as service:
        versions = [f"draft {n:02d}" for n in range(1, 21)]  # one size: stamps cannot tell them apart
        service.model.add(plan("Rewrite the report"), *[
            call("python", {"code": f"open('report.txt', 'w').write({text!r})"}, id=f"c{n}")
            for n, text in enumerate(versions)], reply("Rewritten."), verdict(True))
        created = await service.submit("Rewrite my report twenty times.", max_iterations=30)
        done = await service.wait_status(created["id"], "SUCCEEDED", timeout=120)
        results = [s for s in done["steps"] if s["kind"] == "tool_ran"]
        assert len(results) == 20
        for step in results:
            assert '"artifacts": ["report.txt"]' in step["content"], step
        base = f"/v1/tasks/{created['id']}/artifacts"
        final = await service.http.get(f"{base}/report.txt", headers=service.auth())
        assert final.text == versions[-1]
        listing = (await service.http.get(base, headers=service.auth())).json()["items"]
        assert [(a["name"], a["size_bytes"]) for a in listing] == [("report.txt", 8)]
        service.model.assert_done()


async def test_artifacts_in_s3(settings: Settings, services: Services, database_url: str) -> None:
    bucket = f"artifacts-{uuid.uuid4().hex[:8]}"
    in_s3 = settings.model_copy(update={"artifacts_bucket": bucket,
                                        "aws_endpoint_url_s3": services.sqs_endpoint})
    store = artifact_store(in_s3)
    assert isinstance(store, S3Store)
    client = await asyncio.to_thread(store._get_client)
    await asyncio.to_thread(client.create_bucket, Bucket=bucket)
    db = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        user = await db.fetchval("INSERT INTO users (email) VALUES ('s3@example.com') RETURNING id")
        conv = await db.fetchval("INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user)
        task = str(await db.fetchval("INSERT INTO tasks (user_id, conversation_id, input) "
                                     "VALUES ($1, $2, 'x') RETURNING id", user, conv))
        artifacts = Artifacts(db, store)
        saved = await artifacts.save(task, "report.csv", b"a,b\n1,2\n")
        assert saved.uri.startswith(f"s3://{bucket}/artifacts/{task}/")
        assert saved.content_type == "text/csv"
        found = await artifacts.find(task, "report.csv")
        assert found is not None and await artifacts.read(found) == b"a,b\n1,2\n"
        listed = await asyncio.to_thread(client.list_objects_v2, Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == [saved.uri.split("/", 3)[3]]
    finally:
        await db.close()
    assert LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"] == settings.aws_access_key_id
