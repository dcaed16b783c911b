"""Every query the queue and the exporters send is served by an index (issue 5).

The queries are not restated here: a command listener records what the real code sends while a
seeded campaign goes through the API-side calls, the worker's claims and sweeps, and one export
of every type in `EXPORTERS` (so a new exporter is covered without touching this file). Each
recorded filter is then explained on the embedded server, and its winning plan must read an
index: an IXSCAN (or MongoDB's IDHACK / EXPRESS / COUNT_SCAN forms) and no COLLSCAN anywhere.
Updates and deletes are explained as the find of their filter, which is how both servers plan
them.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from export_service import db as dbmod
from export_service.dev.seed import SeedPlan, seed
from export_service.exporters import EXPORTERS
from export_service.filters import FILTERABLE_TYPES, request_filters
from export_service.models import ExportFilters, ExportStatus, ExportType, utcnow
from export_service.queue.repository import ExportRepository
from export_service.queue.worker import Worker
from export_service.retention import Retention
from export_service.runtime import s3_credentials, s3_endpoint
from export_service.settings import Settings
from export_service.sources import SOURCE_INDEXES
from export_service.storage import Storage
from export_service.webhooks.notifier import Notifier
from export_service.webhooks.outbox import Outbox
from tests.support.plans import plan_nodes, point_fields, sorted_by

Doc = dict[str, Any]
CAMPAIGN = "plans-campaign"

# Plans that read an index, whatever the server calls the stage.
INDEX_STAGES = {"IXSCAN", "IDHACK", "EXPRESS_IXSCAN", "EXPRESS_CLUSTERED_IXSCAN", "COUNT_SCAN"}

# Why some plans are accepted although the embedded server's explain shows COLLSCAN:
#
# SecantusDB's explain reports COLLSCAN for a filter of several fields unless one index covers
# them all, but its executor then looks ONE clause up by an index and matches the rest
# (secantus/storage.py, `_try_index_id_keys`: "one CLAUSE can still ride an index"), and
# MongoDB's planner does the same (an IXSCAN on any indexed clause, never a collection scan
# when one exists). Such a query is accepted only when a clause alone explains as indexed.
# Filters with a top-level operator (`$or`, `$and`) get no such fallback on SecantusDB, so
# the code sends none on hot paths (see `ExportRepository.stale`).
CLAUSE_ON_EMBEDDED = (
    "SecantusDB's explain shows COLLSCAN for a multi-field filter no single index covers; its "
    "executor (and MongoDB's planner) reads this clause by its index and filters the rest"
)

# (collection, filter shape) → why the embedded server truly scans although MongoDB would
# not. Empty: no such query is sent.
SCANS_ON_EMBEDDED_ONLY: dict[tuple[str, str], str] = {}


@dataclass
class Recorder(monitoring.CommandListener):
    """The read and write commands sent while `on` is set."""

    on: bool = False
    commands: list[tuple[str, Doc]] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name in {"find", "aggregate", "update", "delete", "count"}:
            self.commands.append((event.database_name, copy.deepcopy(dict(event.command))))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


def shape(value: Any) -> Any:
    """A filter with its values blanked: two calls of one query have the same shape."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [shape(v) for v in value]
    return "?"


def stages(plan: Doc) -> list[str]:
    return [str(node.get("stage", "")) for node in plan_nodes(plan)]


def winning_plan(explained: Doc) -> Doc:
    if "queryPlanner" in explained:
        plan: Doc = explained["queryPlanner"]["winningPlan"]
    else:
        plan = explained["stages"][0]["$cursor"]["queryPlanner"]["winningPlan"]  # an aggregate's
    nested: Doc = plan.get("queryPlan", plan)  # MongoDB 7+ nests the classic plan
    return nested


@dataclass(frozen=True)
class Query:
    collection: str
    command: Doc  # the find or aggregate to explain

    @property
    def key(self) -> tuple[str, str]:
        body = self.command.get("filter", self.command.get("pipeline"))
        return self.collection, repr(shape(body))


