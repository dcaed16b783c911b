"""Small, hand-written source documents for tests (byte-for-byte expectations need known data)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from export_service.models import Export, ExportFilters, ExportStatus, ExportType, utcnow
from export_service.runtime import Services

Doc = dict[str, Any]

CAMPAIGN = "camp-1"
T0 = datetime(2026, 11, 23, 10, 0, 0)
BIG = "x" * 110_000  # 50 such rows exceed one 5 MiB part: the upload goes multipart


async def add_campaign(
    db: AsyncDatabase[Doc],
    campaign_id: str = CAMPAIGN,
    *,
    name: str = "Tour 2026",
    preferences: list[Doc] | None = None,
    markets: list[Doc] | None = None,
) -> None:
    await db["campaigns"].insert_one(
        {
            "_id": campaign_id,
            "name": name,
            "artist": {"name": "The Band"},
            "preferences": preferences if preferences is not None else [],
            "date": {"created": T0},
        }
    )
    if markets is None:
        markets = [
            {"_id": f"{campaign_id}-m1", "name": "Chicago", "city": "Chicago", "state": "IL"},
            {"_id": f"{campaign_id}-m2", "name": "=Dublin", "city": "Dublin", "state": ""},
        ]
    for market in markets:
        await db["markets"].insert_one(
            {"campaignId": campaign_id, "promoterIds": [], "event": {"date": T0}, **market}
        )


def entry(
    entry_id: str,
    user_id: str,
    *,
    campaign_id: str = CAMPAIGN,
    market_id: str | None = None,
    created: datetime = T0,
    **extra: Any,
) -> Doc:
    doc: Doc = {
        "_id": entry_id,
        "campaignId": campaign_id,
        "userId": user_id,
        "marketId": market_id or f"{campaign_id}-m1",
        "locale": "en-US",
        "countryCode": "US",
        "fields": {
            "email": f"{user_id}@example.com",
            "first_name": "Ann",
            "last_name": "Lee",
            "phone": "+15550001",
            "postal_code": "60601",
        },
        "optIns": {},
        "date": {"created": created},
    }
    doc.update(extra)
    return doc


async def run_export(
    services: Services,
    export_type: ExportType,
    *,
    campaign_id: str = CAMPAIGN,
    date_key: str | None = None,
    include_all: bool | None = None,
) -> Export:
    """Queue one export and drain the worker: the export as it ended."""
    await services.repository.create(
        campaign_id=campaign_id,
        campaign_name="Tour",
        export_type=export_type,
        requester_user_id="u",
        date_key=date_key,
        include_all_markets=include_all,
    )
    (done,) = await services.worker.drain()
    return done


async def queue_exports(
    services: Services, n: int, export_type: ExportType, *, filters: ExportFilters | None = None
) -> list[Export]:
    """`n` PENDING exports of one type; distinct dateKeys keep dedupe from merging them."""
    created = []
    for i in range(n):
        export, _ = await services.repository.create(
            campaign_id=CAMPAIGN,
            campaign_name="Tour",
            export_type=export_type,
            requester_user_id="u",
            date_key=f"2026{1 + i // 28 % 12:02d}{1 + i % 28:02d}" if n > 1 else None,
            include_all_markets=None,
            filters=filters,
        )
        created.append(export)
    return created


async def stored_export(
    services: Services,
    campaign_id: str,
    export_type: ExportType,
    objects: list[tuple[str, str]],
    *,
    status: ExportStatus = ExportStatus.FINISHED,
    finished: datetime | None = None,
    body: bytes = b"a,b\r\n",
) -> str:
    """An export document written directly, with its objects really in S3; a FINISHED one
    finished at `finished` (default now)."""
    # Unique per call: several are written within one millisecond (utcnow() has ms precision).
    export_id = f"{campaign_id}-{export_type.value}-{len(objects)}-{uuid.uuid4().hex[:12]}"
    files = []
    for bucket, key in objects:
        await services.storage.client.put_object(Bucket=bucket, Key=key, Body=body)
        files.append({"bucket": bucket, "key": key, "acl": "private", "rows": 1,
                      "bytes": len(body), "sha256": "0" * 64})  # fmt: skip
    date: Doc = {"created": utcnow()}
    if status is ExportStatus.FINISHED:
        date["finished"] = finished or date["created"]
    await services.db["exports"].insert_one(
        {"_id": export_id, "campaignId": campaign_id, "campaignName": "Tour",
         "exportType": export_type.value, "status": status.value, "requesterUserId": "admin",
         "date": date, "progress": {"processed": 1}, "files": files}
    )  # fmt: skip
    return export_id


async def seed_big_entries(services: Services, n: int = 60) -> None:
    """A campaign whose `n` entries carry a BIG note each: the entries file goes multipart."""
    await add_campaign(services.db, preferences=[{"id": "note", "label": "Note"}])
    docs = [entry(f"e{i:03d}", f"u{i:03d}") for i in range(n)]
    for doc in docs:
        doc["fields"]["note"] = BIG
    await services.db["entries"].insert_many(docs)


async def snapshot(db: AsyncDatabase[Doc]) -> dict[str, int]:
    """How many documents each non-empty collection holds: equal before and after means a
    refused request wrote nothing."""
    counts = {name: await db[name].count_documents({}) for name in await db.list_collection_names()}
    return {name: n for name, n in counts.items() if n}
