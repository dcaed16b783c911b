"""`reminderEmail`, `reminderEmailSample`, `autoReminderEmail`: one row per user with an email,
filed by region and SFMC locale (DESIGN §6).

A user's row comes from their earliest entry (DESIGN §2), and so do its region and locale. The
files must be written one after the other (a ZIP member is contiguous; an object is held one
part at a time), but the region and locale are computed here, from free-form values, so the
database cannot sort by them, and spooling the rows to sort them would hold the whole export.
Instead the export reads the entries partition by partition, in two steps:

1. The plan: one pass over the campaign's entries in user order with a five-field projection.
   It learns every distinct raw `(countryCode, locale)` value pair and the partition each pair
   normalises to, counts the rows of every partition (so `progress.total` is exact), and notes
   the users whose entries carry more than one pair, with the id of their earliest entry. Memory:
   the distinct pairs (hundreds) and those users (in practice rare: a fan's entries share one
   form locale; about 100 bytes each).
2. The rows: for each partition, one cursor per raw pair, `{campaignId, countryCode, locale}`
   in user order, straight from the `campaign_country_locale_user_created_id` index. A user
   with one pair has all their entries in that cursor, so the first one seen is the earliest;
   a user with several pairs gets their row only where their noted earliest entry is.

Together the two steps read the entries about twice, with nothing held but the plan. Entries
added while an export runs may or may not be in it, like for every type; a user who gains an
entry with a new locale meanwhile could appear twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
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
    Source,
    campaign_filter,
)
from export_service.exporters.users import USER_SORT, PerUser
from export_service.models import ExportType, utcnow
from export_service.settings import BucketRole

REMINDER_COLUMNS = ("email", "first_name", "last_name", "locale", "country_code", "market_name")

# (region, SFMC locale): the files a row can go to.
Partition = tuple[str, str]
RawKey = tuple[Hashable, Hashable]

_PLAN: Final = "reminder_plan"
_PLAN_PROJECTION: Final[Doc] = {
    "userId": 1,
    "countryCode": 1,
    "locale": 1,
    "fields.email": 1,
    "date.created": 1,
}
_ROW_PROJECTION: Final[Doc] = {
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


def _hashable(value: Any) -> Hashable:
    # Strings and missing are the real data; anything else (lists, numbers) is kept apart by
    # type so that, say, `1` and `True` or `["US"]` and `"US"` never share a cursor.
    if value is None or isinstance(value, str):
        return value
    return (type(value).__name__, repr(value))


def raw_key(entry: Doc) -> RawKey:
    """The stored `(countryCode, locale)` pair, missing and null alike (both mean "none")."""
    return _hashable(entry.get("countryCode")), _hashable(entry.get("locale"))


@dataclass(frozen=True, slots=True)
class PairCursor:
    """The entries of one raw value pair; all of them land in `partition`."""

    partition: Partition
    key: RawKey
    country: Any
    locale: Any

    def filter(self, ctx: Context) -> Doc:
        # `None` matches missing as well as null, as `raw_key` does.
        return {"campaignId": ctx.campaign_id, "countryCode": self.country, "locale": self.locale}


@dataclass(slots=True)
class Plan:
    cursors: list[PairCursor]
    # userId → _id of the earliest entry, for users whose entries carry several pairs.
    earliest: dict[Any, Any]
    rows: dict[Partition, int]
    written: Counter[Partition] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


async def make_plan(ctx: Context, sample: int | None) -> Plan:
    regions = Regions.from_settings(ctx.settings)
    cursors: dict[RawKey, PairCursor] = {}
    earliest: dict[Any, Any] = {}
    rows: Counter[Partition] = Counter()

    def user(ctx: Context, entries: list[Doc]) -> Iterable[Any]:
        keys = set()
        for entry in entries:
            key = raw_key(entry)
            keys.add(key)
            if key not in cursors:
                country, locale = entry.get("countryCode"), entry.get("locale")
                cursors[key] = PairCursor(regions.partition(country, locale), key, country, locale)
        first = entries[0]
        if len(keys) > 1:
            earliest[first.get("userId")] = first["_id"]
        if has_email(first):
            rows[cursors[raw_key(first)].partition] += 1
        return ()

    grouping = PerUser(user)
    batch_size = ctx.settings.batch_size
    cursor = ctx.db["entries"].find(
        campaign_filter(ctx), _PLAN_PROJECTION, sort=list(USER_SORT), batch_size=batch_size
    )
    while batch := await cursor.to_list(batch_size):
        await grouping.transform(ctx, batch)
    await grouping.finish(ctx)
    if sample is not None:
        rows = Counter({p: min(n, sample) for p, n in rows.items()})
    ordered = sorted(cursors.values(), key=lambda c: (c.partition, repr(c.key)))
    return Plan(ordered, earliest, dict(rows))


def _plan(ctx: Context) -> Plan:
    plan: Plan = ctx.lookups[_PLAN]
    return plan


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
    check: Callable[[Context, Plan], None] | None = None,
) -> ExporterSpec:
    def cap(ctx: Context) -> int | None:
        return ctx.settings.reminder_sample_size if sample else None

    async def prepare(ctx: Context) -> None:
        ctx.lookups[_PLAN] = await make_plan(ctx, cap(ctx))
        if check is not None:
            check(ctx, _plan(ctx))

    async def count(ctx: Context) -> int:
        return _plan(ctx).total

    async def sources(ctx: Context) -> AsyncIterator[Source]:
        plan = _plan(ctx)
        limit = cap(ctx)
        for pair in plan.cursors:
            if limit is not None and plan.written[pair.partition] >= limit:
                continue  # the sample of this partition is complete
            yield Source("entries", pair.filter, _ROW_PROJECTION, USER_SORT, key=pair)

    def user_rows(ctx: Context, entries: list[Doc]) -> Iterable[Any]:
        plan = _plan(ctx)
        pair: PairCursor = _current(ctx)
        first = entries[0]
        noted = plan.earliest.get(first.get("userId"))
        if noted is not None and noted != first["_id"]:
            return  # the user's earliest entry, hence their row, is in another cursor
        if not has_email(first):
            return
        limit = cap(ctx)
        if limit is not None and plan.written[pair.partition] >= limit:
            return
        plan.written[pair.partition] += 1
        yield (
            pair.partition,
            reminder_row(first, pair.partition, ctx.market_name(first.get("marketId"))),
        )

    per_user = PerUser(user_rows)

    async def transform(ctx: Context, docs: list[Doc]) -> Sequence[Any]:
        # An equality filter on a field also matches arrays holding the value: keep exactly
        # the entries whose stored pair is this cursor's.
        key = _current(ctx).key
        return await per_user.transform(ctx, [d for d in docs if raw_key(d) == key])

    return ExporterSpec(
        export_type=export_type,
        source=Source("entries", campaign_filter, _PLAN_PROJECTION, USER_SORT),
        columns=lambda ctx: REMINDER_COLUMNS,
        transform=transform,
        bucket=bucket,
        ccpa=ccpa,
        layout=layout,
        needs_markets=True,
        count=count,
        prepare=prepare,
        finish=per_user.finish,
        sources=sources,
        file_name=file_name,
        max_rows_per_file=lambda ctx: ctx.settings.max_rows_per_file,
    )


def _current(ctx: Context) -> PairCursor:
    assert ctx.source is not None and isinstance(ctx.source.key, PairCursor)
    return ctx.source.key


def zip_member(ctx: Context, partition: Partition, n: int) -> str:
    region, locale = partition
    return f"{region}/{locale}-{n}.csv"


# ---- autoReminderEmail ----------------------------------------------------------------------


def sfmc_prefix(ctx: Context, region: str) -> str:
    prefix = ctx.settings.sfmc_prefixes.get(region)
    if not prefix:
        raise SfmcPrefixNotConfigured(
            f"SfmcPrefixNotConfigured: region {region} has rows but no SFMC prefix is configured",
            region=region,
        )
    return prefix


def _check_prefixes(ctx: Context, plan: Plan) -> None:
    # Before any object is written: a half-delivered set of files is worse than none.
    for region in sorted({region for (region, _), n in plan.rows.items() if n}):
        sfmc_prefix(ctx, region)


def sfmc_key(ctx: Context, partition: Partition, n: int) -> str:
    """`{prefix}_{campaignId}_{locale}_{n}_{yyyyMMddHHmm}.csv`, the prefix being the region's.

    The configured prefix is a path whose last segment starts the file name (DESIGN §6 names
    the file `{prefix}_…`), so the objects land in the prefix's folder, not in a new one.
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
    check=_check_prefixes,
)