def as_queries(name: str, command: Doc) -> list[Query]:
    """What the server plans for one recorded command."""
    clean = {k: v for k, v in command.items() if not k.startswith("$") and k != "lsid"}
    if name == "find":
        keep = ("find", "filter", "sort", "projection", "hint")
        return [Query(clean["find"], {k: clean[k] for k in keep if k in clean})]
    if name == "aggregate":
        return [Query(clean["aggregate"], {"aggregate": clean["aggregate"],
                                           "pipeline": clean["pipeline"], "cursor": {}})]  # fmt: skip
    if name == "count":
        return [Query(clean["count"], {"find": clean["count"], "filter": clean.get("query", {})})]
    statements = clean.get("updates") or clean.get("deletes") or []
    collection: str = clean.get("update") or clean.get("delete") or ""
    return [
        Query(collection, {"find": collection, "filter": s["q"], **({"hint": s["hint"]} if "hint" in s else {})})
        for s in statements
    ]  # fmt: skip


async def indexed_clause(
    query: Query, indexed: Callable[[Doc], Awaitable[tuple[bool, list[str]]]]
) -> str | None:
    """The field of a clause that alone explains as indexed (see CLAUSE_ON_EMBEDDED)."""
    command = query.command
    pipeline = command.get("pipeline")
    filter_ = pipeline[0].get("$match", {}) if pipeline else command.get("filter", {})
    if len(filter_) < 2 or any(k.startswith("$") for k in filter_):
        return None
    for field_name, clause in filter_.items():
        single = {"find": query.collection, "filter": {field_name: clause}}
        if "sort" in command:
            single["sort"] = command["sort"]
        ok, _ = await indexed(single)
        if ok:
            return str(field_name)
    return None


@pytest.fixture
async def recorded(settings: Settings) -> AsyncIterator[tuple[Recorder, AsyncMongoClient[Doc]]]:
    recorder = Recorder()
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        settings.mongo_uri.get_secret_value() if settings.mongo_uri else "",
        event_listeners=[recorder],
        tz_aware=False,
    )
    try:
        yield recorder, client
    finally:
        await client.drop_database(settings.mongo_db)
        await client.close()


