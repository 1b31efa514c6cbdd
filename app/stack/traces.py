"""The local trace viewer `cadre up --traces` starts: Arize Phoenix, which takes OTLP over HTTP
and shows spans after the GenAI conventions (agent, LLM and tool spans, tokens, models).

Phoenix lives in its own virtual environment (`.venv-phoenix` beside the project's, made by
`make install`): its dependencies conflict with Cadre's pins (fastmcp), and it is a separate
process anyway. Its data stays under `CADRE_HOME/phoenix`; it listens on loopback only, and
sends nothing out (its own telemetry is off)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.errors import StackError
from app.stack.process import ManagedProcess, wait_ready

# The project checkout: `.venv-phoenix` sits beside `.venv` there.
_CHECKOUT = Path(__file__).resolve().parents[2]
DEFAULT_VIEWER = _CHECKOUT / ".venv-phoenix" / "bin" / "phoenix"


def viewer_executable(configured: Path | None) -> Path:
    """The Phoenix executable: CADRE_TRACES_VIEWER, else the one `make install` put beside
    the project's virtual environment."""
    found = configured or DEFAULT_VIEWER
    if not os.access(found, os.X_OK):
        raise StackError(f"the trace viewer (Arize Phoenix) is not installed at {found}: run "
                         "`make install` (it installs it into .venv-phoenix), or set "
                         "CADRE_TRACES_VIEWER to a `phoenix` executable")
    return found


@dataclass(frozen=True, kw_only=True)
class TraceViewer:
    executable: Path
    port: int
    grpc_port: int
    data_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def trace_url(self) -> str:
        """A page for one trace (CADRE_TRACE_URL): Phoenix finds its project by itself."""
        return f"{self.url}/redirects/traces/{{trace_id}}"

    def exporter_env(self) -> dict[str, str]:
        """What the API and workers need to send it their spans (OTLP over HTTP)."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_TRACES_EXPORTER": "otlp", "CADRE_TRACE_URL": self.trace_url}

    def process(self) -> ManagedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.data_dir),
               "PHOENIX_WORKING_DIR": str(self.data_dir), "PHOENIX_HOST": "127.0.0.1",
               "PHOENIX_PORT": str(self.port), "PHOENIX_GRPC_PORT": str(self.grpc_port),
               "PHOENIX_TELEMETRY_ENABLED": "false", "DO_NOT_TRACK": "1"}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return ManagedProcess(name="traces", argv=[str(self.executable), "serve"], env=env,
                              log_path=self.log_path)

    def wait_ready(self, proc: ManagedProcess, timeout: float = 120.0) -> None:
        def _probe() -> None:
            httpx.get(f"{self.url}/healthz", timeout=2).raise_for_status()

        wait_ready(proc, _probe, what="the trace viewer", errors=(httpx.HTTPError,),
                   timeout=timeout, interval=0.3)
