"""The MongoDB client, its read preferences, and the creation of every index at start-up
(the source collections' are defined in `sources.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import AsyncMongoClient
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
from export_service.sources import ensure_source_indexes
from export_service.webhooks.outbox import Outbox

Doc = dict[str, Any]
SourceReadPreference = Primary | PrimaryPreferred | Secondary | SecondaryPreferred | Nearest

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
    `ExportRepository` and `sources.associated_campaigns`), because they decide what runs and
    what is deleted."""
    return client.get_database(settings.mongo_db, read_preference=source_read_preference(settings))


async def ensure_indexes(db: AsyncDatabase[Doc], settings: Settings) -> None:
    await ExportRepository(db, max_concurrent=settings.max_concurrent_exports).ensure_indexes()
    await CcpaRequests(db).ensure_indexes()
    await Outbox(db).ensure_indexes()
    await retention.ensure_indexes(db)
    await ensure_source_indexes(db)
