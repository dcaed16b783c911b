"""The `ccpa_requests` collection: one audit document per CCPA deletion request.

It records who asked, when, for which user, and what was deleted (export ids, bucket and key of
every object) — identifiers only, never the user's personal data.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from export_service.models import utcnow
from export_service.queue.repository import queue_collection

Doc = dict[str, Any]

CCPA_REQUEST_INDEXES = [
    IndexModel([("userId", ASCENDING), ("date.requested", DESCENDING)], name="user_requested"),
]


class CcpaRequests:
    def __init__(self, db: AsyncDatabase[Doc]) -> None:
        # Majority-durable like the queue: an audit record must survive a primary election.
        self._requests: AsyncCollection[Doc] = queue_collection(db, "ccpa_requests")

    async def ensure_indexes(self) -> None:
        await self._requests.create_indexes(CCPA_REQUEST_INDEXES)

    async def open(self, *, user_id: str, requested_by: str) -> str:
        """Record the request before anything is deleted, so even a crash leaves a trace."""
        request_id = str(ObjectId())
        await self._requests.insert_one(
            {
                "_id": request_id,
                "userId": user_id,
                "requestedBy": requested_by,
                "status": "RUNNING",
                "date": {"requested": utcnow()},
            }
        )
        return request_id

    async def close(self, request_id: str, *, complete: bool, outcome: Doc) -> None:
        await self._requests.update_one(
            {"_id": request_id},
            {
                "$set": {
                    **outcome,
                    "status": "COMPLETE" if complete else "INCOMPLETE",
                    "date.completed": utcnow(),
                }
            },
        )
