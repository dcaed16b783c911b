"""All persistence of the `webhook_events` collection (the outbox): the only module touching it.

One document per (export, subscription, event type), made unique by an index, so the worker
that ended an export and a sweep recovering after its crash can both insert the events and
only one set exists. An event is delivered by whoever holds its lease: a claim is a
compare-and-set that sets a fresh `leaseId` and pushes `nextAttemptAt` past the attempt's
time limit, so no other worker sees it due while the attempt runs (a hanging receiver never
gets it twice at once), and the outcome is written only under that `leaseId`, so an attempt
that outlived its lease cannot overwrite a later one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from export_service.models import Export, ExportStatus, utcnow
from export_service.queue.repository import queue_collection

Doc = dict[str, Any]

EVENT_TYPES = {
    ExportStatus.FINISHED: "export.finished",
    ExportStatus.FAILED: "export.failed",
    ExportStatus.EXPIRED: "export.expired",
}
DUPLICATE_KEY = 11000
LAST_ERROR_CHARS = 300


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


EVENT_INDEXES = [
    IndexModel(
        [("exportId", ASCENDING), ("subscription", ASCENDING), ("type", ASCENDING)],
        name="one_per_transition",
        unique=True,
    ),
    IndexModel([("status", ASCENDING), ("nextAttemptAt", ASCENDING)], name="due"),
]


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    id: str  # the `webhook-id`, the same on every attempt
    export_id: str
    campaign_id: str
    subscription: str
    type: str
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    lease_id: str | None = None
    last_error: str | None = None

    @classmethod
    def from_doc(cls, doc: Doc) -> WebhookEvent:
        return cls(
            id=doc["_id"],
            export_id=doc["exportId"],
            campaign_id=doc.get("campaignId", ""),
            subscription=doc["subscription"],
            type=doc["type"],
            status=DeliveryStatus(doc["status"]),
            attempts=int(doc.get("attempts", 0)),
            created_at=doc["createdAt"],
            next_attempt_at=doc["nextAttemptAt"],
            lease_id=doc.get("leaseId"),
            last_error=doc.get("lastError"),
        )

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "subscription": self.subscription,
            "status": self.status.value,
            "attempts": self.attempts,
        }
        if self.last_error is not None:
            body["lastError"] = self.last_error
        return body


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Read at scrape time (delivered and failed are counters of the processes that did it)."""

    pending: int
    retrying: int  # pending after at least one failed attempt
    oldest_pending: datetime | None


