"""All persistence of the `exports` collection: the only module that talks to it.

The queue rules of contract §5 are kept by the database, not by timing:

* dedupe: `dedupeKey` exists only while an export is PENDING or TRIGGERED, and a unique partial
  index on it (`$exists: true`, which MongoDB 6.0 allows) makes concurrent identical requests
  create exactly one document;
* single active export: `slot` (0..maxConcurrentExports-1) exists only while TRIGGERED, with a
  unique partial index, so a second claim of the same slot fails with a duplicate-key error;
* every status change is a compare-and-set on the current status (and on the owning worker
  while TRIGGERED), so a terminal status is never overwritten.

The claim is an indexed `find().sort().limit(1)` plus a compare-and-set `update_one` rather than
`find_one_and_update`: both are atomic per document on MongoDB, and the former is fast on the
embedded server too (which scans the collection for `find_one_and_update`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Literal

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import Primary

from export_service.errors import ExportServiceError, Timeout
from export_service.models import (
    ACTIVE_STATUSES,
    CANCELLED,
    TERMINAL_STATUSES,
    Export,
    ExportFilters,
    ExportStatus,
    ExportType,
    StoredFile,
    utcnow,
)

Doc = dict[str, Any]

# The `workerId` of a TRIGGERED export a CCPA request has taken from its worker to delete it;
# no worker ever has this id, so the export can never run on under it.
CCPA_OWNER = "ccpa-deletion"

EXPORT_INDEXES = [
    IndexModel(
        [("status", ASCENDING), ("date.created", ASCENDING), ("_id", ASCENDING)], name="claim"
    ),
    IndexModel(
        [("dedupeKey", ASCENDING)],
        name="dedupe",
        unique=True,
        partialFilterExpression={"dedupeKey": {"$exists": True}},
    ),
    IndexModel(
        [("slot", ASCENDING)],
        name="single_active",
        unique=True,
        partialFilterExpression={"slot": {"$exists": True}},
    ),
    IndexModel(
        [("campaignId", ASCENDING), ("date.created", DESCENDING), ("_id", DESCENDING)],
        name="campaign_newest",
    ),
    # Retention (contract §13): per type, the unpurged FINISHED exports in `date.finished`
    # order, so a sweep reads only what it purges, however many purged ones pile up.
    IndexModel(
        [
            ("status", ASCENDING),
            ("exportType", ASCENDING),
            ("purged", ASCENDING),
            ("date.finished", ASCENDING),
        ],
        name="retention",
        partialFilterExpression={"status": ExportStatus.FINISHED.value},
    ),
    # Terminal exports whose webhook events are not yet in the outbox (a handful at most).
    IndexModel(
        [("notified", ASCENDING)],
        name="unnotified",
        partialFilterExpression={"notified": False},
    ),
]


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """An S3 object being written for a running export, recorded so anyone can clean it up."""

    bucket: str
    key: str
    upload_id: str | None

    def to_doc(self) -> Doc:
        return {"bucket": self.bucket, "key": self.key, "uploadId": self.upload_id}

    @classmethod
    def from_doc(cls, doc: Doc) -> PendingUpload:
        return cls(bucket=doc["bucket"], key=doc["key"], upload_id=doc.get("uploadId"))


def _error_doc(error: ExportServiceError) -> Doc:
    """How an export's error is stored (and shown): its code, and the message without it."""
    return {"code": error.code, "message": error.message}


def _uploads(doc: Doc) -> list[PendingUpload]:
    """The uploads recorded on an export document."""
    return [PendingUpload.from_doc(u) for u in doc.get("uploads") or []]


@dataclass(frozen=True, slots=True)
class ExportUploads:
    """An export with the uploads recorded on it: unfinished ones, or one kept for a resume."""

    export: Export
    uploads: list[PendingUpload]

    @classmethod
    def from_doc(cls, doc: Doc) -> ExportUploads:
        return cls(Export.from_doc(doc), _uploads(doc))


