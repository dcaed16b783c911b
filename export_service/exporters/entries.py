"""`entries` and `verifiedEntries`: one row per entry (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from export_service.exporters.formatting import cell, date, text, upper
from export_service.exporters.spec import (
    Context,
    Doc,
    ExporterSpec,
    Row,
    Source,
    campaign_filter,
    count_source,
    per_doc,
)
from export_service.models import ExportType
from export_service.settings import BucketRole

ENTRY_COLUMNS = (
    "entry_id",
    "user_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "postal_code",
    "country_code",
    "locale",
    "market_id",
    "market_name",
    "created_at",
)

_ENTRY_PROJECTION = {
    "userId": 1,
    "marketId": 1,
    "additionalMarkets": 1,
    "locale": 1,
    "countryCode": 1,
    "fields": 1,
    "date.created": 1,
}


def preference_ids(ctx: Context) -> list[str]:
    prefs = ctx.campaign.get("preferences") or []
    return [str(p["id"]) for p in prefs if isinstance(p, dict) and p.get("id") is not None]


def entry_columns(ctx: Context) -> Sequence[str]:
    return (*ENTRY_COLUMNS, *preference_ids(ctx))


def entry_rows(ctx: Context, doc: Doc) -> Iterable[Row]:
    fields = doc.get("fields") or {}
    head = [cell(doc["_id"]), cell(doc.get("userId")), cell(fields.get("email"))]
    person = [
        text(fields.get("first_name")),
        text(fields.get("last_name")),
        cell(fields.get("phone")),
        text(fields.get("postal_code")),
        upper(doc.get("countryCode")),
        text(doc.get("locale")),
    ]
    created = date((doc.get("date") or {}).get("created"))
    answers = [text(fields.get(pid)) for pid in ctx.lookups["preference_ids"]]
    market_ids = [doc.get("marketId")]
    if ctx.export.include_all_markets:
        market_ids.extend(doc.get("additionalMarkets") or [])
    for market_id in market_ids:
        yield [*head, *person, cell(market_id), text(ctx.market_name(market_id)), created, *answers]


async def _prepare_entries(ctx: Context) -> None:
    ctx.lookups["preference_ids"] = preference_ids(ctx)


async def _count_entries(ctx: Context) -> int:
    # With includeAllMarkets each entry adds one row per additional market.
    if not ctx.export.include_all_markets:
        return await ctx.db["entries"].count_documents(campaign_filter(ctx))
    pipeline: list[Doc] = [
        {"$match": campaign_filter(ctx)},
        {
            "$group": {
                "_id": None,
                "n": {"$sum": {"$add": [1, {"$size": {"$ifNull": ["$additionalMarkets", []]}}]}},
            }
        },
    ]
    result = await (await ctx.db["entries"].aggregate(pipeline)).to_list(1)
    return int(result[0]["n"]) if result else 0


ENTRIES = ExporterSpec(
    export_type=ExportType.ENTRIES,
    source=Source("entries", campaign_filter, _ENTRY_PROJECTION),
    columns=entry_columns,
    transform=per_doc(entry_rows),
    needs_markets=True,
    count=_count_entries,
    prepare=_prepare_entries,
)


VERIFIED_COLUMNS = ("entry_id", "user_id", "email", "phone", "market_id", "created_at")


def _verified_filter(ctx: Context) -> Doc:
    return {"campaignId": ctx.campaign_id, "verified": True}


def _verified_row(ctx: Context, doc: Doc) -> Iterable[Row]:
    fields = doc.get("fields") or {}
    yield [
        cell(doc["_id"]),
        cell(doc.get("userId")),
        cell(fields.get("email")),
        cell(fields.get("phone")),
        cell(doc.get("marketId")),
        date((doc.get("date") or {}).get("created")),
    ]


_VERIFIED_SOURCE = Source(
    "entries",
    _verified_filter,
    {"userId": 1, "marketId": 1, "fields.email": 1, "fields.phone": 1, "date.created": 1},
)

VERIFIED_ENTRIES = ExporterSpec(
    export_type=ExportType.VERIFIED_ENTRIES,
    source=_VERIFIED_SOURCE,
    columns=lambda ctx: VERIFIED_COLUMNS,
    transform=per_doc(_verified_row),
    bucket=BucketRole.VF_SCORING,
    ccpa=False,
    needs_markets=True,
    count=count_source(_VERIFIED_SOURCE),
)