async def test_every_queue_and_exporter_query_uses_an_index(
    settings: Settings, recorded: tuple[Recorder, AsyncMongoClient[Doc]]
) -> None:
    recorder, client = recorded
    db = client[settings.mongo_db]
    await dbmod.ensure_indexes(db, settings)
    await seed(db, SeedPlan(campaign_id=CAMPAIGN, entries=300, markets=3))
    wave = await db["codes"].find_one({"waveDateKey": {"$ne": None}})
    assert wave is not None
    repository = ExportRepository(db, max_concurrent=settings.max_concurrent_exports)

    async with Storage.open(settings, s3_endpoint(settings), s3_credentials(settings)) as storage:
        await storage.ensure_buckets(list(settings.buckets.values()))
        worker = Worker(repository, db, storage, settings)
        recorder.on = True

        # API side: create (twice: the second is the dedupe lookup), get, list in every form.
        async def create(export_type: ExportType, filters: ExportFilters | None = None) -> None:
            await repository.create(
                campaign_id=CAMPAIGN,
                campaign_name="Plans",
                export_type=export_type,
                requester_user_id="u",
                date_key=wave["waveDateKey"] if export_type is ExportType.CODE_WAVES else None,
                include_all_markets=export_type is ExportType.ENTRIES or None,
                filters=filters,
            )

        for export_type in EXPORTERS:
            for _ in range(2):
                await create(export_type)
        # Filtered exports (contract §12) of every type that reads entries: their queries too.
        market = await db["markets"].find_one({"campaignId": CAMPAIGN})
        assert market is not None
        filters = request_filters(
            [market["_id"]], datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        )
        for export_type in FILTERABLE_TYPES:
            await create(export_type, filters)
        await repository.page(CAMPAIGN)
        await repository.page(CAMPAIGN, export_type=ExportType.ENTRIES)
        await repository.page(CAMPAIGN, status=ExportStatus.PENDING)
        await repository.page(CAMPAIGN, export_type=ExportType.CODES, status=ExportStatus.FINISHED)
        await repository.counts_by_status()
        await repository.oldest_pending_created()
        # Queue position and ETA of every answer with a PENDING export (contract §9).
        await repository.queue_until(utcnow())
        await repository.recent_finished(200)
        # Worker side: sweep, claim, run every exporter, record the outcome.
        done = await worker.drain()
        await worker.sweep()
        # Retention (contract §13): the candidates of every type, the lease, the records.
        retained = settings.model_copy(update={"retention_days": 1})
        sweep = await Retention(repository, storage, retained, owner="plans").sweep(
            utcnow() + timedelta(days=2)
        )
        assert sweep is not None and sweep.purged
        # Webhook outbox: recovery, due events, the export views' lookup, the metrics.
        outbox = Outbox(db)
        await Notifier(repository, outbox, []).recover()
        await outbox.claim_due(utcnow(), 8, timedelta(seconds=70), "plans")
        await outbox.for_exports([e.id for e in done])
        await outbox.stats()
        recorder.on = False

    assert {e.export_type for e in done} == set(EXPORTERS)
    assert {e.export_type for e in done if e.filters is not None} == FILTERABLE_TYPES
    assert all(e.status is ExportStatus.FINISHED for e in done), [
        (e.export_type.value, e.error) for e in done if e.status is not ExportStatus.FINISHED
    ]
    queries: dict[tuple[str, str], Query] = {}
    for database, command in recorder.commands:
        assert database == settings.mongo_db
        name = next(iter(command))
        for query in as_queries(name, command):
            queries.setdefault(query.key, query)
    assert any(c == "exports" for c, _ in queries)
    assert {c for c, _ in queries} >= {"exports", "entries", "markets", "campaigns"}

    async def indexed(command: Doc) -> tuple[bool, list[str]]:
        explained = await db.command({"explain": command, "verbosity": "queryPlanner"})
        found = stages(winning_plan(explained))
        return "COLLSCAN" not in found and bool(INDEX_STAGES & set(found)), found

    scanned: dict[tuple[str, str], list[str]] = {}
    by_clause: dict[tuple[str, str], str] = {}
    for key, query in queries.items():
        ok, found = await indexed(query.command)
        if ok:
            continue
        clause = await indexed_clause(query, indexed)
        if clause is not None:
            by_clause[key] = clause
            continue
        scanned[key] = found
    unexplained = {k: v for k, v in scanned.items() if k not in SCANS_ON_EMBEDDED_ONLY}
    assert not unexplained, "queries without an index:\n" + "\n".join(
        f"  {collection} {filter_shape}: {plan}"
        for (collection, filter_shape), plan in unexplained.items()
    )
    assert_sorts_served(queries)


# A market filter that an index does not bound, and why that is enough: (collection, field that
# the filter also pins) → reason.
MARKET_CHECKED_ON_FETCH = {
    ("codes", "waveDateKey"): "codeWaves reads one wave (one dateKey) through "
    "campaign_wave_assigned_id; a listed market is checked on each of that wave's codes",
}


def assert_sorts_served(queries: dict[tuple[str, str], Query]) -> None:
    """What SecantusDB's explain cannot show (it always sorts in memory), checked on the index
    definitions as MongoDB plans them: every sorted read of a source collection has an index
    that returns it in order without a sort stage, and a market-filtered read of codes or
    scoring (the joined types' sources, contract §12) has one that bounds the listed markets."""
    market_filtered: set[str] = set()
    for (collection, filter_shape), query in queries.items():
        if collection not in SOURCE_INDEXES or "sort" not in query.command:
            continue
        filter_, sort = query.command.get("filter", {}), query.command["sort"]
        bounds = [
            sorted_by(list(index.document["key"].items()), filter_, sort)
            for index in SOURCE_INDEXES[collection]
        ]
        served = [b for b in bounds if b is not None]
        assert served, f"no index returns {collection} {filter_shape} in {sort} order"
        if collection in {"codes", "scoring"} and "marketId" in filter_:
            market_filtered.add(collection)
            exempt = any((collection, f) in MARKET_CHECKED_ON_FETCH for f in filter_)
            wanted = point_fields(filter_) - ({"marketId"} if exempt else set())
            assert any(wanted <= bounded for bounded in served), (collection, filter_shape, served)
    # codeAssignments, codeWaves and waitlist with a market filter ran (and were checked).
    assert market_filtered == {"codes", "scoring"}
