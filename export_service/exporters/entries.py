"""`entries` and `verifiedEntries`: one row per entry (contract §6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from export_service import sources
from export_service.encoding.entries import ADDITIONAL_MARKETS, ENTRY_COLUMNS, VALUES, EntryEncoder
from export_service.encoding.formatting import text
from export_service.encoding.rows import verified_entry_row
from export_service.exporters.spec import (
    Context,
    Doc,
    ExporterSpec,
    Source,
    count_source,
    doc_rows,
    entries_filter,
)
from export_service.filters import entry_clauses
from export_service.models import ExportType
from export_service.settings import BucketRole


def preference_ids(ctx: Context) -> list[str]:
    prefs = ctx.campaign.get("preferences") or []
    return [str(p["id"]) for p in prefs if isinstance(p, dict) and p.get("id") is not None]


def entry_columns(ctx: Context) -> Sequence[str]:
    return (*ENTRY_COLUMNS, *preference_ids(ctx))


def field_of(parent: str, key: str) -> str | Doc:
    """The expression for `parent[key]`; preference ids are free-form (dots, a leading `$`)."""
    if key and "." not in key and not key.startswith("$"):
        return f"${parent}.{key}"
    return {"$getField": {"field": {"$literal": key}, "input": f"${parent}"}}


# Each entry comes back as one array of its cells' values, in column order (a missing field is
# null). The driver decodes an array of strings faster than the same strings as named fields
# (no key per value), and several times faster than nested documents; decoding is a third of
# an export's CPU time.
_ENTRY_VALUES = (
    "$_id",
    "$userId",
    "$fields.email",
    "$fields.first_name",
    "$fields.last_name",
    "$fields.phone",
    "$fields.postal_code",
    "$countryCode",
    "$locale",
    "$marketId",
    "$date.created",
)


def _entry_id(doc: Doc) -> Any:
    return doc[VALUES][0]  # `$_id` comes first (and `_id` itself is projected out)


def _entry_projection(ctx: Context) -> Doc:
    answers = [field_of("fields", pid) for pid in ctx.lookups["preference_ids"]]
    projection: Doc = {"_id": 0, VALUES: [*_ENTRY_VALUES, *answers]}
    if ctx.export.include_all_markets:
        projection[ADDITIONAL_MARKETS] = 1
    return projection


def _listed_markets(ctx: Context) -> frozenset[str] | None:
    filters = ctx.export.filters
    return frozenset(filters.market_ids) if filters is not None and filters.market_ids else None


def _entries_filter(ctx: Context) -> Doc:
    # With includeAllMarkets an entry of an unlisted market still yields the rows of its listed
    # additional markets: the query keeps every market and the encoder picks the rows.
    if ctx.export.include_all_markets:
        return {"campaignId": ctx.campaign_id, **entry_clauses(ctx.export, markets=False)}
    return entries_filter(ctx)


def _entry_encoder(ctx: Context) -> EntryEncoder:
    return EntryEncoder(
        market_names=ctx.lookups["market_names"],
        include_all_markets=bool(ctx.export.include_all_markets),
        codec_options=ctx.db.codec_options,
        markets=_listed_markets(ctx) if ctx.export.include_all_markets else None,
    )


async def _prepare_entries(ctx: Context) -> None:
    ctx.lookups["preference_ids"] = preference_ids(ctx)
    ctx.lookups["market_names"] = {m: text(ctx.market_name(m)) for m in ctx.markets}


async def _count_entries(ctx: Context) -> int:
    # With includeAllMarkets each entry adds one row per additional market.
    if not ctx.export.include_all_markets:
        return await ctx.db[sources.ENTRIES].count_documents(entries_filter(ctx))
    additional: Doc = {"$ifNull": ["$additionalMarkets", []]}
    own: Doc | int = 1
    listed = _listed_markets(ctx)
    if listed is not None:
        # Only the rows of listed markets, as the encoder writes them.
        markets = sorted(listed)
        own = {"$cond": [{"$in": ["$marketId", markets]}, 1, 0]}
        additional = {"$filter": {"input": additional, "cond": {"$in": ["$$this", markets]}}}
    pipeline: list[Doc] = [
        {"$match": _entries_filter(ctx)},
        {"$group": {"_id": None, "n": {"$sum": {"$add": [own, {"$size": additional}]}}}},
    ]
    result = await (await ctx.db[sources.ENTRIES].aggregate(pipeline)).to_list(1)
    return int(result[0]["n"]) if result else 0


ENTRIES = ExporterSpec(
    export_type=ExportType.ENTRIES,
    source=Source(sources.ENTRIES, _entries_filter, _entry_projection, document_id=_entry_id),
    columns=entry_columns,
    encoder=_entry_encoder,
    needs_markets=True,
    count=_count_entries,
    prepare=_prepare_entries,
)


VERIFIED_COLUMNS = ("entry_id", "user_id", "email", "phone", "market_id", "created_at")


def _verified_filter(ctx: Context) -> Doc:
    return {**entries_filter(ctx), "verified": True}


_VERIFIED_SOURCE = Source(
    sources.ENTRIES,
    _verified_filter,
    {"userId": 1, "marketId": 1, "fields.email": 1, "fields.phone": 1, "date.created": 1},
)

VERIFIED_ENTRIES = ExporterSpec(
    export_type=ExportType.VERIFIED_ENTRIES,
    source=_VERIFIED_SOURCE,
    columns=lambda ctx: VERIFIED_COLUMNS,
    encoder=doc_rows(verified_entry_row),
    bucket=BucketRole.VF_SCORING,
    ccpa=False,
    needs_markets=True,
    count=count_source(_VERIFIED_SOURCE),
)
