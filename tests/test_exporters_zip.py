"""The partitioned types on real servers: reminderEmail, reminderEmailSample (ZIPs of
`{REGION}/{locale}-{n}.csv`), autoReminderEmail (one SFMC object per file) and
promoterEmailOptIn (a ZIP of `{promoterId}.csv`). Archives are downloaded and opened."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import os
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from export_service.ccpa.deletion import CCPA_TYPES
from export_service.dev import seed
from export_service.models import Export, ExportStatus, ExportType
from export_service.runtime import Services
from export_service.settings import Settings
from tests.support.app import make_settings
from tests.support.data import CAMPAIGN, T0, add_campaign, entry, run_export
from tests.support.faults import PUT_OBJECT, UPLOAD_PART, S3Request
from tests.support.proxied import proxied
from tests.support.s3 import download, multipart_uploads, object_keys

Doc = dict[str, Any]
OpenServices = Callable[..., Awaitable[Services]]

M1, M2, M3 = f"{CAMPAIGN}-m1", f"{CAMPAIGN}-m2", f"{CAMPAIGN}-m3"
REMINDER_HEADER = ["email", "first_name", "last_name", "locale", "country_code", "market_name"]
OPTIN_HEADER = [
    "user_id",
    "email",
    "first_name",
    "last_name",
    "postal_code",
    "country_code",
    "locale",
]
NA_PREFIX = "Ticketmaster/7222895/TMDemandMgmt/DM_ArtistPresale_V03"
UK_PREFIX = "TMInternational/1314420/DM_ArtistPresale/DM_ArtistPresale_V03"
MAX_ROWS = 3
SAMPLE = 2


@pytest.fixture
def settings(mongo_uri: str, s3_endpoint: str) -> Settings:
    return make_settings(
        mongo_uri, s3_endpoint, max_rows_per_file=MAX_ROWS, reminder_sample_size=SAMPLE
    )


@pytest.fixture
async def services_with(
    mongo_uri: str, s3_endpoint: str
) -> AsyncIterator[Callable[..., Awaitable[Services]]]:
    """Opens Services on settings of the test's own (their database is dropped afterwards)."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_with(**overrides: Any) -> Services:
            settings = make_settings(mongo_uri, s3_endpoint, **overrides)
            opened = await stack.enter_async_context(Services.open(settings, create_buckets=True))
            stack.push_async_callback(opened.client.drop_database, settings.mongo_db)
            return opened

        yield open_with


# ---- helpers ------------------------------------------------------------------------------


run = run_export


