"""Logs, traces and metrics of a real API request and a real export run (issue 7, items 1-2).

Spans are caught with the SDK's own InMemorySpanExporter on the process's tracer provider; the
metrics are read by scraping /metrics and parsing it with prometheus_client's parser.
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import structlog
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id
from prometheus_client.parser import text_string_to_metric_families

from export_service import logs, metrics, telemetry
from export_service.models import ExportStatus, ExportType, utcnow
from export_service.runtime import Services
from export_service.settings import Settings
from export_service.worker_http import worker_listener
from tests.support.app import app_services, auth
from tests.support.data import CAMPAIGN, add_campaign, entry

Client = TestClient[Any, Any]
URL = f"/campaigns/{CAMPAIGN}/exports"
CREATE_ROUTE = "POST /campaigns/{campaignId}/exports"


@pytest.fixture(scope="module")
def span_exporter() -> Iterator[InMemorySpanExporter]:
    provider = telemetry.install(Settings(otlp_endpoint=None))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the global provider outlives this module; stop collecting


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    span_exporter.clear()
    return span_exporter


@pytest.fixture
def log_lines(span_exporter: InMemorySpanExporter) -> Iterator[io.StringIO]:
    # Needs the SDK tracer provider (span_exporter installs it) for trace ids on the lines.
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream=stream)
    yield stream
    structlog.reset_defaults()


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def named(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [s for s in spans.get_finished_spans() if s.name == name]
    return span


async def seed_entries(services: Services, n: int = 3, **campaign: Any) -> None:
    await add_campaign(services.db, **campaign)
    await services.db["entries"].insert_many([entry(f"e{i}", f"u{i}") for i in range(n)])


# --------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------


async def test_export_span_links_to_the_request_that_created_it(
    client: Client, spans: InMemorySpanExporter
) -> None:
    services = app_services(client)
    await seed_entries(services, 3)
    headers = {**auth([CAMPAIGN]), "X-Request-ID": "req-trace-1"}
    resp = await client.post(URL, json={"exportType": "entries"}, headers=headers)
    assert resp.status == 202
    export_id = (await resp.json())["id"]
    stored = await services.db["exports"].find_one({"_id": export_id})
    assert stored is not None and stored["traceContext"]["traceparent"].startswith("00-")
    assert stored["requestId"] == "req-trace-1"

    (done,) = await services.worker.drain()
    assert done.status is ExportStatus.FINISHED

    request = named(spans, CREATE_ROUTE)
    assert request.kind is SpanKind.SERVER
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 202
    assert request.attributes["http.route"] == "/campaigns/{campaignId}/exports"
    assert request.attributes["http.request_id"] == "req-trace-1"

    run = named(spans, "export entries")
    assert run.kind is SpanKind.CONSUMER
    assert run.parent is None, "an export's span is a root of its own"
    (link,) = run.links
    assert link.context.trace_id == request.context.trace_id
    assert link.context.span_id == request.context.span_id
    version, trace_id, span_id, _flags = stored["traceContext"]["traceparent"].split("-")
    assert (version, trace_id, span_id) == (
        "00",
        format_trace_id(request.context.trace_id),
        format_span_id(request.context.span_id),
    )
    assert run.attributes is not None
    assert run.attributes["export.id"] == export_id
    assert run.attributes["export.type"] == "entries"
    assert run.attributes["export.campaign_id"] == CAMPAIGN
    assert run.attributes["export.rows"] == 3
    assert run.attributes["export.status"] == "FINISHED"
    assert run.status.status_code is not StatusCode.ERROR


def children_of(spans: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        s for s in spans.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]  # fmt: skip


def attribute(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)


async def test_export_trace_has_mongodb_and_s3_child_spans(
    client: Client, spans: InMemorySpanExporter
) -> None:
    services = app_services(client)
    await seed_entries(services, 3)
    resp = await client.post(URL, json={"exportType": "entries"}, headers=auth([CAMPAIGN]))
    assert resp.status == 202
    (done,) = await services.worker.drain()
    assert done.status is ExportStatus.FINISHED

    run = named(spans, "export entries")
    mongo = [s for s in children_of(spans, run) if attribute(s, "db.system.name") == "mongodb"]
    assert {s.context.trace_id for s in mongo} == {run.context.trace_id}
    assert all(s.kind is SpanKind.CLIENT for s in mongo)
    # The source read and the export document's writes, each named `operation collection`.
    reads = [s for s in mongo if attribute(s, "db.collection.name") == "entries"]
    assert reads and {attribute(s, "db.operation.name") for s in reads} <= {
        "find", "getMore", "aggregate", "count",
    }  # fmt: skip
    read = reads[0]
    assert read.name == f"{attribute(read, 'db.operation.name')} entries"
    assert attribute(read, "db.namespace") == services.settings.mongo_db
    assert attribute(read, "server.address") and attribute(read, "server.port")
    assert any(
        attribute(s, "db.collection.name") == "exports" and s.name == "update exports"
        for s in mongo
    )
    # The request's insert is a child of the request's span.
    request = named(spans, CREATE_ROUTE)
    assert any(s.name == "insert exports" for s in children_of(spans, request))
    # No query text is recorded (it would hold user ids and emails).
    assert not any(attribute(s, "db.query.text") for s in mongo)

    # The object's upload (a few rows: one PutObject), by opentelemetry-instrumentation-botocore.
    (put,) = [s for s in children_of(spans, run) if s.name == "S3.PutObject"]
    assert put.kind is SpanKind.CLIENT
    assert attribute(put, "rpc.system") == "aws-api"
    assert attribute(put, "rpc.service") == "S3" and attribute(put, "rpc.method") == "PutObject"
    (stored,) = done.files
    assert attribute(put, "aws.s3.bucket") == stored.bucket
    assert attribute(put, "aws.s3.key") == stored.key
    assert attribute(put, "http.status_code") == 200

    # Calls outside any trace (the worker's claim poll, an S3 ping) make no spans of their own.
    await services.storage.ping()
    await services.worker.drain()
    assert all(
        s.parent is not None
        for s in spans.get_finished_spans()
        if attribute(s, "db.system.name") == "mongodb" or attribute(s, "rpc.system")
    )


async def test_incoming_traceparent_is_continued_and_probes_are_not_traced(
    client: Client, spans: InMemorySpanExporter
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {**auth([CAMPAIGN]), "traceparent": f"00-{trace_id}-{parent_id}-01"}
    resp = await client.get(f"{URL}/nope", headers=headers)
    assert resp.status == 404
    await client.get("/heartbeat")
    await client.get("/metrics")
    # One server span; the probes made none (nor MongoDB spans: only the request's lookup has one).
    (span,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert {format_trace_id(s.context.trace_id) for s in spans.get_finished_spans()} == {trace_id}
    assert span.name == "GET /campaigns/{campaignId}/exports/{exportId}"
    assert format_trace_id(span.context.trace_id) == trace_id
    assert span.parent is not None and format_span_id(span.parent.span_id) == parent_id
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 404


async def test_failed_export_span_is_an_error(client: Client, spans: InMemorySpanExporter) -> None:
    services = app_services(client)
    await add_campaign(services.db, markets=[])
    resp = await client.post(URL, json={"exportType": "entries"}, headers=auth([CAMPAIGN]))
    assert resp.status == 202
    (done,) = await services.worker.drain()
    assert done.status is ExportStatus.FAILED
    run = named(spans, "export entries")
    assert run.status.status_code is StatusCode.ERROR
    assert run.attributes is not None
    assert run.attributes["export.status"] == "FAILED"
    assert run.attributes["export.error_code"] == "NoMarketsFound"


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_otlp_exporter_posts_protobuf_spans_to_the_configured_endpoint() -> None:
    """The real OTLP/HTTP exporter against a loopback receiver: path, encoding, span names."""
    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    provider = TracerProvider()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        provider.add_span_processor(telemetry.otlp_processor(telemetry.traces_url(endpoint)))
        with provider.get_tracer("test").start_as_current_span("export codes"):
            pass
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
        server.shutdown()
        server.server_close()
    ((path, content_type, body),) = _Collector.received
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    names = [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert names == ["export codes"]


def test_resource_names_the_service_unless_the_environment_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    plain = telemetry.resource("worker").attributes
    assert plain["service.name"] == "export-service"
    assert plain["export_service.component"] == "worker"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "export-service-worker")  # as the Helm chart sets
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=worker-0")
    named = telemetry.resource("worker").attributes
    assert named["service.name"] == "export-service-worker"
    assert named["k8s.pod.name"] == "worker-0"


def test_traces_url_adds_the_otlp_path_only_to_a_base_url() -> None:
    assert telemetry.traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert telemetry.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert telemetry.traces_url("https://c/custom/v1/traces") == "https://c/custom/v1/traces"


# --------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------


async def test_state_changes_are_json_lines_with_export_and_request_ids(
    client: Client, log_lines: io.StringIO
) -> None:
    services = app_services(client)
    await seed_entries(services, 2)
    headers = {**auth([CAMPAIGN]), "X-Request-ID": "req-log-1"}
    resp = await client.post(URL, json={"exportType": "entries"}, headers=headers)
    export_id = (await resp.json())["id"]
    await services.worker.drain()

    lines = parsed(log_lines)
    about = [line for line in lines if line.get("export_id") == export_id]
    # State changes; other lines logged during the run (an encoder process started for it)
    # carry the export's ids too.
    events = [line["event"] for line in about if line["event"].startswith("export_")]
    assert events == ["export_created", "export_triggered", "export_finished"]
    for line in about:
        assert line["campaign_id"] == CAMPAIGN
        assert line["export_type"] == "entries"
        assert line["request_id"] == "req-log-1", line
        assert line["timestamp"].endswith("Z")
        assert len(line["trace_id"]) == 32
        assert "action" not in line
    finished = about[-1]
    assert finished["level"] == "info" and finished["rows"] == 2 and finished["duration_s"] >= 0
    # The request's own line; the worker's lines carry the export's trace, not the request's.
    (handled,) = [line for line in lines if line["event"] == "request_handled"]
    assert handled["status"] == 202 and handled["request_id"] == "req-log-1"
    assert about[0]["trace_id"] == handled["trace_id"] != about[1]["trace_id"]
    # The bearer token and the fans' e-mail addresses never reach the output.
    text = log_lines.getvalue()
    assert headers["Authorization"].split()[1] not in text
    assert "@example.com" not in text


async def test_sweep_logs_the_state_it_sets_with_the_same_event_names(
    services: Services, log_lines: io.StringIO
) -> None:
    await add_campaign(services.db)
    export, _ = await services.repository.create(
        campaign_id=CAMPAIGN, campaign_name="T", export_type=ExportType.CODES,
        requester_user_id="u", date_key=None, include_all_markets=None, request_id="req-sweep",
    )  # fmt: skip
    await services.repository.claim("dead-worker")
    await services.db["exports"].update_one(
        {"_id": export.id}, {"$set": {"heartbeatAt": utcnow() - timedelta(minutes=5)}}
    )
    assert await services.worker.sweep() == 1
    (line,) = [line for line in parsed(log_lines) if line.get("export_id") == export.id]
    assert line["event"] == "export_requeued"
    assert line["reason"] == "worker_lost" and line["by"] == "sweep"
    assert line["previous_worker"] == "dead-worker" and line["request_id"] == "req-sweep"
    assert line["level"] == "warning"


def test_redaction_of_secrets_and_personal_data() -> None:
    stream = io.StringIO()
    logs.configure("json", "INFO", stream=stream)
    try:
        structlog.get_logger("t").warning(
            "export_failed",
            error="bad row for fan@example.com, Authorization: Bearer abc.def.ghi",
            url="https://b.s3.amazonaws.com/k?X-Amz-Signature=deadbeef&X-Amz-Security-Token=sessiontok123",
            doc={"fields": {"email": "a@b.co"}, "userId": "u1"},
            mongo="mongodb://admin:hunter2@db1:27017/x",
        )
        line = json.loads(stream.getvalue())
    finally:
        structlog.reset_defaults()
    assert line["error"] == "bad row for [EMAIL], Authorization: Bearer [REDACTED]"
    assert "deadbeef" not in line["url"] and "sessiontok123" not in line["url"]
    assert line["doc"] == {"fields": "[REDACTED]", "userId": "u1"}
    assert "hunter2" not in line["mongo"]


def test_console_format_is_human_readable() -> None:
    stream = io.StringIO()
    logs.configure("console", "INFO", stream=stream)
    try:
        structlog.get_logger("t").info("export_finished", export_id="e1", rows=5)
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "export_finished" in text and "export_id" in text and "rows" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def scrape(client: Client) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return await resp.text()


async def test_metrics_count_an_export_from_creation_to_s3(client: Client) -> None:
    services = app_services(client)
    bucket = services.settings.bucket_exports
    await seed_entries(services, 4)
    # An old PENDING export first, so the age gauge has something to show.
    older, _ = await services.repository.create(
        campaign_id=CAMPAIGN, campaign_name="T", export_type=ExportType.SCORING,
        requester_user_id="u", date_key=None, include_all_markets=None,
    )  # fmt: skip
    await services.db["exports"].update_one(
        {"_id": older.id}, {"$set": {"date.created": utcnow() - timedelta(seconds=90)}}
    )
    before = await scrape(client)
    resp = await client.post(URL, json={"exportType": "entries"}, headers=auth([CAMPAIGN]))
    assert resp.status == 202

    queued = await scrape(client)
    assert sample(queued, "export_service_queue_depth", status="PENDING") == 2
    assert sample(queued, "export_service_queue_depth", status="TRIGGERED") == 0
    assert 90 <= sample(queued, "export_service_oldest_pending_age_seconds") < 200
    created = "export_service_exports_created_total"
    assert (
        sample(queued, created, export_type="entries")
        == sample(before, created, export_type="entries") + 1
    )

    done = {e.export_type: e for e in await services.worker.drain()}
    entries = done[ExportType.ENTRIES]
    assert entries.status is ExportStatus.FINISHED and entries.count == 4
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("export_service_exports_ended_total", export_type="entries",
                 status="FINISHED") == 1  # fmt: skip
    assert delta("export_service_export_duration_seconds_count", export_type="entries",
                 status="FINISHED") == 1  # fmt: skip
    assert delta("export_service_export_rows_count", export_type="entries") == 1
    assert delta("export_service_export_rows_sum", export_type="entries") == 4
    assert delta("export_service_export_rows_bucket", export_type="entries", le="10.0") == 1
    # S3 bytes: this test's bucket only, so the value is exact.
    uploaded = sum(f.bytes for f in entries.files if f.bucket == bucket)
    assert uploaded > 0
    assert sample(after, "export_service_s3_uploaded_bytes_total", bucket=bucket) == uploaded
    assert sample(after, "export_service_queue_depth", status="PENDING") == 0
    assert sample(after, "export_service_oldest_pending_age_seconds") == 0
    assert delta("export_service_http_request_duration_seconds_count", method="POST",
                 route="/campaigns/{campaignId}/exports", status="202") == 1  # fmt: skip


async def test_metrics_count_failed_and_expired_exports(client: Client) -> None:
    services = app_services(client)
    await add_campaign(services.db, markets=[])
    before = await scrape(client)
    await client.post(URL, json={"exportType": "entries"}, headers=auth([CAMPAIGN]))
    (failed,) = await services.worker.drain()
    assert failed.status is ExportStatus.FAILED
    stuck, _ = await services.repository.create(
        campaign_id=CAMPAIGN, campaign_name="T", export_type=ExportType.CODES,
        requester_user_id="u", date_key=None, include_all_markets=None,
    )  # fmt: skip
    await services.repository.claim("slow-worker")
    await services.db["exports"].update_one(
        {"_id": stuck.id}, {"$set": {"date.triggered": utcnow() - timedelta(hours=1)}}
    )
    assert await services.worker.sweep() == 1
    after = await scrape(client)
    ended = "export_service_exports_ended_total"
    assert (
        sample(after, ended, export_type="entries", status="FAILED")
        == sample(before, ended, export_type="entries", status="FAILED") + 1
    )
    assert (
        sample(after, ended, export_type="codes", status="EXPIRED")
        == sample(before, ended, export_type="codes", status="EXPIRED") + 1
    )


async def test_s3_bytes_count_every_multipart_part(services: Services) -> None:
    await add_campaign(services.db, preferences=[{"id": "note", "label": "Note"}])
    big = "x" * 110_000  # 50 such rows exceed one 5 MiB part: the upload goes multipart
    docs = [entry(f"e{i:03d}", f"u{i:03d}") for i in range(60)]
    for doc in docs:
        doc["fields"]["note"] = big
    await services.db["entries"].insert_many(docs)
    await services.repository.create(
        campaign_id=CAMPAIGN, campaign_name="T", export_type=ExportType.ENTRIES,
        requester_user_id="u", date_key=None, include_all_markets=None,
    )  # fmt: skip
    (done,) = await services.worker.drain()
    (stored,) = done.files
    assert stored.bytes > services.settings.s3_part_size_bytes
    text = (await metrics.exposition(services.gauges)).decode()
    total = "export_service_s3_uploaded_bytes_total"
    assert sample(text, total, bucket=stored.bucket) == stored.bytes


# --------------------------------------------------------------------------------------------
# The worker's own listener
# --------------------------------------------------------------------------------------------


async def test_worker_listener_serves_metrics_and_heartbeat(services: Services) -> None:
    async with worker_listener(services, "127.0.0.1", 0) as port, ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        async with http.get(f"{base}/heartbeat") as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["status"] == "ok" and body["workerId"] == services.worker.worker_id
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
            # The API's handler: the queue's and the outbox's gauges, refreshed, and the counters.
            assert "export_service_queue_depth" in text
            assert "export_service_webhooks_pending" in text
            assert "export_service_exports_ended_total" in text
        # A loop that has not turned for long (and runs no export) is reported, for a restart.
        services.worker.liveness.last = time.monotonic() - 3600
        async with http.get(f"{base}/heartbeat") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "stalled"


PROCESS_METRICS = (
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)
SEMCONV_HTTP = "http_server_request_duration_seconds"


def assert_process_and_http_metrics(before: str, after: str, route: str) -> None:
    """process_* and GC metrics present; one more GET of `route` in the semconv histogram."""
    for name in PROCESS_METRICS:
        assert sample(after, name) > 0, name
    assert sample(after, "python_gc_collections_total", generation="0") > 0
    assert "python_info{" in after
    labels = {"http_request_method": "GET", "http_route": route,
              "http_response_status_code": "200", "url_scheme": "http"}  # fmt: skip
    count = f"{SEMCONV_HTTP}_count"
    assert sample(after, count, **labels) == sample(before, count, **labels) + 1
    assert sample(after, f"{SEMCONV_HTTP}_bucket", le="10.0", **labels) >= 1
    assert f"# TYPE {SEMCONV_HTTP} histogram" in after


async def test_api_metrics_show_process_metrics_and_the_semconv_http_histogram(
    client: Client,
) -> None:
    before = await scrape(client)
    assert (await client.get("/heartbeat")).status == 200
    after = await scrape(client)
    assert_process_and_http_metrics(before, after, "/heartbeat")
    # The old name stays beside it during the transition.
    old = "export_service_http_request_duration_seconds_count"
    assert sample(after, old, method="GET", route="/heartbeat", status="200") >= 1


async def test_worker_metrics_show_process_metrics_and_the_semconv_http_histogram(
    services: Services,
) -> None:
    async with worker_listener(services, "127.0.0.1", 0) as port, ClientSession() as http:
        base = f"http://127.0.0.1:{port}"

        async def scrape_worker() -> str:
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                return await resp.text()

        before = await scrape_worker()
        async with http.get(f"{base}/heartbeat") as resp:
            assert resp.status == 200
        assert_process_and_http_metrics(before, await scrape_worker(), "/heartbeat")


def test_semconv_http_histogram_is_named_as_the_conventions_say() -> None:
    # OpenTelemetry's Prometheus naming: dots to underscores, the unit `s` as `_seconds`.
    from opentelemetry.semconv.attributes import http_attributes, url_attributes
    from opentelemetry.semconv.metrics import http_metrics

    def prometheus(name: str) -> str:
        return name.replace(".", "_")

    histogram = metrics.HTTP_SERVER_REQUEST_DURATION
    assert histogram._name == prometheus(http_metrics.HTTP_SERVER_REQUEST_DURATION) + "_seconds"
    assert histogram._labelnames == tuple(
        prometheus(a) for a in (http_attributes.HTTP_REQUEST_METHOD, http_attributes.HTTP_ROUTE,
                                http_attributes.HTTP_RESPONSE_STATUS_CODE, url_attributes.URL_SCHEME)
    )  # fmt: skip
