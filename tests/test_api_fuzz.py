"""Property-based fuzzing of the running API with Schemathesis: `cadre api` on the real
services, every operation of its OpenAPI document called with generated valid and invalid
input (a fixed seed, a bounded number of examples). No answer is a 5xx, and every answer —
status, media type, headers, body — is one the document promises."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.keys import create_key
from app.settings import Settings
from app.stack.ports import free_port
from tests.cli import CADRE

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = 100
# Not `negative_data_rejection`: it counts a multipart file whose bytes spell "null" as a
# missing file.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


async def _key(settings: Settings) -> str:
    import asyncpg

    db = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        return (await create_key(db, email="fuzz@example.com", role="analyst")).secret
    finally:
        await db.close()


@pytest.fixture
def api(service_env: dict[str, str], settings: Settings, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`cadre api` (no UI) on this test's services: (base URL, an API key)."""
    key = asyncio.run(_key(settings))
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [*CADRE, "api"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        env={**service_env, "CADRE_API_PORT": str(port), "CADRE_UI": "false",
             "CADRE_RATE_LIMIT": "1000000/minute", "PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline, "cadre api did not become healthy"
            time.sleep(0.2)
        yield base, key
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        # A 5xx would have been logged with its traceback: show it with the failure.
        sys.stderr.write((tmp_path / "api.log").read_text()[-4000:])


def test_no_input_gets_a_5xx_and_every_answer_is_documented(api: tuple[str, str]) -> None:
    base, key = api
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    auth = {"Authorization": f"Bearer {key}"}
    failures: list[str] = []
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, "every operation of the document is fuzzed"
    for operation in operations:
        for mode in GenerationMode:
            # schemathesis' own pytest plugin does not run on pytest 9 yet (its lazy loader
            # reads a removed attribute); its strategies do, driven by Hypothesis here.
            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: schemathesis.Case) -> None:
                response = case.call_and_validate(headers=auth, checks=CHECKS, timeout=15)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong: no parameters
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failure is reported
                failures.append(f"{operation.label} ({mode}): {exc}")
    assert not failures, "\n\n".join(failures)
    print("answers by status:", dict(sorted(statuses.items())))
    assert sum(statuses.values()) > 200 and any(200 <= s < 300 for s in statuses)
