"""Filters and the cut (contract §12) over the real servers: requests, rows of every family of
types that reads entries, and an export that stays a clean cut while entries are inserted."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from datetime import datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from export_service.exporters import EXPORTERS
from export_service.filters import FILTERABLE_TYPES, request_filters
from export_service.models import ExportStatus, ExportType
from export_service.runtime import Services
from tests.support.app import app_services, auth, make_settings
from tests.support.data import CAMPAIGN, T0, add_campaign, entry, snapshot
from tests.support.gates import Gate
from tests.support.s3 import download

Client = TestClient[Any, Any]
Doc = dict[str, Any]
URL = f"/campaigns/{CAMPAIGN}/exports"
M1, M2, M3 = f"{CAMPAIGN}-m1", f"{CAMPAIGN}-m2", f"{CAMPAIGN}-m3"
P1, P2 = "prom-1", "prom-2"


def at(minutes: int) -> datetime:
    moment: datetime = T0 + timedelta(minutes=minutes)
    return moment


def iso_z(value: datetime) -> str:
    return value.isoformat() + "Z"


async def seed_campaign(db: Any) -> None:
    """Three markets (two promoters); entries an hour apart, each user in one or two markets."""
    await add_campaign(
        db,
        markets=[
            {"_id": M1, "name": "Chicago", "promoterIds": [P1]},
            {"_id": M2, "name": "Dublin", "promoterIds": [P2]},
            {"_id": M3, "name": "Cork", "promoterIds": [P2]},
        ],
    )
    await db["promoters"].insert_many([{"_id": P1, "name": "P1"}, {"_id": P2, "name": "P2"}])
    yes = {"allowMarketing": True, "allowPromoter": True}
    await db["entries"].insert_many(
        [
            # u1: M1 at 0, then M2 at 60 (with M3 as an additional market).
            entry("e1", "u1", market_id=M1, created=at(0), optIns=yes, verified=True),
            entry("e2", "u1", market_id=M2, created=at(60), optIns=yes, additionalMarkets=[M3]),
            # u2: M2 only, at 120.
            entry("e3", "u2", market_id=M2, created=at(120), optIns=yes, verified=True),
            # u3: M3 at 180, additional M1.
            entry("e4", "u3", market_id=M3, created=at(180), additionalMarkets=[M1]),
        ]
    )


async def post(client: Client, body: Doc) -> tuple[int, Doc]:
    resp = await client.post(URL, json=body, headers=auth([CAMPAIGN]))
    return resp.status, await resp.json()


async def run(
    client: Client, body: Doc
) -> tuple[Doc, list[list[str]] | dict[str, list[list[str]]]]:
    """Request an export through the API, run it, and read its file (a ZIP as name → rows)."""
    status, answer = await post(client, body)
    assert status == 202, answer
    services = app_services(client)
    (done,) = await services.worker.drain()
    assert done.status is ExportStatus.FINISHED, done.error
    view = await (await client.get(f"{URL}/{done.id}", headers=auth([CAMPAIGN]))).json()
    (stored,) = done.files
    data = await download(services.storage, stored.bucket, stored.key)
    if stored.key.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return view, {
                name: list(csv.reader(io.StringIO(archive.read(name).decode())))[1:]
                for name in archive.namelist()
            }
    return view, list(csv.reader(io.StringIO(data.decode())))[1:]


def test_the_filterable_types_are_those_whose_rows_come_from_entries() -> None:
    reading = {t for t, spec in EXPORTERS.items() if spec.source.collection == "entries"}
    assert reading == FILTERABLE_TYPES


async def test_bad_filters_are_400_and_write_nothing(client: Client) -> None:
    db = app_services(client).db
    await seed_campaign(db)
    before = await snapshot(db)
    bad: list[tuple[Doc, str]] = [
        ({"marketIds": ["nope"]}, "MarketNotFound"),
        ({"marketIds": [M1, "other-campaign-market"]}, "MarketNotFound"),
        ({"marketIds": []}, "BadRequest"),
        ({"marketIds": [f"m{i}" for i in range(101)]}, "BadRequest"),
        ({"marketIds": [M1, M1]}, "BadRequest"),
        ({"marketIds": [{"$gt": ""}]}, "BadRequest"),
        ({"marketIds": M1}, "BadRequest"),
        ({"createdFrom": "yesterday"}, "BadRequest"),
        ({"createdFrom": "2026-11-23T10:00:00"}, "BadRequest"),  # no time zone
        ({"createdFrom": "2026-02-30T10:00:00Z"}, "BadRequest"),
        ({"createdFrom": 1764000000000}, "BadRequest"),
        ({"createdFrom": "2026-11-23T10:00:00Z", "createdTo": "2026-11-23T10:00:00Z"}, "BadRequest"),
        ({"createdFrom": "2026-11-23T11:00:00Z", "createdTo": "2026-11-23T12:00:00+02:00"}, "BadRequest"),
        ({"marketIds": [M1], "campaignId": "x"}, "BadRequest"),
    ]  # fmt: skip
    for filters, code in bad:
        status, answer = await post(client, {"exportType": "entries", "filters": filters})
        assert status == 400, (filters, answer)
        assert answer["error"]["payload"]["code"] == code, (filters, answer)
    # Types whose rows do not come from entries take no filters.
    for export_type in set(ExportType) - FILTERABLE_TYPES:
        body: Doc = {"exportType": export_type.value, "filters": {"marketIds": [M1]}}
        if export_type is ExportType.CODE_WAVES:
            body["dateKey"] = "20261123"
        status, answer = await post(client, body)
        assert status == 400, (export_type, answer)
        assert "filters do not apply" in json.dumps(answer)
    assert await snapshot(db) == before


async def test_filters_are_stored_answered_and_deduped(client: Client) -> None:
    db = app_services(client).db
    await seed_campaign(db)
    filters = {"marketIds": [M2, M1], "createdFrom": "2026-11-23T12:00:00.0001+02:00"}
    status, first = await post(client, {"exportType": "fanlist", "filters": filters})
    assert status == 202, first
    # Sorted set; the date in UTC, rounded up to the millisecond entries are stored in.
    expected = {"marketIds": [M1, M2], "createdFrom": "2026-11-23T10:00:00.001Z"}
    assert first["filters"] == expected
    stored = await db["exports"].find_one({"_id": first["id"]})
    assert stored is not None
    assert stored["filters"] == {
        "marketIds": [M1, M2],
        "createdFrom": at(0) + timedelta(milliseconds=1),
    }
    # The same filters written otherwise are the same export.
    same = {"marketIds": [M1, M2], "createdFrom": "2026-11-23T10:00:00.001Z"}
    status, again = await post(client, {"exportType": "fanlist", "filters": same})
    assert (status, again["id"]) == (200, first["id"])
    # Other filters, or none, are other exports; `{}` is no filter at all.
    status, other = await post(client, {"exportType": "fanlist", "filters": {"marketIds": [M1]}})
    assert status == 202 and other["id"] != first["id"]
    status, plain = await post(client, {"exportType": "fanlist"})
    assert status == 202 and "filters" not in plain
    status, empty = await post(client, {"exportType": "fanlist", "filters": {}})
    assert (status, empty["id"]) == (200, plain["id"])
    # An export without filters keeps the dedupe key it had before filters existed.
    doc = await db["exports"].find_one({"_id": plain["id"]})
    assert doc is not None and doc["dedupeKey"] == "\x1f".join([CAMPAIGN, "fanlist", "", "0"])


async def test_single_cursor_types_follow_the_filters(client: Client) -> None:
    await seed_campaign(app_services(client).db)
    window = {"createdFrom": iso_z(at(30)), "createdTo": iso_z(at(180))}
    view, rows = await run(client, {"exportType": "entries", "filters": window})
    assert [r[0] for r in rows] == ["e2", "e3"]
    assert view["count"] == view["progress"]["total"] == 2

    view, rows = await run(client, {"exportType": "entries", "filters": {"marketIds": [M2]}})
    assert [r[0] for r in rows] == ["e2", "e3"]
    assert view["count"] == view["progress"]["total"] == 2

    # includeAllMarkets: an additional market in the list yields its row, the others do not.
    body = {"exportType": "entries", "includeAllMarkets": True, "filters": {"marketIds": [M1]}}
    view, rows = await run(client, body)
    assert [(r[0], r[9]) for r in rows] == [("e1", M1), ("e4", M1)]
    assert view["count"] == view["progress"]["total"] == 2

    view, rows = await run(
        client, {"exportType": "verifiedEntries", "filters": {"marketIds": [M2], **window}}
    )
    assert [r[0] for r in rows] == ["e3"]
    assert view["count"] == view["progress"]["total"] == 1


async def test_entries_filters_hold_in_the_encoder_processes(
    mongo_uri: str, s3_endpoint: str
) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, encoder_processes=2, batch_size=1)
    async with Services.open(settings, create_buckets=True) as services:
        try:
            assert services.encoders is not None
            await seed_campaign(services.db)
            await services.repository.create(
                campaign_id=CAMPAIGN,
                campaign_name="Tour",
                export_type=ExportType.ENTRIES,
                requester_user_id="u",
                date_key=None,
                include_all_markets=True,
                filters=request_filters([M3], None, None),
            )
            (done,) = await services.worker.drain()
            assert done.status is ExportStatus.FINISHED, done.error
            assert services.encoders.pids  # the batches went through the children
            (stored,) = done.files
            data = await download(services.storage, stored.bucket, stored.key)
            rows = list(csv.reader(io.StringIO(data.decode())))[1:]
            assert [(r[0], r[9]) for r in rows] == [("e2", M3), ("e4", M3)]
            assert done.count == done.progress["total"] == 2
        finally:
            await services.client.drop_database(settings.mongo_db)


async def test_per_user_types_follow_the_filters(client: Client) -> None:
    await seed_campaign(app_services(client).db)
    # u1 qualifies through its M2 entry; its contact fields come from that entry, not e1.
    _, rows = await run(client, {"exportType": "fanlist", "filters": {"marketIds": [M2]}})
    assert [r[0] for r in rows] == ["u1", "u2"]
    window = {"createdFrom": iso_z(at(60)), "createdTo": iso_z(at(121))}
    _, rows = await run(client, {"exportType": "artistOptIn", "filters": window})
    assert [r[0] for r in rows] == ["u1", "u2"]
    _, rows = await run(client, {"exportType": "artistOptIn", "filters": {"marketIds": [M3]}})
    assert rows == []  # u3 never opted in


async def test_partitioned_types_follow_the_filters(client: Client) -> None:
    await seed_campaign(app_services(client).db)
    window = {"createdFrom": iso_z(at(100))}
    view, files = await run(client, {"exportType": "reminderEmail", "filters": window})
    assert isinstance(files, dict)
    assert sorted(r[0] for rows in files.values() for r in rows) == [
        "u2@example.com",
        "u3@example.com",
    ]
    assert view["count"] == 2
    _, files = await run(
        client, {"exportType": "promoterEmailOptIn", "filters": {"marketIds": [M1]}}
    )
    assert isinstance(files, dict)
    assert {name: [r[0] for r in rows] for name, rows in files.items()} == {
        f"{P1}.csv": ["u1"],
        f"{P2}.csv": [],
    }


async def test_an_export_is_a_cut_at_its_start(mongo_uri: str, s3_endpoint: str) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, batch_size=1)
    async with Services.open(settings, create_buckets=True) as services:
        try:
            await seed_campaign(services.db)
            gate = Gate()
            services.worker.batch_hook = gate
            export, _ = await services.repository.create(
                campaign_id=CAMPAIGN,
                campaign_name="Tour",
                export_type=ExportType.ENTRIES,
                requester_user_id="u",
                date_key=None,
                include_all_markets=None,
            )
            running = asyncio.create_task(services.worker.drain())
            await asyncio.wait_for(gate.reached.wait(), 20)
            # Mid-run (the count is taken, one row written): entries created after the start.
            doc = await services.db["exports"].find_one({"_id": export.id})
            assert doc is not None
            after = doc["date"]["triggered"] + timedelta(milliseconds=1)
            late = [entry(f"late-{i}", f"ul{i}", market_id=M1, created=after) for i in range(3)]
            await services.db["entries"].insert_many(late)
            gate.release.set()
            (done,) = await running
            assert done.status is ExportStatus.FINISHED, done.error
            assert done.count == done.progress["total"] == 4
            (stored,) = done.files
            data = await download(services.storage, stored.bucket, stored.key)
            ids = [r[0] for r in list(csv.reader(io.StringIO(data.decode())))[1:]]
            assert ids == ["e1", "e2", "e3", "e4"]
            assert export.id == done.id
        finally:
            await services.client.drop_database(settings.mongo_db)
