"""The CSV types beyond entries/codes/scoring: codeAssignments, codeWaves, the per-user opt-in
types (fanlist, artistOptIn, livenationOptIn, artistSmsOptIn) and waitlist, on real servers."""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import pytest

from export_service.dev import seed
from export_service.models import Export, ExportStatus, ExportType
from export_service.runtime import Services
from tests.support.data import CAMPAIGN, T0, add_campaign, entry, run_export

Doc = dict[str, Any]

M1, M2 = f"{CAMPAIGN}-m1", f"{CAMPAIGN}-m2"

ASSIGNMENT_HEADER = "code,user_id,email,market_id,market_name,assigned_at\r\n"
OPTIN_HEADER = "user_id,email,first_name,last_name,postal_code,country_code,locale\r\n"
SMS_HEADER = "user_id,phone,first_name,last_name,country_code,locale\r\n"
WAITLIST_HEADER = "user_id,email,first_name,last_name,phone,market_id,market_name,score\r\n"

HEADERS = {
    ExportType.CODE_ASSIGNMENTS: ASSIGNMENT_HEADER,
    ExportType.CODE_WAVES: ASSIGNMENT_HEADER,
    ExportType.FANLIST: OPTIN_HEADER,
    ExportType.ARTIST_OPT_IN: OPTIN_HEADER,
    ExportType.LIVENATION_OPT_IN: OPTIN_HEADER,
    ExportType.ARTIST_SMS_OPT_IN: SMS_HEADER,
    ExportType.WAITLIST: WAITLIST_HEADER,
}
MY_TYPES = list(HEADERS)
PER_USER_TYPES = [
    ExportType.FANLIST,
    ExportType.ARTIST_OPT_IN,
    ExportType.LIVENATION_OPT_IN,
    ExportType.ARTIST_SMS_OPT_IN,
]
DATE_KEY = "20261123"


async def run(
    services: Services,
    export_type: ExportType,
    *,
    campaign_id: str = CAMPAIGN,
    date_key: str | None = None,
) -> Export:
    if export_type is ExportType.CODE_WAVES and date_key is None:
        date_key = DATE_KEY
    return await run_export(services, export_type, campaign_id=campaign_id, date_key=date_key)


async def body(services: Services, done: Export) -> str:
    assert done.status is ExportStatus.FINISHED, done.error
    (file,) = done.files
    answer = await services.storage.client.get_object(Bucket=file.bucket, Key=file.key)
    async with answer["Body"] as stream:
        data: bytes = await stream.read()
    assert file.bytes == len(data)
    return data.decode("utf-8")