class Outbox:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        # Queue state like `exports`: primary, majority read and write concern, so an event
        # stored before an export's end is acknowledged survives a primary election.
        self._events: AsyncCollection[Doc] = queue_collection(db, "webhook_events")

    async def ensure_indexes(self) -> None:
        await self._events.create_indexes(EVENT_INDEXES)

    async def add(self, export: Export, subscriptions: Sequence[str]) -> int:
        """Insert the events of a terminal export; those already there are kept. Returns new."""
        event_type = EVENT_TYPES.get(export.status)
        if event_type is None or not subscriptions:
            return 0
        now = utcnow()
        docs = [
            {
                # Standard Webhooks ids are opaque strings; `msg_` is the convention.
                "_id": f"msg_{ObjectId()}",
                "exportId": export.id,
                "campaignId": export.campaign_id,
                "exportType": export.export_type.value,
                "subscription": name,
                "type": event_type,
                "status": DeliveryStatus.PENDING.value,
                "attempts": 0,
                "createdAt": now,
                "nextAttemptAt": now,
            }
            for name in subscriptions
        ]
        try:
            result = await self._events.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                raise
            return int(exc.details.get("nInserted", 0))
        return len(result.inserted_ids)

    async def claim_due(
        self, now: datetime, limit: int, lease: timedelta, owner: str
    ) -> list[WebhookEvent]:
        """Take up to `limit` events due at `now`, each under a new lease lasting `lease`."""
        claimed: list[WebhookEvent] = []
        cursor = (
            self._events.find(
                {"status": DeliveryStatus.PENDING.value, "nextAttemptAt": {"$lte": now}},
                {"_id": 1, "nextAttemptAt": 1},
            )
            .sort([("nextAttemptAt", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        candidates = [doc async for doc in cursor]
        for candidate in candidates:
            lease_id = uuid.uuid4().hex
            # update_one + find_one, not find_one_and_update: the embedded server scans the
            # whole collection for the latter.
            result = await self._events.update_one(
                {
                    "_id": candidate["_id"],
                    "status": DeliveryStatus.PENDING.value,
                    # Unchanged since we read it: nobody else claimed or rescheduled it.
                    "nextAttemptAt": candidate["nextAttemptAt"],
                },
                {
                    "$set": {
                        "nextAttemptAt": now + lease,
                        "leaseId": lease_id,
                        "leaseOwner": owner,
                    },
                    # Counted at the claim: an attempt cut short by a crash still counts, so a
                    # receiver that kills workers cannot make an event retry forever.
                    "$inc": {"attempts": 1},
                },
            )
            if result.modified_count != 1:
                continue
            doc = await self._events.find_one({"_id": candidate["_id"], "leaseId": lease_id})
            if doc is not None:
                claimed.append(WebhookEvent.from_doc(doc))
        return claimed

    async def delivered(self, event: WebhookEvent, now: datetime) -> bool:
        return await self._settle(
            event,
            {"status": DeliveryStatus.DELIVERED.value, "deliveredAt": now},
            unset_error=True,
        )

    async def retry_at(self, event: WebhookEvent, when: datetime, error: str) -> bool:
        return await self._settle(event, {"nextAttemptAt": when, "lastError": _short(error)})

    async def failed(self, event: WebhookEvent, now: datetime, error: str) -> bool:
        return await self._settle(
            event,
            {"status": DeliveryStatus.FAILED.value, "failedAt": now, "lastError": _short(error)},
        )

    async def _settle(self, event: WebhookEvent, values: Doc, *, unset_error: bool = False) -> bool:
        update: Doc = {"$set": values, "$unset": {"leaseId": "", "leaseOwner": ""}}
        if unset_error:
            update["$unset"]["lastError"] = ""
        result = await self._events.update_one(
            {"_id": event.id, "leaseId": event.lease_id, "status": DeliveryStatus.PENDING.value},
            update,
        )
        return result.modified_count == 1

    async def for_exports(self, export_ids: Sequence[str]) -> dict[str, list[WebhookEvent]]:
        """The events of these exports, by export id, in subscription order."""
        found: dict[str, list[WebhookEvent]] = {}
        if not export_ids:
            return found
        cursor = self._events.find(
            {"exportId": {"$in": list(export_ids)}}, hint="one_per_transition"
        )
        for doc in [d async for d in cursor]:
            event = WebhookEvent.from_doc(doc)
            found.setdefault(event.export_id, []).append(event)
        for events in found.values():
            events.sort(key=lambda e: (e.subscription, e.type))
        return found

    async def get(self, event_id: str) -> WebhookEvent | None:
        doc = await self._events.find_one({"_id": event_id})
        return WebhookEvent.from_doc(doc) if doc else None

    async def stats(self) -> OutboxStats:
        pending = await self._events.count_documents({"status": DeliveryStatus.PENDING.value})
        retrying = await self._events.count_documents(
            {"status": DeliveryStatus.PENDING.value, "attempts": {"$gt": 0}}
        )
        oldest = await self._events.find_one(
            {"status": DeliveryStatus.PENDING.value},
            sort=[("createdAt", ASCENDING)],
            projection={"createdAt": 1},
        )
        return OutboxStats(
            pending=pending,
            retrying=retrying,
            oldest_pending=oldest["createdAt"] if oldest else None,
        )


def _short(error: str) -> str:
    return error if len(error) <= LAST_ERROR_CHARS else error[: LAST_ERROR_CHARS - 1] + "…"
