"""`reminderEmail`, `reminderEmailSample`, `autoReminderEmail`: one row per user with an email,
filed by region and SFMC locale (contract §6).

A user's row comes from their earliest entry (contract §2), and so do its region and locale. The
export reads the campaign's entries once, in user order (contract §15), and routes each user's
row to its `(region, locale)` partition; the partitioned sink spools the rows and writes the
files once the pass is over. Within a file rows are in user order (`userId`, then the earliest
entry's `date.created` and `_id`), and the sample keeps the first rows of each partition in it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Final

from export_service.encoding.formatting import cell, text, upper
from export_service.errors import SfmcPrefixNotConfigured
from export_service.exporters.regions import Regions
from export_service.exporters.spec import (
    Context,
    Doc,
    ExporterSpec,
    FileNameFn,
    Layout,
    Row,
    entries_filter,
)
from export_service.exporters.users import PerUser, user_source
from export_service.models import ExportType, utcnow
from export_service.settings import BucketRole

REMINDER_COLUMNS = ("email", "first_name", "last_name", "locale", "country_code", "market_name")

# (region, SFMC locale): the files a row can go to.
Partition = tuple[str, str]

_REGIONS: Final = "reminder_regions"
_SAMPLED: Final = "reminder_sampled"
_PROJECTION: Final[Doc] = {
    "userId": 1,
    "countryCode": 1,
    "locale": 1,
    "marketId": 1,
    "fields.email": 1,
    "fields.first_name": 1,
    "fields.last_name": 1,
    "date.created": 1,
}


def has_email(entry: Doc) -> bool:
    email = (entry.get("fields") or {}).get("email")
    return isinstance(email, str) and bool(email.strip())


def reminder_row(entry: Doc, partition: Partition, market_name: str) -> Row:
    fields = entry.get("fields") or {}
    return [
        cell(fields.get("email")),
        text(fields.get("first_name")),
        text(fields.get("last_name")),
        partition[1],
        upper(entry.get("countryCode")),
        text(market_name),
    ]


def _reminder_spec(
    export_type: ExportType,
    *,
    sample: bool,
    layout: Layout,
    file_name: FileNameFn,
    bucket: BucketRole = BucketRole.EXPORTS,
    ccpa: bool = True,
) -> ExporterSpec:
    async def prepare(ctx: Context) -> None:
        ctx.lookups[_REGIONS] = Regions.from_settings(ctx.settings)
        ctx.lookups[_SAMPLED] = Counter()

    def user_row(ctx: Context, entries: list[Doc]) -> Iterable[Any]:
        first = entries[0]
        if not has_email(first):
            return
        regions: Regions = ctx.lookups[_REGIONS]
        partition = regions.partition(first.get("countryCode"), first.get("locale"))
        if sample:
            sampled: Counter[Partition] = ctx.lookups[_SAMPLED]
            if sampled[partition] >= ctx.settings.reminder_sample_size:
                return  # this partition's sample is complete
            sampled[partition] += 1
        yield partition, reminder_row(first, partition, ctx.market_name(first.get("marketId")))

    per_user = PerUser(user_row)
    return ExporterSpec(
        export_type=export_type,
        source=user_source(entries_filter, _PROJECTION),
        columns=lambda ctx: REMINDER_COLUMNS,
        transform=per_user.transform,
        bucket=bucket,
        ccpa=ccpa,
        layout=layout,
        needs_markets=True,
        prepare=prepare,
        finish=per_user.finish,
        file_name=file_name,
        max_rows_per_file=lambda ctx: ctx.settings.max_rows_per_file,
    )


def zip_member(ctx: Context, partition: Partition, n: int) -> str:
    region, locale = partition
    return f"{region}/{locale}-{n}.csv"


# ---- autoReminderEmail ----------------------------------------------------------------------


def sfmc_prefix(ctx: Context, region: str) -> str:
    prefix = ctx.settings.sfmc_prefixes.get(region)
    if not prefix:
        raise SfmcPrefixNotConfigured(
            f"region {region} has rows but no SFMC prefix is configured",
            region=region,
        )
    return prefix


def sfmc_key(ctx: Context, partition: Partition, n: int) -> str:
    """`{prefix}_{campaignId}_{locale}_{n}_{yyyyMMddHHmm}.csv`, the prefix being the region's.

    The configured prefix is a path whose last segment starts the file name (contract §6 names
    the file `{prefix}_…`), so the objects land in the prefix's folder, not in a new one. The
    sink names every file before it stores any, so a region without prefix fails the export
    with nothing written.
    """
    region, locale = partition
    moment = ctx.export.date.get("triggered") or utcnow()
    stamp = moment.strftime("%Y%m%d%H%M")
    return f"{sfmc_prefix(ctx, region)}_{ctx.campaign_id}_{locale}_{n}_{stamp}.csv"


REMINDER_EMAIL = _reminder_spec(
    ExportType.REMINDER_EMAIL, sample=False, layout=Layout.ZIP, file_name=zip_member
)
REMINDER_EMAIL_SAMPLE = _reminder_spec(
    ExportType.REMINDER_EMAIL_SAMPLE, sample=True, layout=Layout.ZIP, file_name=zip_member
)
AUTO_REMINDER_EMAIL = _reminder_spec(
    ExportType.AUTO_REMINDER_EMAIL,
    sample=False,
    layout=Layout.OBJECTS,
    file_name=sfmc_key,
    bucket=BucketRole.SFMC,
    ccpa=False,
)
