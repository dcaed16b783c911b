"""Queue position and ETA (contract §9) in API answers, over the real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo import monitoring

from export_service.app.factory import create_app
from export_service.models import Export, ExportStatus, ExportType, utcnow
from export_service.queue.estimates import Durations, queue_views
from export_service.settings import Settings
from tests.support.app import app_services, auth, make_settings
from tests.support.data import CAMPAIGN, add_campaign, entry
from tests.support.gates import Gate, until

Client = TestClient[Any, Any]
OTHER = "camp-2"


def url(campaign: str = CAMPAIGN) -> str:
    return f"/campaigns/{campaign}/exports"


async def post(client: Client, campaign: str, export_type: str, **extra: Any) -> dict[str, Any]:
    resp = await client.post(
        url(campaign), json={"exportType": export_type, **extra}, headers=auth([campaign])
    )
    assert resp.status == 202
    return dict(await resp.json())


async def add_history(client: Client, export_type: str, seconds: list[float]) -> None:
    """Finished exports of another campaign with these run durations."""
    now = utcnow()
    await (
        app_services(client)
        .db["exports"]
        .insert_many(
            [
                {
                    "_id": f"hist-{export_type}-{i}",
                    "campaignId": "history",
                    "exportType": export_type,
                    "status": "FINISHED",
                    "requesterUserId": "u",
                    "date": {
                        "created": now - timedelta(hours=1, seconds=i),
                        "triggered": now - timedelta(hours=1),
                        "finished": now - timedelta(hours=1) + timedelta(seconds=s),
                    },
                    "progress": {"processed": 1},
                }
                for i, s in enumerate(seconds)
            ]
        )
    )


async def test_positions_count_every_campaign_but_show_only_the_number(client: Client) -> None:
    services = app_services(client)
    for campaign in (CAMPAIGN, OTHER):
        await add_campaign(services.db, campaign)
    await add_history(client, "codes", [8, 10, 50])  # median 10 s
    await add_history(client, "codeWaves", [5])
    await post(client, OTHER, "codes")
    await post(client, OTHER, "scoring")  # no history: every ETA behind it is unknown
    mine = [
        await post(client, CAMPAIGN, "codes"),
        await post(client, CAMPAIGN, "codeWaves", dateKey="20260101"),
    ]
    assert [m["queue"]["position"] for m in mine] == [3, 4]
    listed = await (await client.get(url(), headers=auth([CAMPAIGN]))).json()
    assert [e["queue"] for e in listed["exports"]] == [
        {"position": 4, "etaSeconds": None},
        {"position": 3, "etaSeconds": None},
    ]
    # The other campaign's scoring export goes: positions move up, ETAs become known.
    await services.db["exports"].delete_one({"campaignId": OTHER, "exportType": "scoring"})
    one = await (await client.get(f"{url()}/{mine[1]['id']}", headers=auth([CAMPAIGN]))).json()
    assert one["queue"] == {"position": 3, "etaSeconds": 20.0}  # two codes runs of 10 s ahead
    first = await (await client.get(url(OTHER), headers=auth([OTHER]))).json()
    assert first["exports"][0]["queue"] == {"position": 1, "etaSeconds": 0.0}
    # Nothing else of the queue is in an answer: the view has exactly the two numbers.
    assert set(one["queue"]) == {"position", "etaSeconds"}
    assert OTHER not in str(listed) and "hist-" not in str(listed)
    # Claimed: no queue view any more.
    done = await services.worker.process()
    assert done is not None and done.campaign_id == OTHER
    again = await (await client.get(url(), headers=auth([CAMPAIGN]))).json()
    assert [e["queue"]["position"] for e in again["exports"]] == [2, 1]


@dataclass
class Counter(monitoring.CommandListener):
    on: bool = False
    commands: list[str] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on and event.command_name in {"find", "aggregate", "count"}:
            target = event.command.get(event.command_name)
            self.commands.append(f"{event.command_name} {target}")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@pytest.fixture
def counter() -> Iterator[Counter]:
    # pymongo has no unregister: a listener for clients made from now on, left switched off.
    listener = Counter()
    monitoring.register(listener)
    yield listener
    listener.on = False


async def test_a_list_costs_one_query_more_whatever_the_number_of_pending(
    settings: Settings, counter: Counter
) -> None:
    app = create_app(settings, run_worker=False, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        try:
            await add_campaign(app_services(client).db)
            for day in range(1, 9):
                await post(client, CAMPAIGN, "codeWaves", dateKey=f"202601{day:02d}")
            await client.get(url(), headers=auth([CAMPAIGN]))  # reads the history once
            counter.on = True
            listed = await (await client.get(url(), headers=auth([CAMPAIGN]))).json()
            counter.on = False
            assert [e["queue"]["position"] for e in listed["exports"]] == list(range(8, 0, -1))
            assert counter.commands == ["find exports", "find exports"]  # the page, the queue
        finally:
            await app_services(client).client.drop_database(settings.mongo_db)


async def test_a_running_export_with_a_total_has_a_progress_eta(
    mongo_uri: str, s3_endpoint: str
) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, progress_interval_millis=20, batch_size=10)
    app = create_app(settings, run_worker=False, create_buckets=True)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        services = app_services(client)
        try:
            await add_campaign(services.db)
            await services.db["entries"].insert_many(
                [entry(f"e{i:03d}", f"u{i:03d}") for i in range(40)]
            )
            created = await post(client, CAMPAIGN, "entries")
            gate = Gate()
            services.worker.batch_hook = gate
            run = asyncio.create_task(services.worker.process())
            await gate.reached.wait()

            async def progressed() -> dict[str, Any] | None:
                got = await client.get(f"{url()}/{created['id']}", headers=auth([CAMPAIGN]))
                body: dict[str, Any] = await got.json()
                return body if body["progress"].get("processed") else None

            await until("progress to be written", progressed)
            body = await progressed()
            assert body is not None and body["status"] == "TRIGGERED"
            assert body["progress"]["total"] == 40 and body["progress"]["processed"] == 10
            assert body["progress"]["etaSeconds"] >= 0 and "queue" not in body
            gate.release.set()
            finished = await run
            assert finished is not None and finished.status is ExportStatus.FINISHED
            final = await (
                await client.get(f"{url()}/{created['id']}", headers=auth([CAMPAIGN]))
            ).json()
            assert "etaSeconds" not in final["progress"]
        finally:
            gate.release.set()
            await services.client.drop_database(settings.mongo_db)


def _export(i: int, status: ExportStatus, export_type: ExportType, **extra: Any) -> Export:
    now = utcnow()
    return Export(
        id=f"x{i}", campaign_id="c", campaign_name="", export_type=export_type, status=status,
        requester_user_id="u", date={"created": now - timedelta(seconds=100 - i), **extra},
    )  # fmt: skip


def test_eta_adds_the_running_export_left_and_each_type_median_shared_by_slots() -> None:
    now = utcnow()
    running = _export(
        0, ExportStatus.TRIGGERED, ExportType.ENTRIES, triggered=now - timedelta(seconds=30)
    )
    running.progress = {"total": 400, "processed": 100}  # 30 s for 100 rows: 90 s left
    queue = [
        running,
        _export(1, ExportStatus.PENDING, ExportType.CODES),
        _export(2, ExportStatus.PENDING, ExportType.SCORING),
        _export(3, ExportStatus.PENDING, ExportType.CODES),
    ]
    durations = Durations({ExportType.CODES: 10.0, ExportType.SCORING: 20.0})
    views = queue_views(queue[1:], queue, durations, slots=1, now=now)
    assert views == {
        "x1": {"position": 1, "etaSeconds": 90.0},
        "x2": {"position": 2, "etaSeconds": 100.0},
        "x3": {"position": 3, "etaSeconds": 120.0},
    }
    assert queue_views(queue[3:], queue, durations, slots=2, now=now)["x3"]["etaSeconds"] == 60.0
    unknown = queue_views(queue[1:], queue, Durations({ExportType.CODES: 10.0}), slots=1, now=now)
    assert unknown["x2"]["etaSeconds"] == 100.0 and unknown["x3"]["etaSeconds"] is None
