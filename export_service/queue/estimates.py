"""Queue position and time estimates (contract §9), from the queue ahead and recent finished runs.

Kept simple on purpose: a PENDING export starts once the running exports end and every export
ahead of it has run. A running export with a known total ends at its rate so far; any other
export takes the median duration of the recent finished runs of its type (or, running, that
median less what it has run already). With no history for a type ahead, there is no estimate
(`null`), rather than a made-up one. Several slots (`maxConcurrentExports`) share the work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from export_service.models import Export, ExportStatus, ExportType, utcnow
from export_service.queue.repository import ExportRepository

# Finished runs the medians are taken over, and how long one reading of them is reused: the
# history changes slowly, so an answer costs one query (the queue ahead), not two.
HISTORY_SIZE = 200
HISTORY_TTL_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Durations:
    """Median seconds from `date.triggered` to `date.finished`, per export type."""

    by_type: dict[ExportType, float]

    @classmethod
    def of(cls, history: Sequence[Export]) -> Durations:
        seen: dict[ExportType, list[float]] = {}
        for export in history:
            triggered, finished = export.date.get("triggered"), export.date.get("finished")
            if triggered is not None and finished is not None:
                seen.setdefault(export.export_type, []).append(
                    max(0.0, (finished - triggered).total_seconds())
                )
        return cls({t: statistics.median(v) for t, v in seen.items()})


def progress_eta(export: Export, now: datetime) -> float | None:
    """Seconds left for a TRIGGERED export with a known total, at its rate so far."""
    total, done = export.progress.get("total"), export.progress.get("processed", 0)
    triggered = export.date.get("triggered")
    if export.status is not ExportStatus.TRIGGERED or total is None or triggered is None:
        return None
    if done >= total:
        return 0.0
    elapsed = (now - triggered).total_seconds()
    if done <= 0 or elapsed <= 0:
        return None
    return round((total - done) * elapsed / done, 1)


def _left(export: Export, durations: Durations, now: datetime) -> float | None:
    if export.status is ExportStatus.TRIGGERED:
        by_rate = progress_eta(export, now)
        if by_rate is not None:
            return by_rate
        typical = durations.by_type.get(export.export_type)
        triggered = export.date.get("triggered") or now
        if typical is None:
            return None
        return max(0.0, typical - (now - triggered).total_seconds())
    return durations.by_type.get(export.export_type)


def queue_views(
    wanted: Sequence[Export],
    queue: Sequence[Export],
    durations: Durations,
    *,
    slots: int,
    now: datetime,
) -> dict[str, dict[str, Any]]:
    """`{id: {position, etaSeconds}}` for the PENDING exports of `wanted`.

    `queue` is every TRIGGERED export and every PENDING one up to the last of `wanted`, in
    claim order: position 1 is the next to be claimed."""
    ids = {e.id for e in wanted if e.status is ExportStatus.PENDING}
    views: dict[str, dict[str, Any]] = {}
    work: float | None = 0.0
    for export in (e for e in queue if e.status is ExportStatus.TRIGGERED):
        left = _left(export, durations, now)
        work = None if work is None or left is None else work + left
    pending = (e for e in queue if e.status is ExportStatus.PENDING)
    for position, export in enumerate(pending, start=1):
        if export.id in ids:
            eta = None if work is None else round(work / slots, 1)
            views[export.id] = {"position": position, "etaSeconds": eta}
        took = _left(export, durations, now)
        work = None if work is None or took is None else work + took
    return views


class QueueEstimates:
    """Positions and ETAs for API answers: one query per answer, history read now and then."""

    def __init__(self, repository: ExportRepository, *, slots: int) -> None:
        self._repository = repository
        self._slots = slots
        self._durations: Durations | None = None
        self._read_at = 0.0

    async def durations(self) -> Durations:
        if self._durations is None or time.monotonic() - self._read_at > HISTORY_TTL_SECONDS:
            history = await self._repository.recent_finished(HISTORY_SIZE)
            self._durations, self._read_at = Durations.of(history), time.monotonic()
        return self._durations

    async def views(self, exports: Sequence[Export]) -> dict[str, dict[str, Any]]:
        pending = [e for e in exports if e.status is ExportStatus.PENDING]
        if not pending:
            return {}
        last = max(e.date["created"] for e in pending)
        queue = await self._repository.queue_until(last)
        durations = await self.durations()
        return queue_views(pending, queue, durations, slots=self._slots, now=utcnow())
