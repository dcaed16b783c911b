"""Filters and the cut (contract §12) over the real servers: requests, rows of every family of
types that reads entries (single-cursor, per-user, partitioned and joined), and an export that
stays a clean cut while entries are inserted."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.dev.seed import SeedPlan, seed
from export_service.exporters import EXPORTERS
from export_service.filters import FILTERABLE_TYPES, request_filters
from export_service.models import ExportFilters, ExportStatus, ExportType
from export_service.runtime import Services
from tests.support import joined
from tests.support.app import app_services, auth, make_settings
from tests.support.data import CAMPAIGN, T0, add_campaign, entry, queue_exports, snapshot
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


JOINED = (ExportType.CODE_ASSIGNMENTS, ExportType.CODE_WAVES, ExportType.WAITLIST)


def test_the_filterable_types_are_those_that_read_entries() -> None:
    # Rows from entries, or rows from codes / scoring joined to entries (contract §6 `Markets`:
    # every type reading entries needs markets).
    from_entries = {t for t, spec in EXPORTERS.items() if spec.source.collection == "entries"}
    reading = {t for t, spec in EXPORTERS.items() if spec.needs_markets}
    assert reading == FILTERABLE_TYPES == from_entries | set(JOINED)
    assert set(ExportType) - FILTERABLE_TYPES == {ExportType.CODES, ExportType.SCORING}


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
    # Types that read no entries (codes, scoring) take no filters.
    for export_type in set(ExportType) - FILTERABLE_TYPES:
        body: Doc = {"exportType": export_type.value, "filters": {"marketIds": [M1]}}
        status, answer = await post(client, body)
        assert status == 400, (export_type, answer)
        assert "filters do not apply" in json.dumps(answer)
    # The joined types validate their filters like the others.
    for export_type in JOINED:
        for filters, code in bad[:2] + bad[-3:]:
            body = {"exportType": export_type.value, "dateKey": "20261123", "filters": filters}
            if export_type is not ExportType.CODE_WAVES:
                del body["dateKey"]
            status, answer = await post(client, body)
            assert status == 400, (export_type, filters, answer)
            assert answer["error"]["payload"]["code"] == code, (export_type, filters, answer)
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
            (export,) = await queue_exports(services, 1, ExportType.ENTRIES)
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


WAVE = "20261124"


async def seed_joined(db: Any) -> None:
    """`seed_campaign` plus codes, scoring records and a SCHEDULED wave for the joined types.

    u1's two entries carry different emails (e1 at 0 in M1, e2 at 60 in M2); u3 entered M3 only
    (M1 as an additional market); u4 is in a SCHEDULED wave; u5's only entry is dated after any
    export's start; u9 has no entry.
    """
    await seed_campaign(db)
    await db["entries"].update_one({"_id": "e2"}, {"$set": {"fields.email": "u1.m2@example.com"}})
    await db["entries"].insert_many(
        [
            entry("e10", "u4", market_id=M1, created=at(30)),
            entry("e9", "u5", market_id=M1, created=datetime(2100, 1, 1)),
        ]
    )

    def code(code_id: str, market: str, user: str | None, wave: str | None = WAVE) -> Doc:
        return {
            "_id": code_id,
            "campaignId": CAMPAIGN,
            "code": code_id.upper(),
            "marketId": market,
            "type": "presale",
            "status": "ASSIGNED" if user else "AVAILABLE",
            "assignedTo": user,
            "waveDateKey": wave if user else None,
            "date": {"assigned": at(600)} if user else {},
        }

    await db["codes"].insert_many(
        [
            code("c1", M2, "u1"),
            code("c2", M1, "u1"),
            code("c3", M1, "u3", "20261125"),
            code("c4", M2, "u2", "20261125"),
            code("c5", M2, None),
            code("c6", M1, "u5"),
            code("c7", M1, "u9"),
        ]
    )

    def record(record_id: str, user: str, market: str, selected: bool = False) -> Doc:
        return {
            "_id": record_id,
            "campaignId": CAMPAIGN,
            "userId": user,
            "entryId": "",
            "marketId": market,
            "score": 1.5,
            "rank": 1,
            "selected": selected,
        }

    await db["scoring"].insert_many(
        [
            record("s1", "u1", M2),
            record("s2", "u1", M1),
            record("s3", "u2", M2),
            record("s4", "u3", M3),
            record("s5", "u2", M2, selected=True),
            record("s6", "u4", M1),
            record("s7", "u5", M1),
        ]
    )
    await db["sms_waves"].insert_one(
        {"_id": "w1", "campaignId": CAMPAIGN, "status": "SCHEDULED", "memberIds": ["u4"]}
    )


def cells(rows: Any, *columns: int) -> list[tuple[str, ...]]:
    assert isinstance(rows, list)
    return [tuple(r[c] for c in columns) for r in rows]


async def test_code_assignments_follow_the_filters(client: Client) -> None:
    await seed_joined(app_services(client).db)
    body: Doc = {"exportType": "codeAssignments", "filters": {"marketIds": [M2]}}
    view, rows = await run(client, body)
    # Codes of M2 whose user has an M2 entry; u1's email is its M2 entry's, not its earliest.
    assert cells(rows, 0, 1, 2, 3) == [
        ("C1", "u1", "u1.m2@example.com", M2),
        ("C4", "u2", "u2@example.com", M2),
    ]
    assert view["count"] == view["progress"]["total"] == 2
    # From minute 30 on, whatever the market: u5's entry (after the start) is cut, u9 has none.
    body = {"exportType": "codeAssignments", "filters": {"createdFrom": iso_z(at(30))}}
    view, rows = await run(client, body)
    assert cells(rows, 0, 1, 2) == [
        ("C1", "u1", "u1.m2@example.com"),
        ("C2", "u1", "u1.m2@example.com"),
        ("C4", "u2", "u2@example.com"),
        ("C3", "u3", "u3@example.com"),
    ]
    assert view["count"] == view["progress"]["total"] == 4
    # Both: M1 codes of users with an M1 entry in [0, 30): u1 (e1); u3's M1 is only additional.
    window = {"createdFrom": iso_z(at(0)), "createdTo": iso_z(at(30))}
    body = {"exportType": "codeAssignments", "filters": {"marketIds": [M1], **window}}
    view, rows = await run(client, body)
    assert cells(rows, 0, 1, 2, 3, 4) == [("C2", "u1", "u1@example.com", M1, "Chicago")]
    assert view["count"] == view["progress"]["total"] == 1


async def test_code_waves_follow_the_filters(client: Client) -> None:
    await seed_joined(app_services(client).db)
    body: Doc = {"exportType": "codeWaves", "dateKey": WAVE, "filters": {"marketIds": [M2]}}
    view, rows = await run(client, body)
    assert cells(rows, 0, 1, 2) == [("C1", "u1", "u1.m2@example.com")]
    assert view["count"] == view["progress"]["total"] == 1
    body = {"exportType": "codeWaves", "dateKey": WAVE, "filters": {"createdTo": iso_z(at(30))}}
    view, rows = await run(client, body)
    assert cells(rows, 0, 1, 2) == [("C1", "u1", "u1@example.com"), ("C2", "u1", "u1@example.com")]
    assert view["count"] == view["progress"]["total"] == 2
    window = {"createdFrom": iso_z(at(60)), "createdTo": iso_z(at(200))}
    body = {
        "exportType": "codeWaves",
        "dateKey": "20261125",
        "filters": {"marketIds": [M1], **window},
    }
    view, rows = await run(client, body)
    assert rows == []  # C3 is u3's, who has no M1 entry
    assert view["count"] == view["progress"]["total"] == 0


async def test_waitlist_follows_the_filters(client: Client) -> None:
    await seed_joined(app_services(client).db)
    view, rows = await run(client, {"exportType": "waitlist", "filters": {"marketIds": [M2]}})
    assert cells(rows, 0, 1, 5) == [("u1", "u1.m2@example.com", M2), ("u2", "u2@example.com", M2)]
    assert view["count"] == view["progress"]["total"] == 2
    # u4 is SCHEDULED, u5's entry is after the start.
    body: Doc = {"exportType": "waitlist", "filters": {"createdFrom": iso_z(at(30))}}
    view, rows = await run(client, body)
    assert cells(rows, 0, 1, 5) == [
        ("u1", "u1.m2@example.com", M2),
        ("u1", "u1.m2@example.com", M1),
        ("u2", "u2@example.com", M2),
        ("u3", "u3@example.com", M3),
    ]
    assert view["count"] == view["progress"]["total"] == 4
    window = {"createdFrom": iso_z(at(0)), "createdTo": iso_z(at(30))}
    body = {"exportType": "waitlist", "filters": {"marketIds": [M1], **window}}
    view, rows = await run(client, body)
    assert cells(rows, 0, 1, 5, 6) == [("u1", "u1@example.com", M1, "Chicago")]
    assert view["count"] == view["progress"]["total"] == 1


async def test_joined_types_dedupe_on_their_filters(client: Client) -> None:
    await seed_joined(app_services(client).db)
    for export_type in JOINED:
        base: Doc = {"exportType": export_type.value}
        if export_type is ExportType.CODE_WAVES:
            base["dateKey"] = WAVE
        status, first = await post(client, {**base, "filters": {"marketIds": [M2, M1]}})
        assert status == 202, first
        assert first["filters"] == {"marketIds": [M1, M2]}
        status, again = await post(client, {**base, "filters": {"marketIds": [M1, M2]}})
        assert (status, again["id"]) == (200, first["id"])
        dated = {"marketIds": [M1, M2], "createdFrom": "2026-11-23T11:00:00+01:00"}
        status, other = await post(client, {**base, "filters": dated})
        assert status == 202 and other["id"] != first["id"], other
        assert other["filters"]["createdFrom"] == "2026-11-23T10:00:00.000Z"
        status, same = await post(
            client, {**base, "filters": {"marketIds": [M2, M1], "createdFrom": iso_z(at(0))}}
        )
        assert (status, same["id"]) == (200, other["id"])
        status, plain = await post(client, base)
        assert status == 202 and plain["id"] not in {first["id"], other["id"]}
    # Another wave with the same filters is another export.
    body = {"exportType": "codeWaves", "dateKey": "20261125", "filters": {"marketIds": [M1, M2]}}
    status, wave = await post(client, body)
    assert status == 202, wave


# The filters of the seeded comparison, picked from the seeded data (see `seeded_filters`).
KINDS = ("market", "dates", "both")


async def seeded_filters(db: Any, kind: str) -> ExportFilters:
    """A market of the seeded campaign and/or the middle half of its entries' dates."""
    market = await db["markets"].find_one({"campaignId": CAMPAIGN}, sort=[("_id", 1)])
    assert market is not None
    created = sorted([e["date"]["created"] async for e in db["entries"].find({}, {"date": 1})])
    start, end = created[len(created) // 4], created[3 * len(created) // 4]
    markets = [market["_id"]] if kind in {"market", "both"} else None
    dates = (
        (start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)) if kind != "market" else (None, None)
    )
    filters = request_filters(markets, *dates)
    assert filters is not None
    return filters


def as_body(export_type: ExportType, filters: ExportFilters | None, date_key: str | None) -> Doc:
    body: Doc = {"exportType": export_type.value}
    if date_key is not None:
        body["dateKey"] = date_key
    if filters is not None:
        body["filters"] = {
            k: iso_z(v) if isinstance(v, datetime) else v for k, v in filters.to_doc().items()
        }
    return body


async def expected_rows(
    db: Any,
    export_type: ExportType,
    filters: ExportFilters | None,
    cut: datetime,
    date_key: str | None,
) -> list[list[str]]:
    """The rows computed from every seeded document (tests/support/joined.py)."""
    everything = {
        name: [doc async for doc in db[name].find({})]
        for name in ("entries", "codes", "scoring", "sms_waves")
    }
    names = {m["_id"]: m.get("name") or "" async for m in db["markets"].find({})}
    if export_type is ExportType.WAITLIST:
        return joined.waitlist_rows(
            everything["scoring"], everything["sms_waves"], everything["entries"], names,
            CAMPAIGN, filters, cut,
        )  # fmt: skip
    return joined.assignment_rows(
        everything["codes"], everything["entries"], names, CAMPAIGN, filters, cut, date_key
    )


async def seeded_run(
    client: Client, export_type: ExportType, filters: ExportFilters | None
) -> tuple[list[list[str]], Doc, list[list[str]], list[list[str]]]:
    """Run `export_type` on the seeded campaign: its rows, its answer, the rows computed for
    its filters and those computed without filters (both cut at its start)."""
    db = app_services(client).db
    date_key = None
    if export_type is ExportType.CODE_WAVES:
        wave = await db["codes"].find_one({"waveDateKey": {"$ne": None}}, sort=[("_id", 1)])
        assert wave is not None
        date_key = wave["waveDateKey"]
    view, rows = await run(client, as_body(export_type, filters, date_key))
    assert isinstance(rows, list)
    stored = await db["exports"].find_one({"_id": view["id"]})
    assert stored is not None
    cut = stored["date"]["triggered"]
    expected = await expected_rows(db, export_type, filters, cut, date_key)
    unfiltered = await expected_rows(db, export_type, None, cut, date_key)
    return rows, view, expected, unfiltered


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("export_type", JOINED, ids=lambda t: t.value)
async def test_joined_rows_equal_the_rows_computed_from_the_seed(
    client: Client, export_type: ExportType, kind: str
) -> None:
    db = app_services(client).db
    await seed(db, SeedPlan(campaign_id=CAMPAIGN, entries=300, markets=3))
    filters = await seeded_filters(db, kind)
    rows, view, expected, unfiltered = await seeded_run(client, export_type, filters)
    assert rows == expected
    assert view["count"] == view["progress"]["total"] == len(rows)
    # The filters did select: some rows, and fewer than without filters.
    assert 0 < len(rows) < len(unfiltered)


