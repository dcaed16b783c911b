"""The webhook outbox's gauges, read from `webhook_events` when Prometheus scrapes.

Every process reports the same outbox: use `max()` across instances, not `sum()`.
"""

from __future__ import annotations

import pymongo
from prometheus_client import Gauge

from export_service.metrics import REGISTRY, ScrapeRefresh
from export_service.models import utcnow
from export_service.webhooks.outbox import Outbox

WEBHOOKS_PENDING = Gauge(
    "export_service_webhooks_pending",
    "Webhook events not yet delivered nor given up on.",
    registry=REGISTRY,
)
WEBHOOKS_RETRYING = Gauge(
    "export_service_webhooks_retrying",
    "Pending webhook events that have failed at least one attempt.",
    registry=REGISTRY,
)
WEBHOOK_OLDEST_PENDING_AGE = Gauge(
    "export_service_webhook_oldest_pending_age_seconds",
    "Age of the oldest pending webhook event (0 when none).",
    registry=REGISTRY,
)


def outbox_gauges(outbox: Outbox) -> ScrapeRefresh:
    """What sets the outbox gauges from `outbox` before each scrape."""

    async def refresh() -> None:
        with pymongo.timeout(2):
            stats = await outbox.stats()
        WEBHOOKS_PENDING.set(stats.pending)
        WEBHOOKS_RETRYING.set(stats.retrying)
        oldest = stats.oldest_pending
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        WEBHOOK_OLDEST_PENDING_AGE.set(max(0.0, age))

    return refresh
