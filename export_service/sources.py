"""The source collections (contract §2): their names, their indexes, the campaign and market
lookups, and where a user shows up in a campaign (what CCPA deletion searches).

They belong to other services: the exporters only read them, and every name the service uses
comes from here. `db.py` keeps the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.read_preferences import Primary

Doc = dict[str, Any]

CAMPAIGNS: Final = "campaigns"
PROMOTERS: Final = "promoters"
MARKETS: Final = "markets"
ENTRIES: Final = "entries"
SCORING: Final = "scoring"
CODES: Final = "codes"
SMS_WAVES: Final = "sms_waves"

# Every source collection. A campaign is keyed by its `_id`, the others name it in `campaignId`
# (promoters are global).
SOURCE_COLLECTIONS: Final = (CAMPAIGNS, PROMOTERS, MARKETS, ENTRIES, SCORING, CODES, SMS_WAVES)

# Indexes on the source collections that the exporters' queries use. They are created at
# start-up idempotently; on a production cluster whose sources belong to other services, the
# same definitions can be applied by their owners instead (creating an existing index is a no-op).
SOURCE_INDEXES: dict[str, list[IndexModel]] = {
    ENTRIES: [
        IndexModel([("campaignId", ASCENDING), ("_id", ASCENDING)], name="campaign_id"),
        # A market filter (contract §12) on the single-cursor types: one range per listed market,
        # merged in _id order by the server, so the rows stay in _id order without a sort stage.
        IndexModel(
            [("campaignId", ASCENDING), ("marketId", ASCENDING), ("_id", ASCENDING)],
            name="campaign_market_id",
        ),
        IndexModel(
            [
                ("campaignId", ASCENDING),
                ("userId", ASCENDING),
                ("date.created", ASCENDING),
                ("_id", ASCENDING),
            ],
            name="campaign_user_created_id",
        ),
        # CCPA: the campaigns one user entered (covered: distinct campaignId for a userId).
        IndexModel([("userId", ASCENDING), ("campaignId", ASCENDING)], name="user_campaign"),
    ],
    MARKETS: [IndexModel([("campaignId", ASCENDING)], name="campaign")],
    SCORING: [
        IndexModel([("campaignId", ASCENDING), ("_id", ASCENDING)], name="campaign_id"),
        IndexModel([("userId", ASCENDING)], name="user"),
        # waitlist: one campaign's non-selected records in user order (merge join with entries),
        # and its count for given users.
        IndexModel(
            [
                ("campaignId", ASCENDING),
                ("selected", ASCENDING),
                ("userId", ASCENDING),
                ("_id", ASCENDING),
            ],
            name="campaign_selected_user_id",
        ),
        # waitlist with a market filter (contract §12): one range per listed market, merged in
        # user order by the server, so the merge join needs no sort stage.
        IndexModel(
            [
                ("campaignId", ASCENDING),
                ("selected", ASCENDING),
                ("marketId", ASCENDING),
                ("userId", ASCENDING),
                ("_id", ASCENDING),
            ],
            name="campaign_selected_market_user_id",
        ),
    ],
    CODES: [
        IndexModel([("campaignId", ASCENDING), ("_id", ASCENDING)], name="campaign_id"),
        IndexModel([("assignedTo", ASCENDING)], name="assigned_to"),
        # codeAssignments / codeWaves: assigned codes in user order (merge join with entries).
        IndexModel(
            [("campaignId", ASCENDING), ("assignedTo", ASCENDING), ("_id", ASCENDING)],
            name="campaign_assigned_id",
        ),
        # codeAssignments with a market filter (contract §12): the listed markets' codes only,
        # one range per market merged in user order.
        IndexModel(
            [
                ("campaignId", ASCENDING),
                ("marketId", ASCENDING),
                ("assignedTo", ASCENDING),
                ("_id", ASCENDING),
            ],
            name="campaign_market_assigned_id",
        ),
        IndexModel(
            [
                ("campaignId", ASCENDING),
                ("waveDateKey", ASCENDING),
                ("assignedTo", ASCENDING),
                ("_id", ASCENDING),
            ],
            name="campaign_wave_assigned_id",
        ),
    ],
    SMS_WAVES: [
        IndexModel([("campaignId", ASCENDING), ("status", ASCENDING)], name="campaign_status"),
        IndexModel([("memberIds", ASCENDING)], name="members"),
    ],
}


# Where a user shows up in a campaign (contract §7): (collection, the field holding the user id).
CCPA_ASSOCIATIONS: Final[tuple[tuple[str, str], ...]] = (
    (ENTRIES, "userId"),
    (SCORING, "userId"),
    (CODES, "assignedTo"),
    (SMS_WAVES, "memberIds"),
)


async def find_campaign(
    db: AsyncDatabase[Doc], campaign_id: str, projection: Doc | None = None
) -> Doc | None:
    return await db[CAMPAIGNS].find_one({"_id": campaign_id}, projection)


async def campaign_markets(db: AsyncDatabase[Doc], campaign_id: str) -> dict[str, Doc]:
    """The campaign's markets by `_id`."""
    cursor = db[MARKETS].find({"campaignId": campaign_id})
    return {doc["_id"]: doc async for doc in cursor}


async def unknown_markets(
    db: AsyncDatabase[Doc], campaign_id: str, market_ids: Sequence[str]
) -> list[str]:
    """The ids among `market_ids` that are no market of the campaign, sorted."""
    found = await db[MARKETS].distinct(
        "_id", {"campaignId": campaign_id, "_id": {"$in": market_ids}}
    )
    return sorted(set(market_ids) - set(found))


async def wave_date_keys(db: AsyncDatabase[Doc], campaign_id: str) -> list[str]:
    """The dates of the campaign's code waves (`codes.waveDateKey`), sorted."""
    found = await db[CODES].distinct("waveDateKey", {"campaignId": campaign_id})
    return sorted(d for d in found if isinstance(d, str))


async def associated_campaigns(db: AsyncDatabase[Doc], user_id: str) -> list[str]:
    """The campaigns where `user_id` shows up in any of `CCPA_ASSOCIATIONS`, sorted."""
    # The primary whatever the source read preference or the URI say: a secondary that lags
    # would miss a campaign the user just entered, and its exports would survive the request.
    # These are the only source reads that cannot lead with `campaignId` (finding the
    # campaigns is the point): on a cluster sharded by campaignId each goes to every shard,
    # served there by the user-field index; CCPA requests are rare.
    found = await asyncio.gather(
        *(
            db.get_collection(name, read_preference=Primary()).distinct(
                "campaignId", {path: user_id}
            )
            for name, path in CCPA_ASSOCIATIONS
        )
    )
    return sorted({c for ids in found for c in ids if isinstance(c, str)})


async def ensure_source_indexes(db: AsyncDatabase[Doc]) -> None:
    for collection, indexes in SOURCE_INDEXES.items():
        await db[collection].create_indexes(indexes)
