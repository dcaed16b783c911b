"""Retention (contract §13): FINISHED exports past their type's retention lose their S3 objects.

A sweep takes the `retention` lease in `leases` (a document with an owner and an expiry, taken
by a compare-and-set), so one worker sweeps at a time across every process, and only once
`nextAt` has come, so sweeps happen at most every `retentionSweepIntervalMillis` whoever runs
them. It then, for at most `retentionBatchSize` exports (oldest `date.finished` first):

1. deletes their objects with DeleteObjects (up to 1,000 keys a call, per bucket), asking for
   the full answer, so that each key counts as gone only when S3 lists it under `Deleted`;
2. for each export all of whose objects S3 confirmed gone, writes its `purges` record and only
   then marks it `purged: {date, reason: "retention"}`.

Every step can be repeated: a delete of a missing key succeeds, the record's `_id` is the
export's id (written once), and the mark is a compare-and-set on `purged` being unset. So a
sweep cut off anywhere (a crash mid-batch, its lease lost, an S3 failure) leaves the exports
it had not marked for the next sweep, which deletes and records them again harmlessly; an
export is never marked purged while one of its objects may remain.

Like the worker loop, the sweep loop is stopped by an event and never cancelled: it may be
inside a driver call (see `queue.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo import DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from export_service import metrics
from export_service.errors import StorageError
from export_service.models import Export, ExportType, utcnow
from export_service.queue.repository import ExportRepository, queue_collection
from export_service.settings import Settings
from export_service.storage import Storage

log = structlog.get_logger(__name__)

Doc = dict[str, Any]

# `purged.reason` of an export whose objects retention deleted.
RETENTION = "retention"
LEASE_ID = "retention"
# Longer than any one step of a sweep (an S3 call is bounded by the call timeout, tried twice,
# a database write by the client's timeouts); renewed before each step, so only a dead
# sweeper's lease ever runs out.
LEASE = timedelta(minutes=10)
# The most keys one DeleteObjects call takes.
DELETE_CHUNK = 1000
# How often a sweep renews its lease (seconds): far within LEASE, and not a write per export.
RENEW_EVERY = 30.0

PURGE_INDEXES = [IndexModel([("date", DESCENDING)], name="date")]

ObjectRef = tuple[str, str]  # (bucket, key)


async def ensure_indexes(db: AsyncDatabase[Doc]) -> None:
    await db["purges"].create_indexes(PURGE_INDEXES)


@dataclass(slots=True)
class SweepResult:
    """What one sweep did: exports purged, exports it had to leave (S3 failures), and whether
    it stopped early (lease lost, shutdown)."""

    started: datetime
    candidates: int = 0
    purged: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    kept: list[str] = field(default_factory=list)
    stopped_early: bool = False


class Retention:
    def __init__(
        self,
        repository: ExportRepository,
        storage: Storage,
        settings: Settings,
        *,
        owner: str,
    ) -> None:
        self.repository = repository
        self.storage = storage
        self.settings = settings
        # Who holds the lease while this process sweeps (its worker id).
        self.owner = owner
        db = repository.database
        # Majority-durable like the queue: an acknowledged purge record or lease survives an
        # election, so a new primary never hands the lease out twice or loses an audit line.
        self._purges: AsyncCollection[Doc] = queue_collection(db, "purges")
        self._leases: AsyncCollection[Doc] = queue_collection(db, "leases")
        self._stopping = asyncio.Event()
        self._renewed = 0.0

    # ---- loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Sweep whenever one is due until `shutdown()`; a worker process runs this beside its
        loop. Returns at once when no type has a retention."""
        if not self.settings.retention_enabled:
            return
        interval = self.settings.retention_sweep_interval_millis / 1000
        # Trying costs one indexed write, refused unless a sweep is due: a minute at most late.
        poll = min(interval, 60.0)
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception as exc:
                # MongoDB or S3 away: the lease was handed back (or runs out), the next try
                # starts over from what is still unpurged.
                metrics.RETENTION_SWEEP_FAILURES.labels("sweep").inc()
                log.warning("retention_sweep_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._stopping.wait()

    def shutdown(self) -> None:
        """Stop at the next step; the sweep in flight hands its lease back."""
        self._stopping.set()

    # ---- one sweep ----------------------------------------------------------------------

    async def sweep(self, now: datetime | None = None) -> SweepResult | None:
        """One sweep if one is due and nobody else runs one; `None` otherwise. `now` (naive UTC)
        is the clock every cutoff, lease and date of the sweep uses (tests move it)."""
        now = now or utcnow()
        if not self.settings.retention_enabled or not await self._take_lease(now):
            return None
        result = SweepResult(started=now)
        began = time.monotonic()
        try:
            candidates = await self._candidates(now)
            result.candidates = len(candidates)
            if candidates:
                log.info("retention_sweep_started", candidates=len(candidates))
                await self._purge(candidates, now, result)
        except Exception:
            # Not due again for an interval only when it completed: the next try is soon.
            with contextlib.suppress(Exception):
                await self._release(now, next_at=None)
            raise
        interval = timedelta(milliseconds=self.settings.retention_sweep_interval_millis)
        await self._release(now, next_at=None if result.stopped_early else now + interval)
        metrics.RETENTION_LAST_SWEEP.set(time.time())
        log.info(
            "retention_sweep_finished",
            candidates=result.candidates,
            purged=len(result.purged),
            objects=result.objects,
            bytes=result.bytes,
            kept=len(result.kept),
            stopped_early=result.stopped_early,
            duration_s=round(time.monotonic() - began, 3),
        )
        return result

    async def _candidates(self, now: datetime) -> list[Export]:
        """The batch: the oldest past-retention exports of every type with a retention."""
        limit = self.settings.retention_batch_size
        found: list[Export] = []
        for export_type in ExportType:
            days = self.settings.retention_days_for(export_type)
            if days > 0:
                found += await self.repository.retention_candidates(
                    export_type, now - timedelta(days=days), limit
                )
        found.sort(key=lambda e: (e.date.get("finished") or now, e.id))
        return found[:limit]

    async def _purge(self, exports: list[Export], now: datetime, result: SweepResult) -> None:
        by_bucket: dict[str, list[str]] = defaultdict(list)
        for export in exports:
            for stored in export.files:
                by_bucket[stored.bucket].append(stored.key)
        gone: set[ObjectRef] = set()
        for bucket, keys in by_bucket.items():
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), DELETE_CHUNK):
                if not await self._still_ours(now):
                    result.stopped_early = True
                    return
                chunk = unique[start : start + DELETE_CHUNK]
                gone.update((bucket, key) for key in await self._delete(bucket, chunk))
        for export in exports:
            if not await self._still_ours(now):
                result.stopped_early = True
                return
            left = [f for f in export.files if (f.bucket, f.key) not in gone]
            if left:
                result.kept.append(export.id)
                log.warning(
                    "retention_export_kept",
                    **_log_fields(export),
                    objects_left=len(left),
                    reason="S3 did not confirm every object deleted; the next sweep retries",
                )
                continue
            await self._record(export, now)
            if not await self.repository.mark_purged(export.id, RETENTION, now):
                # Deleted (CCPA) or marked (embedded restart) meanwhile: its objects are gone
                # all the same, and the record says who deleted them.
                continue
            size = sum(f.bytes for f in export.files)
            result.purged.append(export.id)
            result.objects += len(export.files)
            result.bytes += size
            export_type = export.export_type.value
            metrics.RETENTION_PURGED_EXPORTS.labels(export_type).inc()
            metrics.RETENTION_PURGED_OBJECTS.labels(export_type).inc(len(export.files))
            metrics.RETENTION_PURGED_BYTES.labels(export_type).inc(size)
            log.info(
                "retention_export_purged",
                **_log_fields(export),
                objects=len(export.files),
                bytes=size,
                finished=export.date.get("finished"),
            )

    async def _delete(self, bucket: str, keys: list[str]) -> set[str]:
        """The keys S3 confirms deleted (a missing key counts: deletes are idempotent)."""
        try:
            answer = await self.storage.call(
                "delete_objects",
                Bucket=bucket,
                # Not quiet: S3 then lists every key it deleted, the confirmation relied on.
                Delete={"Objects": [{"Key": k} for k in keys], "Quiet": False},
            )
        except StorageError as exc:
            metrics.RETENTION_SWEEP_FAILURES.labels("s3").inc()
            log.warning("retention_delete_failed", bucket=bucket, keys=len(keys), error=str(exc))
            return set()
        errors = answer.get("Errors") or []
        failed = {e.get("Key") for e in errors}
        if errors:
            metrics.RETENTION_SWEEP_FAILURES.labels("s3").inc()
            log.warning(
                "retention_delete_failed",
                bucket=bucket,
                keys=len(keys),
                failed=len(errors),
                codes=sorted({str(e.get("Code")) for e in errors}),
            )
        deleted = {d.get("Key") for d in answer.get("Deleted") or []}
        return {k for k in keys if k in deleted and k not in failed}

    async def _record(self, export: Export, now: datetime) -> None:
        """The export's `purges` record, written before the mark and at most once."""
        await self._purges.update_one(
            {"_id": export.id},
            {
                "$setOnInsert": {
                    "exportId": export.id,
                    "campaignId": export.campaign_id,
                    "exportType": export.export_type.value,
                    "reason": RETENTION,
                    "date": now,
                    "finished": export.date.get("finished"),
                    "retentionDays": self.settings.retention_days_for(export.export_type),
                    "keys": [
                        {"bucket": f.bucket, "key": f.key, "bytes": f.bytes} for f in export.files
                    ],
                    "objects": len(export.files),
                    "bytes": sum(f.bytes for f in export.files),
                    "sweptBy": self.owner,
                }
            },
            upsert=True,
        )

    # ---- the lease ----------------------------------------------------------------------

    async def _take_lease(self, now: datetime) -> bool:
        """The lease, if no live sweeper holds it and a sweep is due."""
        try:
            await self._leases.update_one(
                {"_id": LEASE_ID, "until": {"$lte": now}, "nextAt": {"$lte": now}},
                {
                    "$set": {"owner": self.owner, "until": now + LEASE, "taken": now},
                    # The first sweep ever is due at once.
                    "$setOnInsert": {"nextAt": now},
                },
                upsert=True,
            )
        except DuplicateKeyError:
            # The document exists and did not match: held by a live sweeper, or not yet due.
            return False
        self._renewed = time.monotonic()
        return True

    async def _still_ours(self, now: datetime) -> bool:
        """Renew the lease before a step; False (stop) when shutting down or it was lost."""
        if self._stopping.is_set():
            return False
        if time.monotonic() - self._renewed < RENEW_EVERY:
            return True
        # Renewed from the sweep's clock plus the time spent so far.
        result = await self._leases.update_one(
            {"_id": LEASE_ID, "owner": self.owner},
            {"$set": {"until": max(now, utcnow()) + LEASE}},
        )
        if result.matched_count != 1:
            log.warning("retention_lease_lost", owner=self.owner)
            return False
        self._renewed = time.monotonic()
        return True

    async def _release(self, now: datetime, *, next_at: datetime | None) -> None:
        """Hand the lease back; `next_at` None leaves the sweep due (it did not complete)."""
        values: Doc = {"until": now}
        if next_at is not None:
            values.update(nextAt=next_at, last={"date": now, "owner": self.owner})
        await self._leases.update_one({"_id": LEASE_ID, "owner": self.owner}, {"$set": values})


def _log_fields(export: Export) -> dict[str, Any]:
    return {
        "export_id": export.id,
        "campaign_id": export.campaign_id,
        "export_type": export.export_type.value,
    }
