"""OpenTelemetry tracing: one tracer provider per process, OTLP/HTTP export when configured.

The SDK provider is installed even without an endpoint: spans then get real ids (so log lines
carry `trace_id`, and the trace context stored on an export links the worker's span to the request
that created it) but nothing is exported. The standard `OTEL_*` variables still apply
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
`OTEL_EXPORTER_OTLP_HEADERS`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link

from export_service.settings import Settings

SERVICE = "export-service"
TRACES_PATH = "/v1/traces"

tracer = trace.get_tracer("export_service")

_otlp_endpoints: set[str] = set()


def traces_url(endpoint: str) -> str:
    """`http://collector:4318` → `http://collector:4318/v1/traces`; a full traces URL is kept."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        parts = parts._replace(path=TRACES_PATH)
    return urlunsplit(parts)


def install(settings: Settings, *, component: str = "serve") -> TracerProvider:
    """Install (once per process) the SDK tracer provider; add the OTLP exporter if configured.

    Idempotent: a second call reuses the installed provider, since OpenTelemetry allows the global
    provider to be set only once.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current
    else:
        provider = TracerProvider(resource=resource(component))
        trace.set_tracer_provider(provider)
    if settings.otlp_endpoint:
        url = traces_url(settings.otlp_endpoint)
        if url not in _otlp_endpoints:
            provider.add_span_processor(otlp_processor(url))
            _otlp_endpoints.add(url)
    return provider


def resource(component: str) -> Resource:
    """Who emits the spans; `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` win when set."""
    detected = Resource.create({"export_service.component": component})
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: SERVICE}))
    return detected


def otlp_processor(url: str) -> BatchSpanProcessor:
    """Spans batched in a background thread and POSTed as protobuf to `url` (OTLP/HTTP)."""
    # Imported here: the exporter pulls in protobuf and requests, needed only when configured.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=url))


def current_context() -> dict[str, str]:
    """The current span's W3C trace context (`traceparent`, maybe `tracestate`), to store."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def links_to(carrier: Mapping[str, str] | None) -> list[Link]:
    """A link to the span a stored trace context names; none when it is missing or invalid."""
    if not carrier:
        return []
    context = trace.get_current_span(propagate.extract(dict(carrier))).get_span_context()
    return [Link(context)] if context.is_valid else []


def current_ids() -> dict[str, str]:
    """`trace_id` and `span_id` of the current span in hex, for log lines; empty when none."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }
