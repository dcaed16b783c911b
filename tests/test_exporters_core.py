"""entries, codes and scoring end to end: the files on S3, byte for byte."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import aiohttp

from export_service.models import ExportStatus, ExportType
from export_service.runtime import Services
from tests.support.data import CAMPAIGN, T0, add_campaign, entry, run_export
from tests.support.s3 import download

HEADER = (
    "entry_id,user_id,email,first_name,last_name,phone,postal_code,country_code,locale,"
    "market_id,market_name,created_at"
)


run = run_export
body_of = download


async def grants(services: Services, bucket: str, key: str) -> list[dict[str, Any]]:
    answer = await services.storage.client.get_object_acl(Bucket=bucket, Key=key)
    return [dict(g) for g in answer["Grants"]]


async def test_entries_file_byte_for_byte(services: Services) -> None:
    await add_campaign(
        services.db,
        preferences=[{"id": "fav_song", "label": "Favourite song"}, {"id": "vip", "label": "VIP?"}],
    )
    tricky = entry(
        "e2",
        "u2",
        market_id=f"{CAMPAIGN}-m2",
        created=datetime(2026, 11, 23, 11, 30, 5, 123000),
        locale="en_us",
        countryCode="ie",
        additionalMarkets=[f"{CAMPAIGN}-m1"],
    )
    tricky["fields"] = {
        "email": "zoë@example.com",
        "first_name": '=HYPERLINK("x")',
        "last_name": 'O\'Brien, "Jr"\nthe 2nd',
        "phone": "+353 1 555",
        "postal_code": "D02",
        "fav_song": "-Intro",
        "vip": True,
    }
    bare = {"_id": "e3", "campaignId": CAMPAIGN, "userId": "u3", "marketId": f"{CAMPAIGN}-m1"}
    await services.db["entries"].insert_many(
        [entry("e1", "u1", fav_song="ignored-not-in-fields"), tricky, bare]
    )
    await services.db["entries"].insert_one(entry("other", "u9", campaign_id="camp-other"))

    done = await run(services, ExportType.ENTRIES)
    assert done.status is ExportStatus.FINISHED, done.error
    expected = (
        f"{HEADER},fav_song,vip\r\n"
        "e1,u1,u1@example.com,Ann,Lee,+15550001,60601,US,en-US,camp-1-m1,Chicago,"
        "2026-11-23T10:00:00Z,,\r\n"
        'e2,u2,zoë@example.com,"\'=HYPERLINK(""x"")","O\'Brien, ""Jr""\nthe 2nd",'
        "+353 1 555,D02,IE,en_us,camp-1-m2,'=Dublin,2026-11-23T11:30:05Z,'-Intro,true\r\n"
        "e3,u3,,,,,,,,camp-1-m1,Chicago,,,\r\n"
    ).encode()
    (file,) = done.files
    assert file.bucket == services.settings.bucket_exports
    assert file.key == f"{CAMPAIGN}/entries/{done.id}.csv"
    data = await body_of(services.storage, file.bucket, file.key)
    assert data == expected
    assert file.rows == done.count == 3
    assert file.bytes == len(expected)
    assert file.sha256 == hashlib.sha256(expected).hexdigest()
    assert file.acl == "private"
    assert done.progress == {"total": 3, "processed": 3}
    assert [g["Permission"] for g in await grants(services, file.bucket, file.key)] == [
        "FULL_CONTROL"
    ]

    # includeAllMarkets adds one row per additional market.
    all_markets = await run(services, ExportType.ENTRIES, include_all=True)
    data = await body_of(services.storage, all_markets.files[0].bucket, all_markets.files[0].key)
    lines = data.decode().split("\r\n")
    assert all_markets.count == 4
    assert all_markets.progress["total"] == 4
    assert sum(1 for line in lines if line.startswith("e2,")) == 2  # m2, then additional m1
    assert ",camp-1-m1,Chicago,2026-11-23T11:30:05Z,'-Intro,true" in data.decode()


async def test_entries_without_markets_fails_no_markets_found(services: Services) -> None:
    await add_campaign(services.db, markets=[])
    await services.db["entries"].insert_one(entry("e1", "u1"))
    done = await run(services, ExportType.ENTRIES)
    assert done.status is ExportStatus.FAILED
    assert done.error is not None and done.error["code"] == "NoMarketsFound"
    listed = await services.storage.client.list_objects_v2(Bucket=services.settings.bucket_exports)
    assert listed.get("KeyCount", 0) == 0


async def test_codes_file_byte_for_byte(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["codes"].insert_many(
        [
            {"_id": "c1", "campaignId": CAMPAIGN, "code": "AAA", "marketId": "m1", "type": "pre",
             "status": "AVAILABLE", "assignedTo": None, "waveDateKey": None, "date": {}},
            {"_id": "c2", "campaignId": CAMPAIGN, "code": "=BBB", "marketId": "m2", "type": "pre",
             "status": "ASSIGNED", "assignedTo": "u1", "waveDateKey": "20261123",
             "date": {"assigned": T0}},
        ]
    )  # fmt: skip
    done = await run(services, ExportType.CODES)
    expected = (
        b"code,type,status,market_id,assigned_to,assigned_at\r\n"
        b"AAA,pre,AVAILABLE,m1,,\r\n"
        b"=BBB,pre,ASSIGNED,m2,u1,2026-11-23T10:00:00Z\r\n"
    )
    (file,) = done.files
    assert file.key == f"{CAMPAIGN}/codes/{done.id}.csv"
    assert await body_of(services.storage, file.bucket, file.key) == expected
    assert file.sha256 == hashlib.sha256(expected).hexdigest()


async def test_scoring_goes_to_scoring_bucket_with_owner_acl(services: Services) -> None:
    await add_campaign(services.db, markets=[])
    await services.db["scoring"].insert_many(
        [
            {"_id": "s1", "campaignId": CAMPAIGN, "userId": "u1", "entryId": "e1",
             "marketId": "m1", "score": 97.5, "rank": 1, "selected": True},
            {"_id": "s2", "campaignId": CAMPAIGN, "userId": "u2", "entryId": "e2",
             "marketId": "m1", "score": 12, "rank": 2, "selected": False},
        ]
    )  # fmt: skip
    done = await run(services, ExportType.SCORING)
    assert done.status is ExportStatus.FINISHED
    expected = (
        b"user_id,entry_id,market_id,score,rank,selected\r\n"
        b"u1,e1,m1,97.5,1,true\r\n"
        b"u2,e2,m1,12,2,false\r\n"
    )
    (file,) = done.files
    assert file.bucket == services.settings.bucket_scoring
    assert file.acl == "bucket-owner-full-control"
    assert await body_of(services.storage, file.bucket, file.key) == expected


async def test_large_export_streams_in_parts_with_right_hash(services: Services) -> None:
    await add_campaign(services.db, preferences=[{"id": "note", "label": "Note"}])
    docs = [entry(f"e{i:04d}", f"u{i:04d}") for i in range(130)]
    for i, doc in enumerate(docs):
        doc["fields"]["note"] = chr(ord("a") + i % 26) * 90_000
    await services.db["entries"].insert_many(docs)
    done = await run(services, ExportType.ENTRIES)
    (file,) = done.files
    data = await body_of(services.storage, file.bucket, file.key)
    assert file.bytes == len(data) > 2 * services.settings.s3_part_size_bytes
    assert file.sha256 == hashlib.sha256(data).hexdigest()
    assert data.count(b"\r\n") == 131


async def test_finished_export_has_signed_download_url(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["codes"].insert_one(
        {"_id": "c1", "campaignId": CAMPAIGN, "code": "AAA", "status": "AVAILABLE"}
    )
    done = await run(services, ExportType.CODES)
    from export_service.app.routes import _export_view

    view = await _export_view(services, done)
    assert view["status"] == "FINISHED"
    assert "X-Amz-Signature=" in view["path"] and "X-Amz-Expires=86400" in view["path"]
    assert view["files"][0]["url"] == view["path"]
    async with aiohttp.ClientSession() as http, http.get(view["path"]) as resp:
        assert resp.status == 200
        assert (await resp.read()).startswith(b"code,type,status")