def parse(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


async def members(services: Services, done: Export) -> dict[str, list[list[str]]]:
    """The archive's members, parsed (header included), after checking the file record."""
    assert done.status is ExportStatus.FINISHED, done.error
    (file,) = done.files
    assert file.bucket == services.settings.bucket_exports
    assert file.key == f"{CAMPAIGN}/{done.export_type.value}/{done.id}.zip"
    assert file.acl == "private"
    data = await download(services.storage, file.bucket, file.key)
    assert file.bytes == len(data)
    assert file.sha256 == hashlib.sha256(data).hexdigest()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # every member's CRC checks out
        names = archive.namelist()
        assert len(names) == len(set(names))
        parsed = {name: parse(archive.read(name)) for name in names}
    assert file.rows == done.count == sum(len(rows) - 1 for rows in parsed.values())
    return parsed


async def uploads_in(services: Services, bucket: str) -> list[str]:
    return [upload["Key"] for upload in await multipart_uploads(services.storage, bucket)]


def person(user: str, **fields: Any) -> Doc:
    base: Doc = {"email": f"{user}@example.com", "first_name": "Ann", "last_name": "Lee"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def reminder_entry(
    entry_id: str,
    user: str,
    country: Any = "US",
    locale: Any = "en-US",
    *,
    market: str = M1,
    created: Any = T0,
    **fields: Any,
) -> Doc:
    doc = entry(entry_id, user, market_id=market, created=created, fields=person(user, **fields))
    doc["countryCode"], doc["locale"] = country, locale
    for name, value in (("countryCode", country), ("locale", locale)):
        if value is None:
            del doc[name]
    return doc


LATER = T0 + timedelta(hours=1)

# Every shape the reminder types must handle; comments give the expected file.
REMINDER_DATA = [
    reminder_entry("e01", "u01", "US", "en-US"),  # NA/en-us
    reminder_entry("e02", "u02", "US", "en_us"),  # NA/en-us
    reminder_entry("e03", "u03", "us", "EN_US"),  # NA/en-us
    reminder_entry("e04", "u04", "MX", "en-mx"),  # NA/en-us (alias)
    reminder_entry("e05", "u05", None, None),  # NA/en-us (no country: default region/locale)
    reminder_entry("e06", "u06", "DE", "garbage"),  # NA/en-us (DE: default region, fallback)
    reminder_entry("e07", "u07", ["US"], "en-US"),  # NA/en-us, once (an array is no country)
    reminder_entry("e18a", "u18", "US", "en-US", market=M2, email="early@example.com"),
    reminder_entry("e18b", "u18", "US", "en-US", created=LATER, email="late@example.com"),
    reminder_entry(
        "e08",
        "u08",
        "GB",
        "EN-uk",
        market=M2,
        email="zoë@example.com",
        first_name="=cmd()",
        last_name='O\'Brien, "Jr"\nthe 2nd',
    ),  # UK/en-gb
    reminder_entry("e09", "u09", "IE", "en_IE"),  # UK/en-gb
    reminder_entry("e10", "u10", "ie", None),  # UK/en-gb (IE's default)
    reminder_entry("e11", "u11", "CA", None),  # NA/en-ca
    reminder_entry("e12", "u12", "CA", "fr_CA", first_name="Zoë 🎸", last_name="-minus"),
    reminder_entry("e13", "u13", "US", "en-US", email=None),  # no email: no row
    reminder_entry("e14", "u14", "US", "en-US", email=""),  # empty: no row
    reminder_entry("e15", "u15", "US", "en-US", email="   "),  # blank: no row
    # Several pairs: the earliest entry decides the file and the fields.
    reminder_entry("e16b", "u16", "US", "en-US", created=LATER, email="late16@example.com"),
    reminder_entry("e16a", "u16", "GB", "en-gb", market=M2, email="first16@example.com"),
    reminder_entry("e17a", "u17", "US", "en-US", email=None),  # earliest without email: no row
    reminder_entry("e17b", "u17", "GB", "en-GB", created=LATER),
    reminder_entry("e19a", "u19", "MX", "es_MX"),  # NA/es-mx
    reminder_entry("e19b", "u19", "GB", "en-GB", created=LATER),
    reminder_entry("x1", "u99", "US", "en-US") | {"campaignId": "other"},
]


def row(user: str, locale: str, country: str, market: str = "Chicago", **kw: str) -> list[str]:
    return [
        kw.get("email", f"{user}@example.com"),
        kw.get("first_name", "Ann"),
        kw.get("last_name", "Lee"),
        locale,
        country,
        market,
    ]


EXPECTED_REMINDERS = {
    ("NA", "en-us"): [
        row("u01", "en-us", "US"),
        row("u02", "en-us", "US"),
        row("u03", "en-us", "US"),
        row("u04", "en-us", "MX"),
        row("u05", "en-us", ""),
        row("u06", "en-us", "DE"),
        row("u07", "en-us", ""),
        row("u18", "en-us", "US", "'=Dublin", email="early@example.com"),
    ],
    ("NA", "en-ca"): [row("u11", "en-ca", "CA")],
    ("NA", "fr-ca"): [row("u12", "fr-ca", "CA", first_name="Zoë 🎸", last_name="'-minus")],
    ("NA", "es-mx"): [row("u19", "es-mx", "MX")],
    ("UK", "en-gb"): [
        row(
            "u08",
            "en-gb",
            "GB",
            "'=Dublin",
            email="zoë@example.com",
            first_name="'=cmd()",
            last_name='O\'Brien, "Jr"\nthe 2nd',
        ),
        row("u09", "en-gb", "IE"),
        row("u10", "en-gb", "IE"),
        row("u16", "en-gb", "GB", "'=Dublin", email="first16@example.com"),
    ],
}


def by_partition(parsed: dict[str, list[list[str]]]) -> dict[tuple[str, str], list[list[str]]]:
    """`{REGION}/{locale}-{n}.csv` members regrouped per partition, n in order."""
    grouped: dict[tuple[str, str], list[tuple[int, list[list[str]]]]] = defaultdict(list)
    for name, rows in parsed.items():
        match = re.fullmatch(r"([A-Z]+)/([a-z]{2}-[a-z]{2})-(\d+)\.csv", name)
        assert match, name
        grouped[(match[1], match[2])].append((int(match[3]), rows))
    out = {}
    for partition, files in grouped.items():
        files.sort()
        assert [n for n, _ in files] == list(range(1, len(files) + 1)), partition
        out[partition] = [r for _, rows in files for r in rows[1:]]
    return out


def sorted_rows(rows: list[list[str]]) -> list[list[str]]:
    return sorted(rows)


# ---- reminderEmail ------------------------------------------------------------------------


async def test_reminder_email_zip_members_rows_and_split(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_many(REMINDER_DATA)

    done = await run(services, ExportType.REMINDER_EMAIL)
    parsed = await members(services, done)

    assert sorted(parsed) == [
        "NA/en-ca-1.csv",
        "NA/en-us-1.csv",
        "NA/en-us-2.csv",
        "NA/en-us-3.csv",
        "NA/es-mx-1.csv",
        "NA/fr-ca-1.csv",
        "UK/en-gb-1.csv",
        "UK/en-gb-2.csv",
    ]
    for rows in parsed.values():
        assert rows[0] == REMINDER_HEADER
    # Split at maxRowsPerFile: full files first, the rest in the last one.
    assert [len(parsed[f"NA/en-us-{n}.csv"]) - 1 for n in (1, 2, 3)] == [3, 3, 2]
    assert [len(parsed[f"UK/en-gb-{n}.csv"]) - 1 for n in (1, 2)] == [3, 1]
    grouped = by_partition(parsed)
    assert {p: sorted_rows(r) for p, r in grouped.items()} == {
        p: sorted_rows(r) for p, r in EXPECTED_REMINDERS.items()
    }
    # The total, known once the one pass is over, is exact.
    assert done.count == 15
    assert done.progress == {"total": 15, "processed": 15}


async def test_reminder_email_bytes_are_rfc4180_utf8(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_many(
        [
            reminder_entry(
                "e1",
                "u1",
                "GB",
                "en-GB",
                market=M2,
                email="zoë@example.com",
                first_name="=cmd()",
                last_name='O\'Brien, "Jr"\nthe 2nd',
            )
        ]
    )
    done = await run(services, ExportType.REMINDER_EMAIL)
    (file,) = done.files
    data = await download(services.storage, file.bucket, file.key)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (info,) = archive.infolist()
        assert info.filename == "UK/en-gb-1.csv"
        assert info.compress_type == zipfile.ZIP_DEFLATED
        assert (
            archive.read(info)
            == (
                "email,first_name,last_name,locale,country_code,market_name\r\n"
                'zoë@example.com,\'=cmd(),"O\'Brien, ""Jr""\nthe 2nd",en-gb,GB,\'=Dublin\r\n'
            ).encode()
        )


async def test_reminder_email_without_rows_is_an_empty_archive(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_one(reminder_entry("e1", "u1", email=None))
    done = await run(services, ExportType.REMINDER_EMAIL)
    assert await members(services, done) == {}
    assert done.count == 0


# ---- reminderEmailSample ------------------------------------------------------------------


async def test_reminder_sample_caps_rows_per_file(services: Services) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_many(REMINDER_DATA)
    done = await run(services, ExportType.REMINDER_EMAIL_SAMPLE)
    parsed = await members(services, done)
    assert sorted(parsed) == [
        "NA/en-ca-1.csv",
        "NA/en-us-1.csv",
        "NA/es-mx-1.csv",
        "NA/fr-ca-1.csv",
        "UK/en-gb-1.csv",
    ]
    sizes = {name: len(rows) - 1 for name, rows in parsed.items()}
    assert sizes == {
        "NA/en-ca-1.csv": 1,
        "NA/en-us-1.csv": SAMPLE,
        "NA/es-mx-1.csv": 1,
        "NA/fr-ca-1.csv": 1,
        "UK/en-gb-1.csv": SAMPLE,
    }
    # The sample is made of real rows of the partition.
    for (region, locale), rows in by_partition(parsed).items():
        for sample_row in rows:
            assert sample_row in EXPECTED_REMINDERS[(region, locale)]
    assert done.progress == {"total": 7, "processed": 7}


# ---- autoReminderEmail --------------------------------------------------------------------


async def test_auto_reminder_email_one_object_per_file_under_sfmc_prefixes(
    services: Services,
) -> None:
    await add_campaign(services.db)
    await services.db["entries"].insert_many(REMINDER_DATA)
    done = await run(services, ExportType.AUTO_REMINDER_EMAIL)
    assert done.status is ExportStatus.FINISHED, done.error
    stamp = done.date["triggered"].strftime("%Y%m%d%H%M")
    sfmc = services.settings.bucket_sfmc

    expected_keys = {
        f"{NA_PREFIX}_{CAMPAIGN}_en-ca_1_{stamp}.csv": ("NA", "en-ca"),
        f"{NA_PREFIX}_{CAMPAIGN}_en-us_1_{stamp}.csv": ("NA", "en-us"),
        f"{NA_PREFIX}_{CAMPAIGN}_en-us_2_{stamp}.csv": ("NA", "en-us"),
        f"{NA_PREFIX}_{CAMPAIGN}_en-us_3_{stamp}.csv": ("NA", "en-us"),
        f"{NA_PREFIX}_{CAMPAIGN}_es-mx_1_{stamp}.csv": ("NA", "es-mx"),
        f"{NA_PREFIX}_{CAMPAIGN}_fr-ca_1_{stamp}.csv": ("NA", "fr-ca"),
        f"{UK_PREFIX}_{CAMPAIGN}_en-gb_1_{stamp}.csv": ("UK", "en-gb"),
        f"{UK_PREFIX}_{CAMPAIGN}_en-gb_2_{stamp}.csv": ("UK", "en-gb"),
    }
    # Every object is in files[] and nothing else is in the bucket.
    assert sorted(f.key for f in done.files) == sorted(expected_keys)
    assert sorted(await object_keys(services.storage, sfmc)) == sorted(expected_keys)
    assert await object_keys(services.storage, services.settings.bucket_exports) == []

    contents: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
    for file in sorted(done.files, key=lambda f: f.key):
        assert file.bucket == sfmc
        assert file.acl == "private"
        data = await download(services.storage, sfmc, file.key)
        assert (file.bytes, file.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        rows = parse(data)
        assert rows[0] == REMINDER_HEADER
        assert file.rows == len(rows) - 1 <= MAX_ROWS
        contents[expected_keys[file.key]].extend(rows[1:])
    assert {p: sorted_rows(r) for p, r in contents.items()} == {
        p: sorted_rows(r) for p, r in EXPECTED_REMINDERS.items()
    }
    assert done.count == 15
    # SFMC's files are not the requester's: a CCPA request leaves them alone (contract §6).
    assert ExportType.AUTO_REMINDER_EMAIL not in CCPA_TYPES


async def test_auto_reminder_email_region_without_prefix_fails_before_writing(
    services_with: OpenServices,
) -> None:
    services: Services = await services_with(sfmc_prefixes={"NA": NA_PREFIX})
    await add_campaign(services.db)
    await services.db["entries"].insert_many(
        [reminder_entry("e1", "u1", "US", "en-US"), reminder_entry("e2", "u2", "GB", "en-GB")]
    )
    done = await run(services, ExportType.AUTO_REMINDER_EMAIL)
    assert done.status is ExportStatus.FAILED
    assert done.error is not None
    assert done.error["code"] == "SfmcPrefixNotConfigured"
    assert "UK" in done.error["message"]
    assert await object_keys(services.storage, services.settings.bucket_sfmc) == []


async def test_auto_reminder_email_custom_prefix_and_region_tables(
    services_with: OpenServices,
) -> None:
    services: Services = await services_with(
        sfmc_prefixes={"NA": "na/base", "EU": "eu/base"},
        region_by_country={"US": "NA", "DE": "EU"},
        default_region="EU",
    )
    await add_campaign(services.db)
    await services.db["entries"].insert_many(
        [reminder_entry("e1", "u1", "US", "en-US"), reminder_entry("e2", "u2", "GB", "en-GB")]
    )
    done = await run(services, ExportType.AUTO_REMINDER_EMAIL)
    stamp = done.date["triggered"].strftime("%Y%m%d%H%M")
    assert sorted(f.key for f in done.files) == [
        f"eu/base_{CAMPAIGN}_en-gb_1_{stamp}.csv",
        f"na/base_{CAMPAIGN}_en-us_1_{stamp}.csv",
    ]


# ---- promoterEmailOptIn -------------------------------------------------------------------

P1, P2, P3 = "prom-1", "prom-2", "prom-3"


async def add_promoter_campaign(services: Services) -> None:
    await add_campaign(
        services.db,
        markets=[
            {"_id": M1, "name": "Chicago", "promoterIds": [P1]},
            {"_id": M2, "name": "Dublin", "promoterIds": [P1, P2]},
            {"_id": M3, "name": "Cork", "promoterIds": [P3]},
            {"_id": f"{CAMPAIGN}-m4", "name": "Nowhere"},
        ],
    )
    await services.db["promoters"].insert_many(
        [{"_id": p, "name": f"Promoter {p}"} for p in (P1, P2, P3, "unused")]
    )


def promoter_entry(entry_id: str, user: str, market: str, allow: Any, **extra: Any) -> Doc:
    doc = entry(entry_id, user, market_id=market, **extra)
    doc["optIns"] = {} if allow is None else {"allowPromoter": allow}
    return doc


async def test_promoter_email_opt_in_one_member_per_promoter(services: Services) -> None:
    await add_promoter_campaign(services)
    await services.db["entries"].insert_many(
        [
            promoter_entry("a", "u-a", M1, True),  # P1
            promoter_entry("b", "u-b", M2, True),  # P1 and P2
            promoter_entry("c", "u-c", M1, False),  # no consent
            promoter_entry("d", "u-d", M1, None),  # missing = no
            # consent from the latest entry, fields from the earliest
            promoter_entry("e1", "u-e", M1, False, countryCode="gb", locale="EN-uk"),
            promoter_entry("e2", "u-e", M1, True, created=LATER),
            promoter_entry("f1", "u-f", M1, True),
            promoter_entry("f2", "u-f", M1, False, created=LATER),
            # additionalMarkets count as entered
            promoter_entry("g", "u-g", f"{CAMPAIGN}-m4", True, additionalMarkets=[M2]),
            promoter_entry("h", "u-h", f"{CAMPAIGN}-m4", True),  # no promoter at all
            promoter_entry("i", "u-i", M1, "yes"),  # only `true` is yes
        ]
    )
    tricky = promoter_entry("j", "u-j", M1, True)
    tricky["fields"].update(first_name='+1 ,"x"', last_name="李\nB", postal_code="@60601")
    await services.db["entries"].insert_one(tricky)

    done = await run(services, ExportType.PROMOTER_EMAIL_OPT_IN)
    parsed = await members(services, done)

    def optin(user: str, **kw: str) -> list[str]:
        return [
            user,
            f"{user}@example.com",
            kw.get("first_name", "Ann"),
            kw.get("last_name", "Lee"),
            kw.get("postal_code", "60601"),
            kw.get("country_code", "US"),
            kw.get("locale", "en-US"),
        ]

    e_row = optin("u-e", country_code="GB", locale="EN-uk")
    j_row = optin("u-j", first_name='\'+1 ,"x"', last_name="李\nB", postal_code="'@60601")
    assert parsed == {
        f"{P1}.csv": [OPTIN_HEADER, optin("u-a"), optin("u-b"), e_row, optin("u-g"), j_row],
        f"{P2}.csv": [OPTIN_HEADER, optin("u-b"), optin("u-g")],
        # Named by a market, but nobody qualifies: the file is there, header only.
        f"{P3}.csv": [OPTIN_HEADER],
    }
    assert done.count == 7
    # No count up front; the total is known once the one pass is over (contract §15).
    assert done.progress == {"total": 7, "processed": 7}


async def test_promoters_not_found_for_a_dangling_promoter(services: Services) -> None:
    plan = seed.SeedPlan(campaign_id=CAMPAIGN, entries=30, dangling_promoter=True)
    await seed.seed(services.db, plan)
    done = await run(services, ExportType.PROMOTER_EMAIL_OPT_IN)
    assert done.status is ExportStatus.FAILED
    assert done.error is not None and done.error["code"] == "PromotersNotFound"
    markets = [m async for m in services.db["markets"].find({"campaignId": CAMPAIGN})]
    known = {p["_id"] async for p in services.db["promoters"].find({})}
    (missing,) = {p for m in markets for p in m["promoterIds"]} - known
    assert missing in done.error["message"]
    assert await object_keys(services.storage, services.settings.bucket_exports) == []


@pytest.mark.parametrize(
    "export_type",
    [
        ExportType.REMINDER_EMAIL,
        ExportType.REMINDER_EMAIL_SAMPLE,
        ExportType.AUTO_REMINDER_EMAIL,
        ExportType.PROMOTER_EMAIL_OPT_IN,
    ],
)
async def test_no_markets_found(services: Services, export_type: ExportType) -> None:
    await add_campaign(services.db, markets=[])
    await services.db["entries"].insert_one(reminder_entry("e1", "u1"))
    done = await run(services, export_type)
    assert done.status is ExportStatus.FAILED
    assert done.error is not None and done.error["code"] == "NoMarketsFound"
    for bucket in (services.settings.bucket_exports, services.settings.bucket_sfmc):
        assert await object_keys(services.storage, bucket) == []


# ---- failures leave nothing behind --------------------------------------------------------


async def test_failed_zip_export_aborts_its_started_upload(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    # Each row ~1 MB of incompressible text, so that the archive passes one S3 part (5 MiB)
    # and a multipart upload is under way when S3 refuses its part.
    async with proxied(mongo_uri, s3_endpoint, spool_dir=tmp_path) as env:
        services = env.services
        await add_campaign(services.db)
        big = [
            reminder_entry(
                f"e{i:02d}", f"u{i:02d}", first_name=base64.b64encode(os.urandom(750_000)).decode()
            )
            for i in range(20)
        ]
        await services.db["entries"].insert_many(big)
        denied = env.proxy.fail_always(403, "AccessDenied", match=UPLOAD_PART)
        done = await run(services, ExportType.REMINDER_EMAIL)
        assert done.status is ExportStatus.FAILED
        assert done.error is not None and done.error["code"] == "StorageError"
        assert denied.injected == 1  # the upload was under way
        assert await env.leftovers() == ([], [])
        assert list(tmp_path.iterdir()) == []  # nor a spool


async def test_failed_objects_export_deletes_completed_objects(
    mongo_uri: str, s3_endpoint: str, tmp_path: Path
) -> None:
    async with proxied(mongo_uri, s3_endpoint, spool_dir=tmp_path) as env:
        services = env.services
        await add_campaign(services.db)
        await services.db["entries"].insert_many(REMINDER_DATA)
        sfmc = services.settings.bucket_sfmc
        puts: list[str] = []

        def third_put(request: S3Request) -> bool:
            if request.operation != PUT_OBJECT or f"/{sfmc}/" not in request.path:
                return False
            puts.append(request.path)
            return len(puts) == 3

        env.proxy.fail_always(403, "AccessDenied", match=third_put)
        done = await run(services, ExportType.AUTO_REMINDER_EMAIL)
        assert done.status is ExportStatus.FAILED
        # The third object starts once one of the first two is complete (two completions at
        # once, S3_UPLOAD_CONCURRENCY), and a fourth may be under way when the third fails.
        assert len(puts) in (3, 4)
        assert await object_keys(env.direct, sfmc) == []
        assert await multipart_uploads(env.direct, sfmc) == []
        assert list(tmp_path.iterdir()) == []


# ---- a generated campaign against an independent computation ------------------------------

COUNTRY_REGION = {"US": "NA", "CA": "NA", "MX": "NA", "GB": "UK", "IE": "UK"}
COUNTRY_LOCALE = {"US": "en-us", "CA": "en-ca", "MX": "es-mx", "GB": "en-gb", "IE": "en-gb"}
ALIASES = {"en-mx": "en-us", "en-uk": "en-gb", "en-ie": "en-gb", "en-nz": "en-au"}


def expected_partition(doc: Doc) -> tuple[str, str]:
    """contract §6 restated from scratch, with the default tables."""
    country = doc.get("countryCode")
    country = country.upper() if isinstance(country, str) else None
    locale = doc.get("locale")
    if isinstance(locale, str) and re.fullmatch(
        r"[a-z]{2}-[a-z]{2}", locale.lower().replace("_", "-")
    ):
        normal = locale.lower().replace("_", "-")
        normal = ALIASES.get(normal, normal)
    else:
        normal = COUNTRY_LOCALE.get(country or "", "en-us")
    return COUNTRY_REGION.get(country or "", "NA"), normal


async def test_seeded_campaign_matches_independent_computation(services: Services) -> None:
    plan = seed.SeedPlan(campaign_id=CAMPAIGN, entries=300)
    await seed.seed(services.db, plan)
    entries: dict[str, list[Doc]] = defaultdict(list)
    markets: dict[str, Doc] = {}
    for name, batch in seed.generate(plan):
        if name == "entries":
            for doc in batch:
                entries[doc["userId"]].append(doc)
        elif name == "markets":
            markets.update((m["_id"], m) for m in batch)
    reminder_users: dict[tuple[str, str], set[str]] = defaultdict(set)
    promoter_users: dict[str, set[str]] = {
        p: set() for m in markets.values() for p in m["promoterIds"]
    }
    for user, docs in entries.items():
        docs.sort(key=lambda d: (d["date"]["created"], d["_id"]))
        first, last = docs[0], docs[-1]
        email = first["fields"].get("email")
        if email and email.strip():
            reminder_users[expected_partition(first)].add(email)
        if (last.get("optIns") or {}).get("allowPromoter") is True:
            for doc in docs:
                for market in [doc["marketId"], *doc.get("additionalMarkets", [])]:
                    for promoter in markets[market]["promoterIds"]:
                        promoter_users[promoter].add(user)
    assert any(len(docs) > 1 for docs in entries.values())  # the grouping is exercised

    reminder = await run(services, ExportType.REMINDER_EMAIL)
    parsed = await members(services, reminder)
    assert all(len(rows) - 1 <= MAX_ROWS for rows in parsed.values())
    grouped = by_partition(parsed)
    assert {p: sorted(r[0] for r in rows) for p, rows in grouped.items()} == {
        p: sorted(emails) for p, emails in reminder_users.items()
    }
    assert reminder.count == sum(len(u) for u in reminder_users.values())
    assert reminder.progress["total"] == reminder.count

    sample = await run(services, ExportType.REMINDER_EMAIL_SAMPLE)
    sample_sizes = Counter(
        {p: len(r) for p, r in by_partition(await members(services, sample)).items()}
    )
    assert sample_sizes == Counter({p: min(len(u), SAMPLE) for p, u in reminder_users.items()})

    promoters = await run(services, ExportType.PROMOTER_EMAIL_OPT_IN)
    got = {
        name.removesuffix(".csv"): {r[0] for r in rows[1:]}
        for name, rows in (await members(services, promoters)).items()
    }
    assert got == promoter_users
    assert promoters.count is not None
    assert sum(len(u) for u in promoter_users.values()) == promoters.count > 0


# ---- one pass: byte-level equality at several partition counts (contract §15) -------------


def _free_text(value: Any) -> str:
    """The contract's cell rule restated: text a spreadsheet would run gets a leading `'`."""
    s = "" if value is None else value if isinstance(value, str) else str(value)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def _upper(value: Any) -> str:
    return value.upper() if isinstance(value, str) else ""


def expected_files(
    plan: seed.SeedPlan, max_rows: int, sample: int
) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, bytes]]:
    """reminderEmail members, reminderEmailSample members and promoterEmailOptIn members,
    byte for byte, computed from the generated documents alone; rows in user order."""
    users: dict[str, list[Doc]] = defaultdict(list)
    markets: dict[str, Doc] = {}
    for name, batch in seed.generate(plan):
        if name == "entries":
            for doc in batch:
                users[doc["userId"]].append(doc)
        elif name == "markets":
            markets.update((m["_id"], m) for m in batch)
    reminders: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
    promoters: dict[str, list[list[str]]] = {
        p: [] for m in markets.values() for p in m["promoterIds"]
    }
    for user in sorted(users):
        docs = sorted(users[user], key=lambda d: (d["date"]["created"], d["_id"]))
        first, last = docs[0], docs[-1]
        fields = first.get("fields") or {}
        email = fields.get("email")
        if isinstance(email, str) and email.strip():
            partition = expected_partition(first)
            market = markets.get(str(first.get("marketId"))) or {}
            reminders[partition].append(
                [
                    email,
                    _free_text(fields.get("first_name")),
                    _free_text(fields.get("last_name")),
                    partition[1],
                    _upper(first.get("countryCode")),
                    _free_text(market.get("name")),
                ]
            )
        if (last.get("optIns") or {}).get("allowPromoter") is True:
            row = [
                user,
                "" if fields.get("email") is None else str(fields["email"]),
                _free_text(fields.get("first_name")),
                _free_text(fields.get("last_name")),
                _free_text(fields.get("postal_code")),
                _upper(first.get("countryCode")),
                _free_text(first.get("locale")),
            ]
            mine = {
                p
                for doc in docs
                for market_id in [doc["marketId"], *doc.get("additionalMarkets", [])]
                for p in markets[market_id]["promoterIds"]
            }
            for promoter in mine:
                promoters[promoter].append(row)
    full: dict[str, bytes] = {}
    sampled: dict[str, bytes] = {}
    for (region, locale), rows in reminders.items():
        for n, start in enumerate(range(0, len(rows), max_rows), 1):
            chunk = rows[start : start + max_rows]
            full[f"{region}/{locale}-{n}.csv"] = _csv(REMINDER_HEADER, chunk)
        sampled[f"{region}/{locale}-1.csv"] = _csv(REMINDER_HEADER, rows[:sample])
    by_promoter = {f"{p}.csv": _csv(OPTIN_HEADER, rows) for p, rows in promoters.items()}
    return full, sampled, by_promoter


async def raw_members(services: Services, done: Export) -> dict[str, bytes]:
    assert done.status is ExportStatus.FINISHED, done.error
    (file,) = done.files
    data = await download(services.storage, file.bucket, file.key)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.parametrize("partitions", [2, 8, 24])
async def test_one_pass_files_are_byte_equal_to_an_independent_computation(
    services: Services, partitions: int
) -> None:
    # As many promoters as markets; the markets' five countries give up to ~16 region/locales.
    plan = seed.SeedPlan(
        campaign_id=CAMPAIGN, entries=240, markets=partitions, promoters=partitions, seed=partitions
    )
    await seed.seed(services.db, plan)
    full, sampled, by_promoter = expected_files(plan, MAX_ROWS, SAMPLE)
    assert len(by_promoter) == partitions

    assert await raw_members(services, await run(services, ExportType.REMINDER_EMAIL)) == full
    sample = await run(services, ExportType.REMINDER_EMAIL_SAMPLE)
    assert await raw_members(services, sample) == sampled
    promoters = await run(services, ExportType.PROMOTER_EMAIL_OPT_IN)
    assert await raw_members(services, promoters) == by_promoter

    auto = await run(services, ExportType.AUTO_REMINDER_EMAIL)
    assert auto.status is ExportStatus.FINISHED, auto.error
    stamp = auto.date["triggered"].strftime("%Y%m%d%H%M")
    prefixes = services.settings.sfmc_prefixes
    objects = {}
    for file in auto.files:
        objects[file.key] = await download(services.storage, file.bucket, file.key)
    expected_objects = {}
    for name, data in full.items():
        match = re.fullmatch(r"([A-Z]+)/([a-z]{2}-[a-z]{2})-(\d+)\.csv", name)
        assert match
        region, locale, n = match[1], match[2], match[3]
        expected_objects[f"{prefixes[region]}_{CAMPAIGN}_{locale}_{n}_{stamp}.csv"] = data
    assert objects == expected_objects
