"""Prometheus metrics, on a registry of our own so tests and several apps do not collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EXPORTS_CREATED = Counter(
    "export_service_exports_created",
    "Exports created through the API.",
    ["export_type"],
    registry=REGISTRY,
)
EXPORTS_ENDED = Counter(
    "export_service_exports_ended",
    "Exports that reached a terminal status (or were re-queued).",
    ["export_type", "status"],
    registry=REGISTRY,
)
EXPORT_DURATION = Histogram(
    "export_service_export_duration_seconds",
    "Wall time of one export run, claim to terminal status.",
    ["export_type"],
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
S3_BYTES = Counter("export_service_s3_uploaded_bytes", "Bytes uploaded to S3.", registry=REGISTRY)
QUEUE_DEPTH = Gauge(
    "export_service_queue_depth", "Exports by active status.", ["status"], registry=REGISTRY
)
OLDEST_PENDING_AGE = Gauge(
    "export_service_oldest_pending_age_seconds",
    "Age of the oldest PENDING export (0 when none).",
    registry=REGISTRY,
)
