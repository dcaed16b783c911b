"""Production at scale (issue 19): what the service sends to a replica set or a sharded cluster.

The service connects to the embedded server as a one-member replica set (`replicaSet=secantus`,
which it reports), so the driver sends read preferences and concerns exactly as it does to a
real replica set. A command listener records every command while one export of every type runs,
the API-side reads happen and a CCPA request deletes a user's exports; the assertions are on
what went over the wire.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymongo import monitoring

from export_service.ccpa.deletion import CcpaDeletion
from export_service.dev.seed import SeedPlan, seed
from export_service.exporters import EXPORTERS
from export_service.models import ExportStatus, ExportType
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import make_settings

Doc = dict[str, Any]
CAMPAIGN = "scale-campaign"
STALENESS = 120
SOURCE_PREFERENCE = {"mode": "secondaryPreferred", "maxStalenessSeconds": STALENESS}

# Source collections whose documents belong to one campaign: a cluster sharded by campaignId
# targets one shard only when the query leads with it.
CAMPAIGN_SCOPED = {"entries", "scoring", "codes", "sms_waves", "markets"}
READS = {"find", "aggregate", "count", "distinct"}
WRITES = {"insert", "update", "delete", "findAndModify"}
QUEUE_COLLECTIONS = {"exports", "ccpa_requests", "webhook_events"}


@dataclass
class Sent(monitoring.CommandListener):
    """Every command sent, tagged with the phase of the test that sent it."""

    phase: str = "setup"
    commands: list[tuple[str, str, Doc]] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = copy.deepcopy(dict(event.command))
        target = command.get(event.command_name)
        if isinstance(target, str):
            self.commands.append((self.phase, event.command_name, command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None

    def of(self, phase: str, names: set[str]) -> list[tuple[str, str, Doc]]:
        return [
            (name, command[name], command)
            for p, name, command in self.commands
            if p == phase and name in names
        ]


def leading_field(name: str, command: Doc) -> tuple[str | None, Any]:
    """The first field of a read's filter, and its value."""
    if name == "aggregate":
        stages = command.get("pipeline") or [{}]
        filter_ = stages[0].get("$match", {})
    elif name == "find":
        filter_ = command.get("filter", {})
    else:
        filter_ = command.get("query", {})
    if not filter_:
        return None, None
    first = next(iter(filter_))
    return first, filter_[first]


@pytest.fixture
def replica_settings(mongo_uri: str, s3_endpoint: str) -> Settings:
    uri = mongo_uri.replace("directConnection=true", "replicaSet=secantus")
    return make_settings(
        uri,
        s3_endpoint,
        source_read_preference="secondaryPreferred",
        source_max_staleness_seconds=STALENESS,
    )


@pytest.fixture
async def observed(replica_settings: Settings) -> AsyncIterator[tuple[Sent, Services]]:
    sent = Sent()
    async with Services.open(replica_settings, create_buckets=True, listeners=[sent]) as services:
        try:
            yield sent, services
        finally:
            await services.client.drop_database(replica_settings.mongo_db)


