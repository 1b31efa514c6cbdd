"""Uploads: stored, typed by content, limited, attached to a task, and readable (read-only)
by the task's Python."""

from __future__ import annotations

import uuid

from graph.testing import call, plan, reply, verdict
from tests.service import Service

CSV = b"month,sales\n1,10\n2,30\n3,20\n"


async def _upload(service: Service, name: str, data: bytes, key: str | None = None):  # type: ignore[no-untyped-def]
    return await service.http.post("/v1/files", files={"file": (name, data)},
                                   headers=service.auth(key))


async def test_upload_and_use_a_csv_in_a_task(settings) -> None:  # type: ignore[no-untyped-def]
    from tests.service import running_service
    from tools.builtin import builtin_toolset

    async with running_service(settings, toolset=builtin_toolset(
            with_sql=False, with_python=True)) as service:
        uploaded = await _upload(service, "../../sales.csv", CSV)
        assert uploaded.status_code == 201, uploaded.text
        meta = uploaded.json()
        assert (meta["name"], meta["content_type"], meta["size_bytes"]) == (
            "sales.csv", "text/csv", len(CSV))
        indexed = await service.deps.db.fetchval(
            "SELECT title FROM kb_documents WHERE file_id = $1::uuid", meta["id"])
        assert indexed == "sales.csv", "text uploads become searchable by their owner"

        service.model.add(
            plan("Sum the sales"),
            call("python", {"code": "import pandas as pd\n"
                                    "int(pd.read_csv('inputs/sales.csv')['sales'].sum())"}),
            reply("Total sales: 60."), verdict(True))
        created = await service.submit("Total the sales in my file.", files=[meta["id"]])
        done = await service.wait_status(created["id"], "SUCCEEDED", timeout=60)
        assert done["final_output"] == "Total sales: 60."
        result = next(s for s in done["steps"] if s["kind"] == "tool_ran")
        assert '"value": "60"' in result["content"]
        service.model.assert_done()


async def test_bad_uploads_are_refused(service: Service) -> None:
    binary = await _upload(service, "tool.exe", b"MZ\x90\x00\x03\x00\x00\x00\xff\xfe\xfd" * 100)
    assert binary.status_code == 415
    assert binary.json()["type"] == "https://cadre.dev/problems/unsupported-media-type"
    empty = await _upload(service, "empty.csv", b"")
    assert empty.status_code == 422
    huge = await _upload(service, "huge.csv", b"a,b\n" + b"1,2\n" * (7 * 1024 * 1024))
    assert huge.status_code == 413
    pdf = await _upload(service, "report.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    assert pdf.status_code == 201 and pdf.json()["content_type"] == "application/pdf"
    assert int(await service.deps.db.fetchval("SELECT count(*) FROM files")) == 1


async def test_someone_elses_file_cannot_be_attached(service: Service) -> None:
    theirs = (await _upload(service, "private.csv", CSV, key=service.other_key)).json()
    for file_id in (theirs["id"], str(uuid.uuid4())):
        response = await service.http.post("/v1/tasks", headers=service.auth(), json={
            "input": "Read it.", "files": [file_id]})
        assert response.status_code == 404
    assert int(await service.deps.db.fetchval("SELECT count(*) FROM tasks")) == 0
