"""The queue's gauges, read from the `exports` collection when Prometheus scrapes.

Every process reports the same queue: use `max()` across instances, not `sum()`.
"""

from __future__ import annotations

import pymongo
from prometheus_client import Gauge

from export_service.metrics import REGISTRY, ScrapeRefresh
from export_service.models import ACTIVE_STATUSES, utcnow
from export_service.queue.repository import ExportRepository

QUEUE_DEPTH = Gauge(
    "export_service_queue_depth", "Exports by active status.", ["status"], registry=REGISTRY
)
OLDEST_PENDING_AGE = Gauge(
    "export_service_oldest_pending_age_seconds",
    "Age of the oldest PENDING export (0 when none).",
    registry=REGISTRY,
)


def queue_gauges(repository: ExportRepository) -> ScrapeRefresh:
    """What sets the queue gauges from `repository` before each scrape."""

    async def refresh() -> None:
        with pymongo.timeout(2):
            counts = await repository.counts_by_status()
            oldest = await repository.oldest_pending_created()
        for status in ACTIVE_STATUSES:
            QUEUE_DEPTH.labels(status.value).set(counts.get(status.value, 0))
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        OLDEST_PENDING_AGE.set(max(0.0, age))

    return refresh
