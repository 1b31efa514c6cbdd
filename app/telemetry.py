"""Traces: the OpenTelemetry SDK set up from the standard `OTEL_*` environment, and the W3C
trace context carried from the API through the queue to the workers. The server span of each
HTTP request is FastAPI's own (its built-in instrumentation, with the global provider set
here), continuing a trace the client sent in `traceparent`.

Tracing is on when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or, with it
unset, when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true` turns it off. Off, no SDK is
installed and every span is the API's no-op. On, spans leave through a batch processor: a
background thread with a bounded queue, so a slow or unreachable collector never holds up a
task (spans it cannot take are dropped). The sampler is the SDK's, from
`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`; the service name from `OTEL_SERVICE_NAME`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from app.settings import Settings
from graph.tracing import Tracing
from guardrails.redaction import redact

log = logging.getLogger("cadre.telemetry")
TRACER = trace.get_tracer("cadre.app")
# An export that cannot reach its collector gives up after this long (unless
# OTEL_EXPORTER_OTLP_TIMEOUT says otherwise), in the exporter's own thread.
EXPORT_TIMEOUT_SECONDS = 5


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(_exporters(env))


def _exporters(env: Mapping[str, str]) -> list[str]:
    named = env.get("OTEL_TRACES_EXPORTER")
    if named is not None:
        return [n.strip() for n in named.split(",") if n.strip() and n.strip() != "none"]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return []


def configure_tracing(service_name: str, *, exporter: SpanExporter | None = None
                      ) -> TracerProvider | None:
    """Install the SDK for this process when tracing is on (or an `exporter` is given, as in
    tests); returns the provider to shut down at exit, or None when tracing is off."""
    exporters: list[SpanExporter] = [exporter] if exporter is not None else []
    if exporter is None:
        if not tracing_enabled():
            return None
        for name in _exporters(os.environ):
            exporters.append(_exporter(name))
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                or service_name})
    provider = TracerProvider(resource=resource)
    for made in exporters:
        provider.add_span_processor(BatchSpanProcessor(made, max_queue_size=4096))
    trace.set_tracer_provider(provider)
    log.info("tracing on: %s, exporting with %s", resource.attributes.get("service.name"),
             ", ".join(type(e).__name__ for e in exporters))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console "
                         "or none")
    timeout = float(os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT", EXPORT_TIMEOUT_SECONDS))
    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http(timeout=timeout)


def shutdown_tracing(provider: TracerProvider | None) -> None:
    """Send what is queued (a few seconds at most), then stop the exporter."""
    if provider is not None:
        provider.force_flush(timeout_millis=3000)
        provider.shutdown()


def graph_tracing(settings: Settings, model_url: str | None) -> Tracing:
    """What the graph's spans may carry in this deployment."""
    return Tracing(content=settings.genai_capture_content, redact=redact, model_url=model_url)


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`, `tracestate`); empty when no
    span records."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    return propagate.extract(dict(headers or {}))


def trace_id(headers: Mapping[str, str] | None) -> str | None:
    """The trace id in a stored `traceparent`, as the 32 hex digits viewers show."""
    parent = (headers or {}).get("traceparent", "")
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def attach(headers: Mapping[str, str] | None) -> object:
    """Make the trace context in `headers` current (returns the token for `detach`)."""
    return context.attach(extract(headers))


def detach(token: object) -> None:
    context.detach(token)  # type: ignore[arg-type]


def record_wait(name: str, *, started: Any, ended: Any, attributes: dict[str, Any]) -> None:
    """A span for time spent waiting outside any process (an approval), drawn afterwards from
    when the wait began and ended."""
    span = TRACER.start_span(name, start_time=_ns(started), attributes=attributes)
    span.end(end_time=_ns(ended))


def _ns(at: Any) -> int:
    return int(at.timestamp() * 1e9) if at is not None else time.time_ns()
