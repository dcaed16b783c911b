"""The MongoDB client and the indexes the queue and the exporters rely on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.monitoring import CommandListener
from pymongo.read_preferences import (
    Nearest,
    Primary,
    PrimaryPreferred,
    Secondary,
    SecondaryPreferred,
)

from export_service import retention
from export_service.ccpa.requests import CcpaRequests
from export_service.queue.repository import ExportRepository
from export_service.settings import Settings
from export_service.webhooks.outbox import Outbox

Doc = dict[str, Any]
SourceReadPreference = Primary | PrimaryPreferred | Secondary | SecondaryPreferred | Nearest

# Indexes on the source collections that the exporters' queries use. They are created at
# start-up idempotently; on a production cluster whose sources belong to other services, the
# same definitions can be applied by their owners instead (creating an existing index is a no-op).
SOURCE_INDEXES: dict[str, list[IndexModel]] = {
    "entries": [
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
    "markets": [IndexModel([("campaignId", ASCENDING)], name="campaign")],
    "scoring": [
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
    "codes": [
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
    "sms_waves": [
        IndexModel([("campaignId", ASCENDING), ("status", ASCENDING)], name="campaign_status"),
        IndexModel([("memberIds", ASCENDING)], name="members"),
    ],
}


# The embedded server is single-threaded: while it builds a large query's result it cannot answer
# the driver's monitor, and a monitor timeout makes the driver cancel operations in flight.
EMBEDDED_CONNECT_TIMEOUT_MS = 120_000


def connect(
    uri: str, settings: Settings, *, listeners: Sequence[CommandListener] = ()
) -> AsyncMongoClient[Doc]:
    """The process's client. Every driver call is bounded: server selection, connect and each
    round trip have a timeout, so no task waits on a dead server forever. `listeners` is for
    tests that observe the commands sent (command monitoring)."""
    connect_timeout = settings.mongo_connect_timeout_ms
    if settings.embedded:
        connect_timeout = max(connect_timeout, EMBEDDED_CONNECT_TIMEOUT_MS)
    # Passed only when given: tests that wrap the client class add listeners of their own.
    extra: dict[str, Any] = {"event_listeners": list(listeners)} if listeners else {}
    return AsyncMongoClient(
        uri,
        serverSelectionTimeoutMS=settings.mongo_timeout_ms,
        connectTimeoutMS=connect_timeout,
        socketTimeoutMS=settings.mongo_socket_timeout_ms,
        maxPoolSize=settings.mongo_max_pool_size,
        minPoolSize=settings.mongo_min_pool_size,
        # Explicit although they are the driver's defaults: the queue's compare-and-set writes
        # and the exporters' reads are retried once across a primary election.
        retryWrites=True,
        retryReads=True,
        # A wait for a pooled connection is bounded too: no driver call may wait forever (the
        # worker stops its tasks by letting their calls end, never by cancelling them).
        waitQueueTimeoutMS=settings.mongo_timeout_ms,
        tz_aware=False,
        appname=settings.mongo_app_name,
        **extra,
    )


def source_read_preference(settings: Settings) -> SourceReadPreference:
    """What every exporter read of the source collections is sent with."""
    staleness = settings.source_max_staleness_seconds or -1
    mode = settings.source_read_preference
    if mode == "primary":
        return Primary()
    if mode == "primaryPreferred":
        return PrimaryPreferred(max_staleness=staleness)
    if mode == "secondary":
        return Secondary(max_staleness=staleness)
    if mode == "secondaryPreferred":
        return SecondaryPreferred(max_staleness=staleness)
    return Nearest(max_staleness=staleness)


def source_database(client: AsyncMongoClient[Doc], settings: Settings) -> AsyncDatabase[Doc]:
    """The database as the exporters read it: the source read preference, local read concern.

    Only the exporters (cursors, counts, campaign/market/promoter lookups) go through it; the
    `exports` collection, the outbox and CCPA's lookups always read the primary (see
    `ExportRepository` and `ccpa.deletion`), because they decide what runs and what is deleted."""
    return client.get_database(settings.mongo_db, read_preference=source_read_preference(settings))


async def ensure_indexes(db: AsyncDatabase[Doc], settings: Settings) -> None:
    await ExportRepository(db, max_concurrent=settings.max_concurrent_exports).ensure_indexes()
    await CcpaRequests(db).ensure_indexes()
    await Outbox(db).ensure_indexes()
    await retention.ensure_indexes(db)
    for collection, indexes in SOURCE_INDEXES.items():
        await db[collection].create_indexes(indexes)