async def test_the_computed_rows_equal_the_unfiltered_joined_exports(client: Client) -> None:
    # The reference itself, checked where the exporters were already right.
    await seed(app_services(client).db, SeedPlan(campaign_id=CAMPAIGN, entries=300, markets=3))
    for export_type in JOINED:
        rows, view, _, unfiltered = await seeded_run(client, export_type, None)
        assert rows == unfiltered and rows, export_type
        assert view["count"] == view["progress"]["total"] == len(rows)


async def test_a_filtered_joined_export_is_a_cut_at_its_start(
    mongo_uri: str, s3_endpoint: str
) -> None:
    settings = make_settings(mongo_uri, s3_endpoint, batch_size=1)
    async with Services.open(settings, create_buckets=True) as services:
        try:
            await seed_joined(services.db)
            gate = Gate()
            services.worker.batch_hook = gate
            filters = request_filters(None, at(30).replace(tzinfo=UTC), None)
            (export,) = await queue_exports(
                services, 1, ExportType.CODE_ASSIGNMENTS, filters=filters
            )
            running = asyncio.create_task(services.worker.drain())
            await asyncio.wait_for(gate.reached.wait(), 20)
            # Mid-run (counted, one row written): entries that would make u5 and u9 qualify.
            doc = await services.db["exports"].find_one({"_id": export.id})
            assert doc is not None
            after = doc["date"]["triggered"] + timedelta(milliseconds=1)
            late = [entry(f"late-{u}", u, market_id=M1, created=after) for u in ("u5", "u9")]
            await services.db["entries"].insert_many(late)
            gate.release.set()
            (done,) = await running
            assert done.status is ExportStatus.FINISHED, done.error
            assert done.count == done.progress["total"] == 4
            (stored,) = done.files
            data = await download(services.storage, stored.bucket, stored.key)
            codes = [r[0] for r in list(csv.reader(io.StringIO(data.decode())))[1:]]
            assert codes == ["C1", "C2", "C4", "C3"]
        finally:
            await services.client.drop_database(settings.mongo_db)