class Beat(Enum):
    """What a running export's heartbeat learnt. Falsy only when the export is no longer ours."""

    OURS = "ours"
    CANCEL = "cancel"  # still ours, and a user asked for it to be cancelled (contract §9)
    LOST = "lost"

    def __bool__(self) -> bool:
        return self is not Beat.LOST


CancelOutcome = Literal["cancelled", "requested", "unchanged", "finished"]


@dataclass(frozen=True, slots=True)
class CancelResult:
    """`cancelled`: was PENDING, now FAILED Cancelled; `requested`: TRIGGERED, its worker will
    stop it; `unchanged`: already cancelled; `finished`: ended otherwise, left alone."""

    export: Export
    outcome: CancelOutcome


# What queue estimates read of other exports: never their campaign's details or files.
_QUEUE_FIELDS: Doc = {
    "campaignId": 1,
    "exportType": 1,
    "status": 1,
    "date": 1,
    "progress": 1,
}

# Who asked is in `cancelledBy`.
CANCELLED_ERROR: Doc = {"code": CANCELLED, "message": "cancelled on request"}

# Only a run that nobody asked to cancel may finish or go back to the queue.
_NOT_CANCELLED: Doc = {"cancelRequested": {"$ne": True}}


def queue_collection(db: AsyncDatabase[Doc], name: str) -> AsyncCollection[Doc]:
    """A collection of queue state (`exports`, the webhook outbox), whatever the URI says.

    Across a primary election these keep "claimed once" and "single active" true:

    * primary reads: a claim, a compare-and-set and the sweep decide on the current state, never
      on a secondary's older copy (a URI `readPreference` must not reach them);
    * majority read concern: a read sees only writes that survive an election, so a worker never
      acts on a claim or a transition that a new primary rolls back;
    * majority write concern: an acknowledged claim, heartbeat or terminal write is on a majority
      and cannot be rolled back; with retryable writes (on, see `db.connect`) a write cut off
      by the election is retried once on the new primary, and is applied at most once;
    * the unique indexes (dedupe, single active slot) are enforced by the primary for every
      write, so two claims of one slot cannot both succeed however they race.
    """
    return db.get_collection(
        name,
        read_preference=Primary(),
        read_concern=ReadConcern("majority"),
        write_concern=WriteConcern("majority"),
    )


def dedupe_key(
    campaign_id: str,
    export_type: ExportType,
    date_key: str | None,
    include_all: bool | None,
    filters: ExportFilters | None = None,
) -> str:
    # The same request with includeAllMarkets omitted or false is the same export.
    parts = [campaign_id, export_type.value, date_key or "", "1" if include_all else "0"]
    # Appended only when given: an export without filters keeps the key it always had, so an
    # active export queued before filters existed still dedupes an identical new request.
    if filters is not None and filters.any:
        parts.append(filters.dedupe_part())
    return "\x1f".join(parts)


