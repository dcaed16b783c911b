"""OpenTelemetry tracing: one tracer provider per process, OTLP/HTTP export when configured.

The SDK provider is installed even without an endpoint: spans then get real ids (so log lines
carry `trace_id`, and the trace context stored on an export links the worker's span to the request
that created it) but nothing is exported. The standard `OTEL_*` variables still apply
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
`OTEL_EXPORTER_OTLP_HEADERS`, ...).

S3 calls made inside a trace get `CLIENT` child spans from `opentelemetry-instrumentation-botocore`
(its `AiobotocoreInstrumentor`, installed here), named `S3.PutObject` and so on; `Storage.call`
suppresses them outside a trace (`only_in_trace`), so probes and sweeps make no root spans.
MongoDB commands sent inside a trace get `CLIENT` child spans from `MongoSpans`, a command
listener of our own: `opentelemetry-instrumentation-pymongo` is the same kind of listener, but its
latest release (0.66b1) pins `opentelemetry-semantic-conventions==0.66b1`, which conflicts with
the SDK 1.45.2 we use (0.66b2). Command listeners see the native async client's commands too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import propagate, trace
from opentelemetry.instrumentation.botocore import AiobotocoreInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.semconv.attributes import (
    db_attributes,
    error_attributes,
    server_attributes,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from pymongo import monitoring

from export_service.settings import Settings

SERVICE = "export-service"
TRACES_PATH = "/v1/traces"

tracer = trace.get_tracer("export_service")

_otlp_endpoints: set[str] = set()
_mongo_spans: list[MongoSpans] = []


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
    if not _mongo_spans:
        # Process-wide, like the pymongo instrumentation: clients created from now on (the
        # service's, and any a test or tool opens) report their commands to it.
        _mongo_spans.append(MongoSpans())
        monitoring.register(_mongo_spans[0])
    instrumentor = AiobotocoreInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider, request_hook=_s3_attributes)
    return provider


# The S3 request's target, as the semantic conventions' `aws.s3.*` attributes name it.
_S3_PARAMS = {
    "Bucket": "aws.s3.bucket",
    "Key": "aws.s3.key",
    "UploadId": "aws.s3.upload_id",
    "PartNumber": "aws.s3.part_number",
}


def _s3_attributes(span: Span, service: str, operation: str, params: Mapping[str, Any]) -> None:
    if service == "s3" and span.is_recording():
        for param, name in _S3_PARAMS.items():
            if params.get(param) is not None:
                span.set_attribute(name, params[param])


def in_trace() -> bool:
    return trace.get_current_span().get_span_context().is_valid


@contextlib.contextmanager
def only_in_trace() -> Iterator[None]:
    """Instrumented calls in the block make spans only as children of a current span."""
    if in_trace():
        yield
    else:
        with suppress_instrumentation():
            yield


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


class MongoSpans(monitoring.CommandListener):
    """One `CLIENT` span per MongoDB command sent while a span is current (an API request, an
    export run), as its child: a slow export shows its `find`/`getMore`/`update` time. Named and
    attributed per the database semantic conventions (`find entries`, `db.system.name` mongodb,
    `db.namespace`, `db.collection.name`, `db.operation.name`, `server.address`/`port`; on a
    failure `db.response.status_code` and `error.type`). The query text is never recorded (it
    holds user ids and emails). Commands outside any trace (idle polling, scrapes) make none."""

    # Started commands whose end was never reported (a connection torn down mid-command) must
    # not pile up: past this many open spans the oldest are dropped.
    MAX_OPEN = 10_000

    def __init__(self) -> None:
        self._open: dict[tuple[Any, int], Span] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not in_trace():
            return
        operation = event.command_name
        target = event.command.get(operation)
        collection = target if isinstance(target, str) else None
        if operation == "getMore":
            collection = event.command.get("collection")
        address, port = event.connection_id
        span = tracer.start_span(
            f"{operation} {collection}" if collection else f"{operation} {event.database_name}",
            kind=SpanKind.CLIENT,
            attributes={
                db_attributes.DB_SYSTEM_NAME: "mongodb",
                db_attributes.DB_NAMESPACE: event.database_name,
                db_attributes.DB_OPERATION_NAME: operation,
                server_attributes.SERVER_ADDRESS: address,
                server_attributes.SERVER_PORT: port,
                **({db_attributes.DB_COLLECTION_NAME: collection} if collection else {}),
            },
        )
        while len(self._open) >= self.MAX_OPEN:
            self._open.pop(next(iter(self._open)))
        self._open[(event.connection_id, event.request_id)] = span

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        span = self._open.pop((event.connection_id, event.request_id), None)
        if span is not None:
            span.end()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        span = self._open.pop((event.connection_id, event.request_id), None)
        if span is None:
            return
        failure = event.failure if isinstance(event.failure, Mapping) else {}
        code = failure.get("code")
        if code is not None:
            span.set_attribute(db_attributes.DB_RESPONSE_STATUS_CODE, str(code))
        span.set_attribute(error_attributes.ERROR_TYPE, str(failure.get("codeName") or "error"))
        # Not errmsg: a duplicate-key message quotes the key, which may be personal.
        span.set_status(Status(StatusCode.ERROR, str(failure.get("codeName") or "")))
        span.end()
