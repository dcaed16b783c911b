"""Puts a terminal export's webhook events into the outbox: one per matching subscription.

Called right after every terminal write (worker, sweep, cancel) and, for exports whose process
died between that write and this one, by every worker's delivery loop (`recover`). Both are
idempotent: the outbox keeps one event per (export, subscription, type).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog
from pymongo.errors import PyMongoError

from export_service.models import Export
from export_service.queue.repository import ExportRepository
from export_service.webhooks.outbox import Outbox
from export_service.webhooks.subscriptions import WebhookSubscription

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(
        self,
        repository: ExportRepository,
        outbox: Outbox,
        subscriptions: Sequence[WebhookSubscription],
    ) -> None:
        self.repository = repository
        self.outbox = outbox
        self.subscriptions = list(subscriptions)
        # Told when new events are in: this process's delivery loop sends them at once.
        self.listeners: list[Callable[[], None]] = []

    async def ended(self, export: Export) -> int:
        """Record the events of `export`, which is terminal. Returns how many were new.

        Never raises for the database: the export's end is already written, and while it is
        `notified: false` any worker's delivery loop records its events (`recover`)."""
        try:
            return await self._record(export)
        except PyMongoError as exc:
            log.warning(
                "webhook_events_deferred", export_id=export.id, error=f"{type(exc).__name__}: {exc}"
            )
            return 0

    def owes_events(self, export: Export) -> bool:
        """Whether any subscription wants the events of `export` (the worker then flags its
        end as owing them; else its end costs no outbox write and no flag to clear)."""
        return bool(self._subscribed(export))

    def _subscribed(self, export: Export) -> list[str]:
        return [
            s.name for s in self.subscriptions if s.matches(export.campaign_id, export.export_type)
        ]

    async def _record(self, export: Export) -> int:
        if not export.terminal:
            return 0
        names = self._subscribed(export)
        added = await self.outbox.add(export, names)
        if export.owes_events:
            # An export read before its end was flagged only delays this: recovery clears it.
            await self.repository.mark_notified(export.id)
        if added:
            log.info(
                "webhook_events_recorded",
                export_id=export.id,
                status=export.status.value,
                subscriptions=names,
            )
            for listener in self.listeners:
                listener()
        return added

    async def ended_id(self, export_id: str) -> int:
        """`ended()` for an export known by id only (the sweep, the cancel route)."""
        try:
            export = await self.repository.get(export_id)
        except PyMongoError as exc:
            log.warning(
                "webhook_events_deferred", export_id=export_id, error=f"{type(exc).__name__}: {exc}"
            )
            return 0
        return await self.ended(export) if export is not None else 0

    async def recover(self, limit: int = 100) -> int:
        """Record the events of terminal exports whose process died before it could."""
        recovered = 0
        for export in await self.repository.unnotified(limit):
            added = await self._record(export)
            if added:
                recovered += 1
                log.warning("webhook_events_recovered", export_id=export.id, events=added)
        return recovered
