"""The Helm chart in `deploy/helm/cadre`, rendered by Helm for dev, staging and prod (and the
e2b-sandbox and pinned-digest variants), each manifest checked against Kubernetes' schemas
(kubernetes-validate, strict) and a security linter (checkov), and what matters to Cadre
asserted on the rendered objects: shutdown grace, probes, the migration hook, queue-depth
autoscaling, sticky sessions, non-root containers, network policies. Plus `cadre probe`, the
workers' liveness probe. The tools come from `make` (.venv-deploy); missing, the test fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.worker import SHUTDOWN_GRACE_SECONDS
from tests.cli import run_cadre
from tests.service import Service

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "cadre"
TOOLS = ROOT / ".venv-deploy" / "bin"
DIGEST = "sha256:" + "ab" * 32
RENDERS = {
    "dev": ["-f", str(CHART / "values-dev.yaml")],
    "staging": ["-f", str(CHART / "values-staging.yaml")],
    "prod": ["-f", str(CHART / "values-prod.yaml")],
    "prod-e2b": ["-f", str(CHART / "values-prod.yaml"), "--set", "sandbox.backend=e2b"],
    "prod-pinned": ["-f", str(CHART / "values-prod.yaml"), "--set", f"image.digest={DIGEST}"],
}
# Checks the chart fails on purpose, and why:
# CKV_K8S_35 (secrets as files): Cadre reads every setting from the environment.
# CKV_K8S_43 (image digest): set image.digest to pin one (the "prod-pinned" render passes).
# CKV_K8S_31 (seccomp RuntimeDefault), workers with bubblewrap only: it creates user
#   namespaces, which the default profile forbids (the "prod-e2b" render passes).
ACCEPTED = {"CKV_K8S_35"}


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make test` installs the chart tools into .venv-deploy")
    return str(path)


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def _render(name: str, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    code, out = await _run(_tool("helm"), "template", "rel", str(CHART), "--namespace", "cadre",
                           *RENDERS[name])
    assert code == 0, out
    path = tmp_path / f"{name}.yaml"
    path.write_text(out)
    return path, [d for d in yaml.safe_load_all(out) if d]


def _find(objects: list[dict[str, Any]], kind: str, component: str | None = None
          ) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (
        component is None or o["metadata"].get("labels", {}).get(
            "app.kubernetes.io/component") == component)]


async def test_the_chart_renders_valid_and_linted_manifests(tmp_path: Path) -> None:
    rendered = {name: await _render(name, tmp_path) for name in RENDERS}

    for name, (path, _) in rendered.items():
        code, out = await _run(_tool("kubernetes-validate"), "--strict", "--quiet", str(path))
        assert code == 0, f"{name}: {out}"
        unknown = [line for line in out.splitlines() if "Couldn't find schema" in line]
        assert all("ScaledObject" in line for line in unknown), unknown  # KEDA's own CRD

    code, out = await _run(_tool("checkov"), "--directory", str(tmp_path), "--framework",
                           "kubernetes", "--output", "json", "--quiet", "--compact",
                           "--skip-download")
    reports = json.loads(out[out.index("["):] if out.lstrip().startswith("[") else
                         out[out.index("{"):])
    reports = reports if isinstance(reports, list) else [reports]
    failed: dict[str, set[str]] = {}
    for report in reports:
        for check in report.get("results", {}).get("failed_checks", []):
            render = Path(check["file_path"]).stem
            failed.setdefault(render, set()).add(f"{check['check_id']} {check['resource']}")
    assert rendered.keys() >= failed.keys()
    assert any(f.startswith("CKV_K8S_35 ") for f in failed.get("prod", ())), \
        "checkov ran over the renders (it always reports secrets as environment variables)"
    for render, found in failed.items():
        unexpected = {f for f in found if f.split()[0] not in ACCEPTED
                      and not (f.startswith("CKV_K8S_43 ") and render != "prod-pinned")
                      and not (f.startswith("CKV_K8S_31 ") and "worker" in f
                               and render != "prod-e2b")}
        assert not unexpected, f"{render}: {sorted(unexpected)}"
    assert not any(f.startswith("CKV_K8S_43 ") for f in failed.get("prod-pinned", ()))
    assert not any(f.startswith("CKV_K8S_31 ") for f in failed.get("prod-e2b", ()))

    _, prod = rendered["prod"]
    (worker,) = _find(prod, "Deployment", "worker")
    spec = worker["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_SECONDS
    (container,) = spec["containers"]
    assert container["livenessProbe"]["exec"]["command"] == ["cadre", "probe"]
    assert spec["securityContext"]["seccompProfile"]["type"] == "Unconfined"  # bubblewrap
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"
    (api,) = _find(prod, "Deployment", "api")
    (api_container,) = api["spec"]["template"]["spec"]["containers"]
    assert api_container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    for deployment in (worker, api):
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            assert c["securityContext"]["runAsNonRoot"] and \
                c["securityContext"]["readOnlyRootFilesystem"]
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (job,) = _find(prod, "Job", "migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["cadre", "migrate"]
    (scaled,) = _find(prod, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue" and trigger["metadata"]["scaleOnInFlight"] == "true"
    assert trigger["metadata"]["queueLength"] == "32"  # CADRE_WORKER_CONCURRENCY
    assert scaled["spec"]["maxReplicaCount"] == 50
    (ingress,) = _find(prod, "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert {p["metadata"]["name"] for p in _find(prod, "PodDisruptionBudget")} == {
        "rel-cadre-api", "rel-cadre-worker"}
    policies = {p["metadata"]["name"]: p["spec"] for p in _find(prod, "NetworkPolicy")}
    assert policies["rel-cadre-worker"]["ingress"] == []
    assert {"Secret"} & {o["kind"] for o in prod} == set(), "prod uses an existing Secret"

    _, dev = rendered["dev"]
    assert not _find(dev, "ScaledObject") and not _find(dev, "HorizontalPodAutoscaler")
    (dev_worker,) = _find(dev, "Deployment", "worker")
    assert dev_worker["spec"]["replicas"] == 1

    code, out = await _run(_tool("helm"), "template", "rel", str(CHART))
    assert code != 0 and "config.SQS_QUEUE_URL is needed" in out, "no queue, no render"


async def test_cadre_probe_reflects_a_workers_heartbeat(service: Service,
                                                        service_env: dict[str, str]) -> None:
    alive = await run_cadre("probe", env=service_env)
    assert alive.code == 0 and "a worker is alive" in alive.stdout, alive.stderr
    # Another Redis database: no worker has a heartbeat there.
    elsewhere = urlsplit(service_env["REDIS_URL"])._replace(path="/7").geturl()
    gone = await run_cadre("probe", env={**service_env, "REDIS_URL": elsewhere})
    assert gone.code == 1 and "no live worker" in gone.stdout
    down = await run_cadre("probe", env={**service_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.code == 2 and "Redis unreachable" in down.stderr