def parse(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


async def permissions(services: Services, done: Export) -> list[str]:
    (file,) = done.files
    answer = await services.storage.client.get_object_acl(Bucket=file.bucket, Key=file.key)
    return [grant["Permission"] for grant in answer["Grants"]]


def code(code_id: str, user: str | None, **extra: Any) -> Doc:
    doc: Doc = {
        "_id": code_id,
        "campaignId": CAMPAIGN,
        "code": code_id.upper(),
        "marketId": M1,
        "type": "presale",
        "status": "ASSIGNED" if user else "AVAILABLE",
        "assignedTo": user,
        "waveDateKey": DATE_KEY if user else None,
        "date": {"assigned": T0} if user else {},
    }
    doc.update(extra)
    return doc


def scoring(record_id: str, user: str, *, selected: bool, **extra: Any) -> Doc:
    doc: Doc = {
        "_id": record_id,
        "campaignId": CAMPAIGN,
        "userId": user,
        "entryId": f"e-{record_id}",
        "marketId": M1,
        "score": 50.5,
        "rank": 1,
        "selected": selected,
    }
    doc.update(extra)
    return doc


def wave(wave_id: str, status: str, members: list[str], campaign_id: str = CAMPAIGN) -> Doc:
    return {
        "_id": wave_id,
        "campaignId": campaign_id,
        "status": status,
        "memberIds": members,
        "date": {"scheduled": T0},
    }


# -------------------------------------------------------------------------------------------
# codeAssignments / codeWaves


async def test_code_assignments_rows_email_of_earliest_entry(services: Services) -> None:
    await add_campaign(services.db)
    late = entry("e1", "u1", created=T0 + timedelta(days=1))
    late["fields"]["email"] = "late@example.com"
    early = entry("e9", "u1", created=T0)  # inserted after, sorts after by _id: date decides
    early["fields"]["email"] = "early@example.com"
    no_email = entry("e2", "u2")
    del no_email["fields"]["email"]
    await services.db["entries"].insert_many([late, early, no_email])
    await services.db["codes"].insert_many(
        [
            code("c1", "u1", marketId=M2, date={"assigned": T0 + timedelta(seconds=5)}),
            code("c2", None),
            {"_id": "c3", "campaignId": CAMPAIGN, "code": "C3", "status": "AVAILABLE"},
            code("c4", "u2", code="=1+2", waveDateKey="20261124"),
            code("c5", "u3"),  # assigned to a user without any entry
            code("c6", "u1", campaignId="camp-other"),
        ]
    )
    done = await run(services, ExportType.CODE_ASSIGNMENTS)
    text = await body(services, done)
    assert text == (
        ASSIGNMENT_HEADER + "C1,u1,early@example.com,camp-1-m2,'=Dublin,2026-11-23T10:00:05Z\r\n"
        "=1+2,u2,,camp-1-m1,Chicago,2026-11-23T10:00:00Z\r\n"
        "C5,u3,,camp-1-m1,Chicago,2026-11-23T10:00:00Z\r\n"
    )
    (file,) = done.files
    assert file.bucket == services.settings.bucket_exports
    assert file.key == f"{CAMPAIGN}/codeAssignments/{done.id}.csv"
    assert file.acl == "private"
    assert await permissions(services, done) == ["FULL_CONTROL"]
    assert done.count == file.rows == 3
    assert done.progress == {"total": 3, "processed": 3}


async def test_code_waves_selects_assigned_codes_of_the_date_key(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_many([entry("e1", "u1"), entry("e2", "u2")])
    await services.db["codes"].insert_many(
        [
            code("c1", "u1"),
            code("c2", "u2", waveDateKey="20261125"),
            code("c3", None, waveDateKey=DATE_KEY),  # in the wave but not assigned
            code("c4", "u2"),
            code("c5", "u1", campaignId="camp-other"),
        ]
    )
    done = await run(services, ExportType.CODE_WAVES, date_key=DATE_KEY)
    assert await body(services, done) == (
        ASSIGNMENT_HEADER + "C1,u1,u1@example.com,camp-1-m1,Chicago,2026-11-23T10:00:00Z\r\n"
        "C4,u2,u2@example.com,camp-1-m1,Chicago,2026-11-23T10:00:00Z\r\n"
    )
    (file,) = done.files
    assert file.bucket == services.settings.bucket_vf_scoring
    assert file.key == f"{CAMPAIGN}/codeWaves/{done.id}.csv"
    assert file.acl == "private"
    assert await permissions(services, done) == ["FULL_CONTROL"]
    assert done.progress == {"total": 2, "processed": 2}

    other_day = await run(services, ExportType.CODE_WAVES, date_key="20261125")
    assert [r["code"] for r in parse(await body(services, other_day))] == ["C2"]


async def test_code_waves_without_date_key_fails_instead_of_selecting_null_keys(
    services: Services,
) -> None:
    await add_campaign(services.db)
    await services.db["codes"].insert_one(code("c1", "u1", waveDateKey=None))
    done = await run(services, ExportType.CODE_WAVES, date_key="")
    assert done.status is ExportStatus.FAILED
    assert done.error is not None and "dateKey" in done.error["message"]


# -------------------------------------------------------------------------------------------
# One row per user: fanlist and the opt-in types


def _opt_in_users() -> list[Doc]:
    day = timedelta(days=1)
    # u1: said no at first, yes later; contact fields (email, names) change between entries.
    u1_early = entry("e1b", "u1", created=T0, optIns={"allowMarketing": False})
    u1_early["fields"].update(first_name="=Ann", email="early@example.com", phone="+1555EARLY")
    u1_late = entry(
        "e1a",
        "u1",
        market_id=M2,
        created=T0 + day,
        optIns={"allowMarketing": True, "allowLiveNation": True, "allowSms": True},
        phoneConfirmed=True,
    )
    u1_late["fields"].update(first_name="Late", email="late@example.com", phone="+1555LATE")
    # u2: said yes at first, opted out later; no allowLiveNation key at all.
    u2_early = entry("e2a", "u2", created=T0, optIns={"allowMarketing": True})
    u2_late = entry("e2b", "u2", created=T0 + day, optIns={"allowMarketing": False})
    # u3: no optIns object, no email, hostile free text.
    u3 = entry("e3", "u3", countryCode="ie", locale="en_us")
    del u3["optIns"]
    u3["fields"] = {
        "first_name": "Zoë 李 🎸",
        "last_name": 'O"Brien, Jr\nII',
        "postal_code": "-123",
        "phone": "+353",
    }
    # u4: SMS consent on the latest entry, but that entry's phone is not confirmed.
    u4_early = entry("e4a", "u4", created=T0, optIns={"allowSms": True}, phoneConfirmed=True)
    u4_late = entry("e4b", "u4", created=T0 + day, optIns={"allowSms": True}, phoneConfirmed=False)
    other = entry("x1", "u9", campaign_id="camp-other", optIns={"allowMarketing": True})
    return [u1_late, u2_late, u1_early, u3, u4_late, u2_early, u4_early, other]


async def test_fanlist_one_row_per_user_with_earliest_contact_fields(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_many(_opt_in_users())
    done = await run(services, ExportType.FANLIST)
    assert await body(services, done) == (
        OPTIN_HEADER + "u1,early@example.com,'=Ann,Lee,60601,US,en-US\r\n"
        "u2,u2@example.com,Ann,Lee,60601,US,en-US\r\n"
        'u3,,Zoë 李 🎸,"O""Brien, Jr\nII",\'-123,IE,en_us\r\n'
        "u4,u4@example.com,Ann,Lee,60601,US,en-US\r\n"
    )
    (file,) = done.files
    assert file.bucket == services.settings.bucket_exports
    assert file.key == f"{CAMPAIGN}/fanlist/{done.id}.csv"
    assert file.acl == "private"
    assert await permissions(services, done) == ["FULL_CONTROL"]
    # Per-user types do not count beforehand (as costly as the export).
    assert done.progress == {"processed": 4}
    assert done.count == 4


@pytest.mark.parametrize(
    ("export_type", "expected"),
    [
        (
            ExportType.ARTIST_OPT_IN,
            OPTIN_HEADER + "u1,early@example.com,'=Ann,Lee,60601,US,en-US\r\n",
        ),
        (
            ExportType.LIVENATION_OPT_IN,
            OPTIN_HEADER + "u1,early@example.com,'=Ann,Lee,60601,US,en-US\r\n",
        ),
        (ExportType.ARTIST_SMS_OPT_IN, SMS_HEADER + "u1,+1555EARLY,'=Ann,Lee,US,en-US\r\n"),
    ],
    ids=lambda value: value if isinstance(value, ExportType) else "",
)
async def test_opt_in_decided_by_latest_entry_contact_from_earliest(
    services: Services, export_type: ExportType, expected: str
) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_many(_opt_in_users())
    done = await run(services, export_type)
    assert await body(services, done) == expected
    (file,) = done.files
    assert file.bucket == services.settings.bucket_exports
    assert file.key == f"{CAMPAIGN}/{export_type.value}/{done.id}.csv"
    assert file.acl == "private"
    assert "total" not in done.progress and done.progress["processed"] == 1


async def test_per_user_groups_span_cursor_batches(services: Services) -> None:
    # 50 is the test batch size: users whose entries straddle batch boundaries stay one row.
    await add_campaign(services.db)
    docs = [
        entry(f"e{i:03d}", f"u{i // 3:03d}", created=T0 + timedelta(minutes=-i)) for i in range(161)
    ]
    await services.db["entries"].insert_many(docs)
    rows = parse(await body(services, await run(services, ExportType.FANLIST)))
    assert [r["user_id"] for r in rows] == [f"u{n:03d}" for n in range(54)]


# -------------------------------------------------------------------------------------------
# waitlist


async def test_waitlist_excludes_only_scheduled_wave_members(services: Services) -> None:
    await add_campaign(services.db)
    u2 = entry("e2", "u2")
    u2["fields"].update(email="=u2@example.com", first_name="+Bo", last_name='Ng, "B"')
    u2_later = entry("e2z", "u2", created=T0 + timedelta(days=1))
    u2_later["fields"].update(email="later@example.com")
    await services.db["entries"].insert_many(
        [entry("e1", "u1"), u2, u2_later, entry("e3", "u3"), entry("e5", "u5"), entry("e7", "u7")]
    )
    await services.db["scoring"].insert_many(
        [
            scoring("s1", "u1", selected=False),  # in a SCHEDULED wave
            scoring("s2", "u2", selected=False, score=12),  # only in a SENT wave
            scoring("s3", "u3", selected=False, marketId=M2),  # only in a CANCELLED wave
            scoring("s4", "u4", selected=True),
            scoring("s5", "u5", selected=False),  # SCHEDULED, but in another campaign
            scoring("s6", "u6", selected=False),  # no entry at all
            scoring("s7", "u7", selected=False),  # in two SCHEDULED waves
            scoring("s8", "u2", selected=False, marketId=M2, score=7.25),  # second record
            scoring("s9", "u3", selected=False, campaignId="camp-other"),
        ]
    )
    await services.db["sms_waves"].insert_many(
        [
            wave("w1", "SCHEDULED", ["u1", "u7", "nobody"]),
            wave("w2", "SENT", ["u2", "u1"]),
            wave("w3", "CANCELLED", ["u3"]),
            wave("w4", "SCHEDULED", ["u7"]),
            wave("w5", "SCHEDULED", ["u5", "u2", "u3"], campaign_id="camp-other"),
        ]
    )
    done = await run(services, ExportType.WAITLIST)
    assert await body(services, done) == (
        WAITLIST_HEADER + 'u2,=u2@example.com,\'+Bo,"Ng, ""B""",+15550001,camp-1-m1,Chicago,12\r\n'
        'u2,=u2@example.com,\'+Bo,"Ng, ""B""",+15550001,camp-1-m2,\'=Dublin,7.25\r\n'
        "u3,u3@example.com,Ann,Lee,+15550001,camp-1-m2,'=Dublin,50.5\r\n"
        "u5,u5@example.com,Ann,Lee,+15550001,camp-1-m1,Chicago,50.5\r\n"
        "u6,,,,,camp-1-m1,Chicago,50.5\r\n"
    )
    (file,) = done.files
    assert file.bucket == services.settings.bucket_exports
    assert file.key == f"{CAMPAIGN}/waitlist/{done.id}.csv"
    assert file.acl == "private"
    assert await permissions(services, done) == ["FULL_CONTROL"]
    # The preliminary count is exact: u7 (two SCHEDULED waves) is subtracted once.
    assert done.progress == {"total": 5, "processed": 5}


# -------------------------------------------------------------------------------------------
# Every type


@pytest.mark.parametrize("export_type", MY_TYPES)
async def test_no_markets_found_for_types_reading_entries(
    services: Services, export_type: ExportType
) -> None:
    await add_campaign(services.db, markets=[])
    await services.db["entries"].insert_one(entry("e1", "u1", optIns={"allowMarketing": True}))
    await services.db["codes"].insert_one(code("c1", "u1"))
    await services.db["scoring"].insert_one(scoring("s1", "u1", selected=False))
    done = await run(services, export_type)
    assert done.status is ExportStatus.FAILED
    assert done.error is not None and done.error["code"] == "NoMarketsFound"
    for bucket in (services.settings.bucket_exports, services.settings.bucket_vf_scoring):
        listed = await services.storage.client.list_objects_v2(Bucket=bucket)
        assert listed.get("KeyCount", 0) == 0


@pytest.mark.parametrize("export_type", MY_TYPES)
async def test_empty_campaign_writes_header_only(
    services: Services, export_type: ExportType
) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_one(entry("x", "u1", campaign_id="camp-other"))
    done = await run(services, export_type)
    assert await body(services, done) == HEADERS[export_type]
    assert done.count == 0


# -------------------------------------------------------------------------------------------
# A generated campaign, checked against an independent computation from the generator's output


def _expected_from_plan(plan: seed.SeedPlan) -> dict[str, Any]:
    docs: dict[str, list[Doc]] = defaultdict(list)
    for name, batch in seed.generate(plan):
        docs[name].extend(batch)
    by_user: dict[str, list[Doc]] = defaultdict(list)
    for e in docs["entries"]:
        by_user[e["userId"]].append(e)
    earliest: dict[str, Doc] = {}
    latest: dict[str, Doc] = {}
    for user, entries in by_user.items():
        ordered = sorted(entries, key=lambda e: (e["date"]["created"], e["_id"]))
        earliest[user], latest[user] = ordered[0], ordered[-1]

    def consent(e: Doc, key: str) -> bool:
        return (e.get("optIns") or {}).get(key) is True

    def email(user: str) -> str:
        return str(earliest[user]["fields"].get("email", "")) if user in earliest else ""

    assigned = [c for c in docs["codes"] if c.get("assignedTo") is not None]
    date_key = next(c["waveDateKey"] for c in assigned)
    scheduled = {m for w in docs["sms_waves"] if w["status"] == "SCHEDULED" for m in w["memberIds"]}
    other_waves = {
        m for w in docs["sms_waves"] if w["status"] != "SCHEDULED" for m in w["memberIds"]
    }
    unselected = [s for s in docs["scoring"] if s["selected"] is False]
    return {
        "date_key": date_key,
        "earliest": earliest,
        "latest": latest,
        "scheduled": scheduled,
        "other_waves": other_waves,
        "unselected": unselected,
        ExportType.FANLIST: sorted(by_user),
        ExportType.ARTIST_OPT_IN: sorted(
            u for u in by_user if consent(latest[u], "allowMarketing")
        ),
        ExportType.LIVENATION_OPT_IN: sorted(
            u for u in by_user if consent(latest[u], "allowLiveNation")
        ),
        ExportType.ARTIST_SMS_OPT_IN: sorted(
            u
            for u in by_user
            if consent(latest[u], "allowSms") and latest[u].get("phoneConfirmed") is True
        ),
        ExportType.CODE_ASSIGNMENTS: Counter(
            (c["code"], c["assignedTo"], email(c["assignedTo"])) for c in assigned
        ),
        ExportType.CODE_WAVES: Counter(
            (c["code"], c["assignedTo"], email(c["assignedTo"]))
            for c in assigned
            if c["waveDateKey"] == date_key
        ),
        ExportType.WAITLIST: Counter(
            (s["userId"], email(s["userId"]), s["marketId"])
            for s in unselected
            if s["userId"] not in scheduled
        ),
    }


async def test_seeded_campaign_rows_match_independent_computation(services: Services) -> None:
    plan = seed.SeedPlan(campaign_id=CAMPAIGN, entries=300)
    await seed.seed(services.db, plan)
    expected = _expected_from_plan(plan)
    earliest, latest = expected["earliest"], expected["latest"]

    # The data must make the rules observable, or this test could not tell right from wrong.
    assert any(
        (earliest[u].get("optIns") or {}).get("allowMarketing")
        != (latest[u].get("optIns") or {}).get("allowMarketing")
        for u in earliest
    )
    assert any(
        earliest[u]["fields"].get("email") != latest[u]["fields"].get("email") for u in earliest
    )
    unselected_users = {s["userId"] for s in expected["unselected"]}
    assert unselected_users & expected["scheduled"]
    assert (unselected_users & expected["other_waves"]) - expected["scheduled"]

    for export_type in MY_TYPES:
        done = await run(services, export_type, date_key=expected["date_key"])
        rows = parse(await body(services, done))
        if export_type in PER_USER_TYPES:
            assert [r["user_id"] for r in rows] == expected[export_type], export_type
            assert "total" not in done.progress
            if export_type is not ExportType.ARTIST_SMS_OPT_IN:
                assert all(
                    r["email"] == earliest[r["user_id"]]["fields"].get("email", "") for r in rows
                )
        elif export_type is ExportType.WAITLIST:
            got = Counter((r["user_id"], r["email"], r["market_id"]) for r in rows)
            assert got == expected[export_type]
            assert done.progress["total"] == len(rows)
        else:
            got = Counter((r["code"], r["user_id"], r["email"]) for r in rows)
            assert got == expected[export_type], export_type
            assert done.progress["total"] == len(rows)
        assert done.count == len(rows) > 0
