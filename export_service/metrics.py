"""Prometheus metrics, on a registry of our own so tests and several apps do not collide.

Counters get a `_total` suffix in the exposition (`export_service_exports_created_total`).
Gauges read from MongoDB at scrape time live with what they measure (`queue.gauges`,
`webhooks.gauges`) and are refreshed by `exposition`; this module imports neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from export_service.models import TERMINAL_STATUSES, ExportType

log = structlog.get_logger(__name__)

# `*_created` timestamp series double the output and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# What prometheus_client's default registry would show, on ours: `process_*` (resident and
# virtual memory, CPU seconds, open and max fds, start time; from /proc, so Linux only),
# `python_gc_*` (collections, collected and uncollectable objects per generation) and
# `python_info`. This process only: the worker's encoder child processes are not in them.
ProcessCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

EXPORTS_CREATED = Counter(
    "export_service_exports_created",
    "Exports created through the API.",
    ["export_type"],
    registry=REGISTRY,
)
EXPORTS_ENDED = Counter(
    "export_service_exports_ended",
    "Exports that reached a terminal status (FINISHED, FAILED, EXPIRED), by whoever ended them.",
    ["export_type", "status"],
    registry=REGISTRY,
)
EXPORTS_REQUEUED = Counter(
    "export_service_exports_requeued",
    "Runs put back to PENDING: `shutdown` (SIGTERM past the grace) or `worker_lost` (sweep).",
    ["export_type", "reason"],
    registry=REGISTRY,
)
EXPORT_DURATION = Histogram(
    "export_service_export_duration_seconds",
    "Wall time of one export run that its worker ended, claim to terminal status.",
    ["export_type", "status"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600),
    registry=REGISTRY,
)
EXPORT_ROWS = Histogram(
    "export_service_export_rows",
    "Rows written by one finished export.",
    ["export_type"],
    buckets=(0, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000),
    registry=REGISTRY,
)
S3_BYTES = Counter(
    "export_service_s3_uploaded_bytes",
    "Bytes S3 accepted (each multipart part or single PUT as it completes).",
    ["bucket"],
    registry=REGISTRY,
)
EXPORTS_RUNNING = Gauge(
    "export_service_exports_running",
    "Exports this process's worker is running now.",
    registry=REGISTRY,
)
HTTP_REQUESTS = Histogram(
    "export_service_http_request_duration_seconds",
    "API requests by route template and status, and their latency.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
# `http.server.request.duration` of the OpenTelemetry semantic conventions (stable HTTP
# conventions), as OpenTelemetry's Prometheus exporter names it: unit seconds, dots to
# underscores, the advised buckets. HTTP_REQUESTS above keeps its old name beside it during the
# transition (README, Observability); dashboards should move to this one.
HTTP_SERVER_REQUEST_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP server requests.",
    ["http_request_method", "http_route", "http_response_status_code", "url_scheme"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10),
    registry=REGISTRY,
)
WEBHOOKS_DELIVERED = Counter(
    "export_service_webhooks_delivered",
    "Webhook events a receiver acknowledged with a 2xx.",
    ["subscription"],
    registry=REGISTRY,
)
WEBHOOKS_FAILED = Counter(
    "export_service_webhooks_failed",
    "Webhook events given up on (webhookMaxAttempts reached, or an address refused).",
    ["subscription"],
    registry=REGISTRY,
)
WEBHOOK_RETRIES = Counter(
    "export_service_webhook_retries",
    "Failed webhook attempts that were scheduled again (non-2xx, timeout, connection).",
    ["subscription"],
    registry=REGISTRY,
)
RETENTION_PURGED_EXPORTS = Counter(
    "export_service_retention_purged_exports",
    "Exports a retention sweep of this process marked purged (contract §13).",
    ["export_type"],
    registry=REGISTRY,
)
RETENTION_PURGED_OBJECTS = Counter(
    "export_service_retention_purged_objects",
    "S3 objects of purged exports that S3 confirmed deleted.",
    ["export_type"],
    registry=REGISTRY,
)
RETENTION_PURGED_BYTES = Counter(
    "export_service_retention_purged_bytes",
    "Bytes of the S3 objects of purged exports (as recorded on the export).",
    ["export_type"],
    registry=REGISTRY,
)
RETENTION_SWEEP_FAILURES = Counter(
    "export_service_retention_sweep_failures",
    "Retention failures: `s3` (a DeleteObjects call or key failed; its exports stay unpurged "
    "for the next sweep), `sweep` (a sweep stopped on an error, e.g. MongoDB away).",
    ["stage"],
    registry=REGISTRY,
)
RETENTION_LAST_SWEEP = Gauge(
    "export_service_retention_last_sweep_timestamp_seconds",
    "Unix time this process last completed a retention sweep (0: never; use max() across "
    "instances, one worker sweeps at a time).",
    registry=REGISTRY,
)

# Every type's series exist from the start: a counter first seen at 1 hides that increment
# from `rate()` and `increase()`.
for _type in ExportType:
    EXPORTS_CREATED.labels(_type.value)
    for _status in TERMINAL_STATUSES:
        EXPORTS_ENDED.labels(_type.value, _status.value)
    for _counter in (RETENTION_PURGED_EXPORTS, RETENTION_PURGED_OBJECTS, RETENTION_PURGED_BYTES):
        _counter.labels(_type.value)
for _stage in ("s3", "sweep"):
    RETENTION_SWEEP_FAILURES.labels(_stage)


# Sets gauges read from MongoDB right before a scrape; bounded by the driver's own timeout
# (never cancelled: see `queue.run` on cancelling driver calls), so a scrape cannot hang.
ScrapeRefresh = Callable[[], Awaitable[None]]


async def exposition(refreshes: Iterable[ScrapeRefresh] = ()) -> bytes:
    """The Prometheus text of this process, each `refreshes` gauge set first when it can be."""
    for refresh in refreshes:
        try:
            await refresh()
        except Exception as exc:
            # A scrape answers with what the process knows; those gauges keep their last value.
            log.warning("metrics_queue_unavailable", error=f"{type(exc).__name__}: {exc}")
    return generate_latest(REGISTRY)