async def test_reads_writes_and_shard_targeting_of_every_export_type(
    observed: tuple[Sent, Services],
) -> None:
    sent, services = observed
    await seed(services.db, SeedPlan(campaign_id=CAMPAIGN, entries=120, markets=3))
    wave = await services.db["codes"].find_one({"waveDateKey": {"$ne": None}})
    assert wave is not None
    user = await services.db["entries"].find_one({"campaignId": CAMPAIGN})
    assert user is not None

    sent.phase = "api"
    for export_type in EXPORTERS:
        await services.repository.create(
            campaign_id=CAMPAIGN,
            campaign_name="Scale",
            export_type=export_type,
            requester_user_id="u",
            date_key=wave["waveDateKey"] if export_type is ExportType.CODE_WAVES else None,
            include_all_markets=None,
        )
    await services.repository.page(CAMPAIGN)
    sent.phase = "worker"
    done = await services.worker.drain()
    sent.phase = "ccpa"
    await CcpaDeletion(services.db, services.storage, services.repository).delete_user(
        user["userId"], requested_by="privacy"
    )
    sent.phase = "done"

    assert {e.export_type for e in done} == set(EXPORTERS)
    assert all(e.status is ExportStatus.FINISHED for e in done), [
        (e.export_type.value, e.error) for e in done if e.status is not ExportStatus.FINISHED
    ]

    # 1. Every exporter read of a source collection carries the source read preference; the
    # queue's reads go to the primary (no $readPreference at all) with majority read concern.
    worker_reads = sent.of("worker", READS)
    source_reads = [(n, c, cmd) for n, c, cmd in worker_reads if c not in QUEUE_COLLECTIONS]
    assert {c for _, c, _ in source_reads} >= CAMPAIGN_SCOPED | {"campaigns", "promoters"}
    wrong = [
        (n, c) for n, c, cmd in source_reads if cmd.get("$readPreference") != SOURCE_PREFERENCE
    ]
    assert not wrong, f"source reads without the source read preference: {sorted(set(wrong))}"

    queue_reads = [
        (n, c, cmd)
        for phase in ("api", "worker", "ccpa")
        for n, c, cmd in sent.of(phase, READS)
        if c in QUEUE_COLLECTIONS
    ]
    assert queue_reads
    for name, collection, command in queue_reads:
        assert "$readPreference" not in command, (name, collection)
        assert command.get("readConcern") == {"level": "majority"}, (name, collection)

    # 2. Every write of queue state is majority-acknowledged (claims, heartbeats, transitions,
    # CCPA's deletes and its audit record).
    queue_writes = [
        (n, c, cmd)
        for phase in ("api", "worker", "ccpa")
        for n, c, cmd in sent.of(phase, WRITES)
        if c in QUEUE_COLLECTIONS
    ]
    assert {c for _, c, _ in queue_writes} >= {"exports", "ccpa_requests"}
    for name, collection, command in queue_writes:
        assert command.get("writeConcern") == {"w": "majority"}, (name, collection)

    # 3. CCPA decides what to delete from the primary, not from a lagging secondary.
    ccpa_source = [(n, c, cmd) for n, c, cmd in sent.of("ccpa", READS) if c in CAMPAIGN_SCOPED]
    assert {c for _, c, _ in ccpa_source} == {"entries", "scoring", "codes", "sms_waves"}
    assert all("$readPreference" not in cmd for _, _, cmd in ccpa_source)

    # 4. Shard targeting: every exporter read of a campaign-scoped collection leads with
    # campaignId = this campaign; the campaign itself is read by its id.
    for name, collection, command in source_reads:
        first, value = leading_field(name, command)
        if collection in CAMPAIGN_SCOPED:
            assert (first, value) == ("campaignId", CAMPAIGN), (name, collection, command)
        elif collection == "campaigns":
            assert (first, value) == ("_id", CAMPAIGN), (name, collection, command)


async def test_every_driver_call_is_bounded(replica_settings: Settings) -> None:
    settings = replica_settings.model_copy(
        update={
            "mongo_socket_timeout_ms": 45_000,
            "mongo_max_pool_size": 7,
            "mongo_app_name": "export-service-test",
        }
    )
    async with Services.open(settings, create_buckets=False) as services:
        options = services.client.options
        assert options.pool_options.socket_timeout == 45
        assert options.pool_options.max_pool_size == 7
        assert options.server_selection_timeout == settings.mongo_timeout_ms / 1000
        assert options.pool_options.connect_timeout is not None
        assert options.retry_writes and options.retry_reads
        hello = await services.db.command("hello")
        assert hello["ok"] == 1
        assert options.pool_options.metadata["application"]["name"] == "export-service-test"
        await services.client.drop_database(settings.mongo_db)