class ExportRepository:
    def __init__(self, db: AsyncDatabase[Doc], *, max_concurrent: int = 1) -> None:
        self._db = db
        self._exports: AsyncCollection[Doc] = queue_collection(db, "exports")
        self._max_concurrent = max_concurrent

    @property
    def database(self) -> AsyncDatabase[Doc]:
        return self._db

    @property
    def collection(self) -> AsyncCollection[Doc]:
        return self._exports

    async def ensure_indexes(self) -> None:
        await self._exports.create_indexes(EXPORT_INDEXES)

    # ---- API side -----------------------------------------------------------------------

    async def create(
        self,
        *,
        campaign_id: str,
        campaign_name: str,
        export_type: ExportType,
        requester_user_id: str,
        date_key: str | None,
        include_all_markets: bool | None,
        filters: ExportFilters | None = None,
        trace_context: dict[str, str] | None = None,
        request_id: str | None = None,
    ) -> tuple[Export, bool]:
        """Insert a PENDING export, or return the active identical one. `True` = created."""
        key = dedupe_key(campaign_id, export_type, date_key, include_all_markets, filters)
        # Bounded: each retry means the active duplicate just became terminal.
        for _ in range(5):
            # Looked up first: a repeated request (the common case under load) is then one
            # indexed read instead of a rejected insert, which costs several times more. The
            # unique index still decides when two requests race past this read together.
            existing = await self._active(key)
            if existing is not None:
                return Export.from_doc(existing), False
            doc: Doc = {
                "_id": str(ObjectId()),
                "campaignId": campaign_id,
                "campaignName": campaign_name,
                "exportType": export_type.value,
                "status": ExportStatus.PENDING.value,
                "requesterUserId": requester_user_id,
                "date": {"created": utcnow()},
                "progress": {"processed": 0},
                "attempts": 0,
                "dedupeKey": key,
            }
            if date_key is not None:
                doc["dateKey"] = date_key
            if include_all_markets is not None:
                doc["includeAllMarkets"] = include_all_markets
            if filters is not None and filters.any:
                doc["filters"] = filters.to_doc()
            if trace_context:
                doc["traceContext"] = trace_context
            if request_id:
                doc["requestId"] = request_id
            try:
                await self._exports.insert_one(doc)
            except DuplicateKeyError:
                continue  # an identical request won the race: return its export
            return Export.from_doc(doc), True
        raise RuntimeError("dedupe insert did not settle")  # pragma: no cover

    async def _active(self, key: str) -> Doc | None:
        """The PENDING or TRIGGERED export with this dedupe key, if any."""
        # Hinted: MongoDB uses the partial index for this equality unprompted, but the
        # embedded server does not see it as implied and would scan every export.
        return await self._exports.find_one({"dedupeKey": key}, hint="dedupe")

    async def finished_unpurged(self) -> list[Export]:
        """FINISHED exports whose objects should still exist (a dev-sized scan)."""
        cursor = self._exports.find({"status": ExportStatus.FINISHED.value, "purged": None})
        return [Export.from_doc(doc) async for doc in cursor]

    async def mark_purged(self, export_id: str, reason: str, date: datetime | None = None) -> bool:
        """Record that a FINISHED export's objects are gone; False if it changed meanwhile.

        The caller has made sure that none of its objects is left (contract §13)."""
        result = await self._exports.update_one(
            {"_id": export_id, "status": ExportStatus.FINISHED.value, "purged": None},
            {"$set": {"purged": {"date": date or utcnow(), "reason": reason}}},
        )
        return result.modified_count == 1

    async def retention_candidates(
        self, export_type: ExportType, finished_before: datetime, limit: int
    ) -> list[Export]:
        """Unpurged FINISHED exports of one type that finished before the cutoff, oldest first."""
        cursor = self._exports.find(
            {
                "status": ExportStatus.FINISHED.value,
                "exportType": export_type.value,
                "purged": None,
                "date.finished": {"$lt": finished_before},
            },
            sort=[("date.finished", ASCENDING)],
            limit=limit,
            # Not hinted: both servers pick the `retention` index for this shape, and the
            # embedded one walks a hinted index whole (about 1 s at 6,000 exports, per type).
        )
        return [Export.from_doc(doc) async for doc in cursor]

    async def get(self, export_id: str) -> Export | None:
        doc = await self._exports.find_one({"_id": export_id})
        return Export.from_doc(doc) if doc else None

    async def page(
        self,
        campaign_id: str,
        *,
        export_type: ExportType | None = None,
        status: ExportStatus | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Export]:
        query: Doc = {"campaignId": campaign_id}
        if export_type is not None:
            query["exportType"] = export_type.value
        if status is not None:
            query["status"] = status.value
        cursor = (
            self._exports.find(query)
            .sort([("date.created", DESCENDING), ("_id", DESCENDING)])
            .skip(offset)
            .limit(limit)
        )
        return [Export.from_doc(doc) async for doc in cursor]

    async def queue_until(self, created: datetime) -> list[Export]:
        """The TRIGGERED exports and the PENDING ones created up to `created`, in claim order.

        One range of the `claim` index per status (its sort order), for the queue position of
        the PENDING exports in an answer; a TRIGGERED export created later (a re-queued export
        claimed after it) is left out, which only makes an estimate a little short."""
        cursor = self._exports.find(
            {
                "status": {"$in": [ExportStatus.TRIGGERED.value, ExportStatus.PENDING.value]},
                "date.created": {"$lte": created},
            },
            _QUEUE_FIELDS,
            sort=[("status", ASCENDING), ("date.created", ASCENDING), ("_id", ASCENDING)],
        )
        docs = [doc async for doc in cursor]
        # Claim order among the PENDING ones; the TRIGGERED ones (sorted after them) go first.
        return [Export.from_doc(d) for d in docs if d["status"] == ExportStatus.TRIGGERED.value] + [
            Export.from_doc(d) for d in docs if d["status"] == ExportStatus.PENDING.value
        ]

    async def recent_finished(self, limit: int) -> list[Export]:
        """The last `limit` FINISHED exports by creation (the `claim` index), for estimates."""
        cursor = self._exports.find(
            {"status": ExportStatus.FINISHED.value},
            _QUEUE_FIELDS,
            sort=[("date.created", DESCENDING), ("_id", DESCENDING)],
            limit=limit,
        )
        return [Export.from_doc(doc) async for doc in cursor]

    async def cancel(self, export_id: str, campaign_id: str, by: str) -> CancelResult | None:
        """Cancel an export of `campaign_id` (contract §9); None when there is no such export.

        Each step is a compare-and-set on the status it expects, so a cancel racing the claim,
        the run's own end or a re-queue settles on exactly one outcome."""
        mine: Doc = {"_id": export_id, "campaignId": campaign_id}
        # Bounded: each retry means the export moved between two of our steps (claimed, or
        # given back to the queue), and it can only move so often.
        for _ in range(5):
            now = utcnow()
            result = await self._exports.update_one(
                {**mine, "status": ExportStatus.PENDING.value},
                {
                    "$set": self.ending(
                        ExportStatus.FAILED, now, {"error": CANCELLED_ERROR, "cancelledBy": by}
                    ),
                    "$unset": {"dedupeKey": ""},
                },
            )
            if result.modified_count == 1:
                return await self._cancel_result(export_id, "cancelled")
            result = await self._exports.update_one(
                {**mine, "status": ExportStatus.TRIGGERED.value, **_NOT_CANCELLED},
                {"$set": {"cancelRequested": True, "cancelledBy": by}},
            )
            if result.modified_count == 1:
                return await self._cancel_result(export_id, "requested")
            doc = await self._exports.find_one(mine)
            if doc is None:
                return None
            export = Export.from_doc(doc)
            if export.status is ExportStatus.TRIGGERED and export.cancel_requested:
                return CancelResult(export, "requested")  # asked before: the same answer
            if export.terminal:
                return CancelResult(export, "unchanged" if export.cancelled else "finished")
        raise RuntimeError("cancel did not settle")  # pragma: no cover

    async def _cancel_result(self, export_id: str, outcome: CancelOutcome) -> CancelResult | None:
        doc = await self._exports.find_one({"_id": export_id})
        return CancelResult(Export.from_doc(doc), outcome) if doc else None

    # ---- worker side --------------------------------------------------------------------

    async def claim(self, worker_id: str) -> Export | None:
        """Move the oldest PENDING export to TRIGGERED for `worker_id`, if a slot is free."""
        # By status, not `slot: {$exists}`: the `claim` index serves it on every server
        # (the embedded one scans the whole collection, history included, for `$exists`).
        busy = {
            doc["slot"]
            async for doc in self._exports.find(
                {"status": ExportStatus.TRIGGERED.value}, {"slot": 1}
            )
        }
        free = [s for s in range(self._max_concurrent) if s not in busy]
        if not free:
            return None
        # A few candidates, because another worker may win the first one.
        for _ in range(5):
            candidate = await self._exports.find_one(
                {"status": ExportStatus.PENDING.value},
                sort=[("date.created", ASCENDING), ("_id", ASCENDING)],
                projection={"_id": 1},
            )
            if candidate is None:
                return None
            now = utcnow()
            try:
                result = await self._exports.update_one(
                    {"_id": candidate["_id"], "status": ExportStatus.PENDING.value},
                    {
                        "$set": {
                            "status": ExportStatus.TRIGGERED.value,
                            "slot": free[0],
                            "workerId": worker_id,
                            "heartbeatAt": now,
                            "date.triggered": now,
                            "progress": {"processed": 0},
                        },
                        "$inc": {"attempts": 1},
                    },
                )
            except DuplicateKeyError:
                return None  # another worker took the slot first: not our turn
            if result.modified_count == 1:
                doc = await self._exports.find_one({"_id": candidate["_id"]})
                return Export.from_doc(doc) if doc else None
        return None

    def _owned(self, export_id: str, worker_id: str) -> Doc:
        return {
            "_id": export_id,
            "status": ExportStatus.TRIGGERED.value,
            "workerId": worker_id,
        }

    async def heartbeat(self, export_id: str, worker_id: str, processed: int | None = None) -> Beat:
        """Prove the worker alive, and learn whether a user cancelled the export meanwhile.

        The beat matches only a run nobody asked to cancel, so the common case stays one
        write; a cancel (rare) costs one more read to tell it from a lost export."""
        update: Doc = {"heartbeatAt": utcnow()}
        if processed is not None:
            update["progress.processed"] = processed
        owned = self._owned(export_id, worker_id)
        result = await self._exports.update_one({**owned, **_NOT_CANCELLED}, {"$set": update})
        if result.matched_count == 1:
            return Beat.OURS
        if await self._exports.find_one(owned, {"_id": 1}) is not None:
            return Beat.CANCEL
        return Beat.LOST

    async def set_total(self, export_id: str, worker_id: str, total: int) -> bool:
        result = await self._exports.update_one(
            self._owned(export_id, worker_id), {"$set": {"progress.total": total}}
        )
        return result.matched_count == 1

    async def add_upload(self, export_id: str, worker_id: str, upload: PendingUpload) -> bool:
        result = await self._exports.update_one(
            self._owned(export_id, worker_id), {"$push": {"uploads": upload.to_doc()}}
        )
        return result.matched_count == 1

    async def record_put(self, export_id: str, worker_id: str, upload: PendingUpload) -> Beat:
        """`add_upload` and `heartbeat` in one write, right before a single PutObject: the
        object is recorded only while the run is ours and nobody asked to cancel it (it is
        not written otherwise, so there is nothing to clean up)."""
        owned = self._owned(export_id, worker_id)
        result = await self._exports.update_one(
            {**owned, **_NOT_CANCELLED},
            {"$push": {"uploads": upload.to_doc()}, "$set": {"heartbeatAt": utcnow()}},
        )
        if result.matched_count == 1:
            return Beat.OURS
        if await self._exports.find_one(owned, {"_id": 1}) is not None:
            return Beat.CANCEL
        return Beat.LOST

    async def remove_upload(self, export_id: str, worker_id: str, upload: PendingUpload) -> None:
        await self._exports.update_one(
            self._owned(export_id, worker_id), {"$pull": {"uploads": upload.to_doc()}}
        )

    async def save_checkpoint(self, export_id: str, worker_id: str, checkpoint: Doc) -> bool:
        """Record where the run stands (contract §14); False when the export is no longer ours."""
        result = await self._exports.update_one(
            self._owned(export_id, worker_id), {"$set": {"checkpoint": checkpoint}}
        )
        return result.matched_count == 1

    async def begin_run(
        self, export_id: str, worker_id: str, keep: PendingUpload | None, resumed_from: int | None
    ) -> bool:
        """Settle what earlier runs left before this one writes: keep only the upload it
        resumes (with its checkpoint) or nothing, and record `resumedFrom`. The caller aborted
        the other uploads first."""
        update: Doc = {"$set": {}, "$unset": {}}
        if keep is not None and resumed_from is not None:
            update["$set"] = {"uploads": [keep.to_doc()], "resumedFrom": resumed_from}
        else:
            update["$unset"] = {"uploads": "", "checkpoint": "", "resumedFrom": ""}
        update = {k: v for k, v in update.items() if v}
        result = await self._exports.update_one(self._owned(export_id, worker_id), update)
        return result.matched_count == 1

    async def clear_uploads(self, export_id: str) -> None:
        """Forget the uploads of a terminal export once they are aborted."""
        await self._exports.update_one(
            {"_id": export_id, "status": {"$in": [s.value for s in TERMINAL_STATUSES]}},
            {"$unset": {"uploads": "", "checkpoint": ""}},
        )

    async def uploads(self, export_id: str) -> list[PendingUpload]:
        doc = await self._exports.find_one({"_id": export_id}, {"uploads": 1})
        return _uploads(doc or {})

    @staticmethod
    def ending(
        status: ExportStatus, now: datetime, values: Doc, *, owes_events: bool = True
    ) -> Doc:
        """The `$set` of every write that makes an export terminal (every path must use it).

        `notified: False` is written in the same update as the terminal status: it marks the
        export as owing its webhook events until they are in the outbox (`mark_notified`), so
        a process dying between the two writes leaves a trace that any worker's recovery
        (`unnotified`) finds. A caller that knows no subscription wants the export's events
        passes `owes_events=False`: nothing is owed, so neither the flag nor the write that
        clears it is needed."""
        flag = {"notified": False} if owes_events else {}
        return {"status": status.value, f"date.{status.value.lower()}": now, **flag, **values}

    async def mark_notified(self, export_id: str) -> None:
        """The export's webhook events are in the outbox."""
        await self._exports.update_one(
            {"_id": export_id, "notified": False}, {"$unset": {"notified": ""}}
        )

    async def unnotified(self, limit: int = 100) -> list[Export]:
        """Terminal exports whose webhook events may not be in the outbox yet."""
        cursor = self._exports.find({"notified": False}, hint="unnotified").limit(limit)
        return [Export.from_doc(doc) async for doc in cursor]

    def _leave_triggered(
        self, status: ExportStatus, now: datetime, *, keep_uploads: bool = False
    ) -> Doc:
        unset = {"slot": "", "workerId": "", "heartbeatAt": ""}
        if not keep_uploads:
            # A terminal export's uploads were aborted by whoever ended it (from the list it
            # read while it held the export); a checkpoint without its upload is worthless.
            unset["uploads"] = ""
            unset["checkpoint"] = ""
        if status is not ExportStatus.PENDING:
            unset["dedupeKey"] = ""
        return {"$unset": unset}

    async def finish(
        self,
        export_id: str,
        worker_id: str,
        files: Sequence[StoredFile],
        count: int,
        *,
        owes_events: bool = True,
    ) -> bool:
        now = utcnow()
        update = self._leave_triggered(ExportStatus.FINISHED, now)
        update["$set"] = self.ending(
            ExportStatus.FINISHED,
            now,
            {
                "count": count,
                "progress.processed": count,
                "files": [f.to_doc() for f in files],
            },
            owes_events=owes_events,
        )
        # A cancel that came first wins: the caller then removes the files it wrote.
        result = await self._exports.update_one(
            {**self._owned(export_id, worker_id), **_NOT_CANCELLED}, update
        )
        return result.modified_count == 1

    async def end_cancelled(self, export_id: str, worker_id: str | None) -> bool:
        """TRIGGERED with a cancel request → FAILED Cancelled, once its run left nothing behind.

        `worker_id` None: whoever holds it (a sweep ending a dead worker's cancelled run)."""
        now = utcnow()
        update = self._leave_triggered(ExportStatus.FAILED, now)
        query: Doc = {
            "_id": export_id,
            "status": ExportStatus.TRIGGERED.value,
            "cancelRequested": True,
        }
        if worker_id:
            query["workerId"] = worker_id
        update["$set"] = self.ending(ExportStatus.FAILED, now, {"error": CANCELLED_ERROR})
        result = await self._exports.update_one(query, update)
        return result.modified_count == 1

    async def fail(self, export_id: str, worker_id: str | None, error: ExportServiceError) -> bool:
        """TRIGGERED → FAILED with `error` as `{code, message}`."""
        now = utcnow()
        update = self._leave_triggered(ExportStatus.FAILED, now)
        update["$set"] = self.ending(ExportStatus.FAILED, now, {"error": _error_doc(error)})
        query = (
            self._owned(export_id, worker_id)
            if worker_id
            else {"_id": export_id, "status": ExportStatus.TRIGGERED.value}
        )
        result = await self._exports.update_one(query, update)
        return result.modified_count == 1

    async def expire(self, export_id: str, worker_id: str | None) -> bool:
        now = utcnow()
        update = self._leave_triggered(ExportStatus.EXPIRED, now)
        update["$set"] = self.ending(
            ExportStatus.EXPIRED,
            now,
            {"error": _error_doc(Timeout("export ran longer than timeoutMillis"))},
        )
        query: Doc = {"_id": export_id, "status": ExportStatus.TRIGGERED.value}
        if worker_id:
            query["workerId"] = worker_id
        result = await self._exports.update_one(query, update)
        return result.modified_count == 1

    async def requeue(
        self, export_id: str, worker_id: str | None, *, keep_uploads: bool = False
    ) -> bool:
        """TRIGGERED → PENDING (shutdown or dead worker); keeps its place by `date.created`.

        `keep_uploads`: the upload and checkpoint stay for the next run to resume (contract §14);
        every terminal path (cancel, CCPA, expiry, maxAttempts) still aborts them.
        Never for a run a user cancelled: that one ends with `end_cancelled` instead."""
        update = self._leave_triggered(ExportStatus.PENDING, utcnow(), keep_uploads=keep_uploads)
        update["$set"] = {"status": ExportStatus.PENDING.value, "progress": {"processed": 0}}
        update["$unset"]["date.triggered"] = ""
        query: Doc = {"_id": export_id, "status": ExportStatus.TRIGGERED.value, **_NOT_CANCELLED}
        if worker_id:
            query["workerId"] = worker_id
        result = await self._exports.update_one(query, update)
        return result.modified_count == 1

    async def reassign(self, export_id: str, from_worker: str | None, to_worker: str) -> bool:
        """Make `to_worker` the holder of a TRIGGERED export still held by `from_worker`.

        Fences the previous run: its own compare-and-set writes (heartbeat, upload, finish)
        match nothing from then on."""
        result = await self._exports.update_one(
            {"_id": export_id, "status": ExportStatus.TRIGGERED.value, "workerId": from_worker},
            {"$set": {"workerId": to_worker, "heartbeatAt": utcnow()}},
        )
        return result.modified_count == 1

    async def stale(
        self,
        *,
        run_timeout: timedelta,
        heartbeat_timeout: timedelta,
        orphans_of: str | None = None,
    ) -> list[ExportUploads]:
        """TRIGGERED exports past their timeout or whose worker stopped beating, plus (with
        `orphans_of`) those held by that worker id, which it knows it is no longer running."""
        now = utcnow()
        run_limit, beat_limit = now - run_timeout, now - heartbeat_timeout

        def is_stale(doc: Doc) -> bool:
            triggered = (doc.get("date") or {}).get("triggered")
            beat = doc.get("heartbeatAt")
            return (
                (triggered is not None and triggered < run_limit)
                or (beat is not None and beat < beat_limit)
                or (orphans_of is not None and doc.get("workerId") == orphans_of)
            )

        # The TRIGGERED exports (a handful) by the `claim` index, tested here: with the same
        # conditions as a top-level `$or`, the embedded server scans the whole collection
        # (history included) on every poll; MongoDB would use the index either way.
        cursor = self._exports.find({"status": ExportStatus.TRIGGERED.value})
        return [ExportUploads.from_doc(doc) async for doc in cursor if is_stale(doc)]

    # ---- CCPA side (export_service/ccpa/deletion.py) -------------------------------------
    # Batches only: one query per step whatever the number of exports. Every delete is still a
    # compare-and-set on the state the caller acted on, so a concurrent change leaves the
    # document in place for the caller's next look instead of being deleted unseen.

    async def in_campaigns(
        self, campaign_ids: Sequence[str], export_types: Iterable[ExportType]
    ) -> list[ExportUploads]:
        cursor = self._exports.find(
            {
                "campaignId": {"$in": list(campaign_ids)},
                "exportType": {"$in": [t.value for t in export_types]},
            }
        )
        return [ExportUploads.from_doc(doc) async for doc in cursor]

    async def by_ids(self, export_ids: Sequence[str]) -> list[ExportUploads]:
        cursor = self._exports.find({"_id": {"$in": list(export_ids)}})
        return [ExportUploads.from_doc(doc) async for doc in cursor]

    async def delete_pending(self, export_ids: Sequence[str]) -> int:
        """Delete exports still PENDING with nothing in S3 (a claim in between keeps the
        document; so does an upload kept for resuming, see `delete_pending_resumable`)."""
        result = await self._exports.delete_many(
            {
                "_id": {"$in": list(export_ids)},
                "status": ExportStatus.PENDING.value,
                "uploads.0": {"$exists": False},
            }
        )
        return result.deleted_count

    async def delete_pending_resumable(self, items: Sequence[ExportUploads]) -> int:
        """Delete PENDING exports whose kept uploads (contract §14) the caller aborted: only if
        they still hold exactly those (a run in between may have left others)."""
        if not items:
            return 0
        clauses: list[Doc] = [
            {
                "_id": item.export.id,
                "status": ExportStatus.PENDING.value,
                "uploads": [u.to_doc() for u in item.uploads],
            }
            for item in items
        ]
        result = await self._exports.delete_many(
            clauses[0] if len(clauses) == 1 else {"$or": clauses}
        )
        return result.deleted_count

    async def take_over(self, export_ids: Sequence[str], owner: str) -> int:
        """Make `owner` the worker of these TRIGGERED exports.

        Their running worker's compare-and-set writes (heartbeat, upload, finish) then match
        nothing, so it stops, cleans its uploads, and can record no new one: the `uploads`
        list is frozen for `owner` to clean.
        """
        result = await self._exports.update_many(
            {"_id": {"$in": list(export_ids)}, "status": ExportStatus.TRIGGERED.value},
            {"$set": {"workerId": owner}},
        )
        return result.modified_count

    async def delete_settled(
        self, terminal_ids: Sequence[str], taken_ids: Sequence[str], owner: str
    ) -> int:
        """Delete terminal exports and TRIGGERED ones still held by `owner`."""
        clauses: list[Doc] = []
        if terminal_ids:
            clauses.append(
                {
                    "_id": {"$in": list(terminal_ids)},
                    "status": {"$in": [s.value for s in TERMINAL_STATUSES]},
                }
            )
        if taken_ids:
            clauses.append(
                {
                    "_id": {"$in": list(taken_ids)},
                    "status": ExportStatus.TRIGGERED.value,
                    "workerId": owner,
                }
            )
        if not clauses:
            return 0
        result = await self._exports.delete_many(
            clauses[0] if len(clauses) == 1 else {"$or": clauses}
        )
        return result.deleted_count

    async def counts_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in ACTIVE_STATUSES:
            counts[status.value] = await self._exports.count_documents({"status": status.value})
        return counts

    async def oldest_pending_created(self) -> datetime | None:
        doc = await self._exports.find_one(
            {"status": ExportStatus.PENDING.value},
            sort=[("date.created", ASCENDING), ("_id", ASCENDING)],
            projection={"date.created": 1},
        )
        return doc["date"]["created"] if doc else None
