"""`promoterEmailOptIn`: a ZIP with one `{promoterId}.csv` per promoter (contract §6).

A user is in a promoter's file when their latest entry says `allowPromoter` (the latest answer
holds, as for every opt-in) and any of their entries names a market of that promoter, as its
`marketId` or in `additionalMarkets`; the row's contact fields are the earliest entry's.

The export reads the campaign's entries once, in user order (contract §15), and routes each
qualifying user's row to the partition of every promoter they belong to; the partitioned sink
spools the rows and writes the members once the pass is over, rows in user order. Every
promoter named by the campaign's markets gets its file, with just the header when no fan
qualifies, so that downstream can tell "nobody" from "missing".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from export_service import sources
from export_service.errors import PromotersNotFound
from export_service.exporters.optins import OPTIN_COLUMNS, USER_PROJECTION, contact_row, opted_in
from export_service.exporters.spec import Context, Doc, ExporterSpec, Layout, entries_filter
from export_service.exporters.users import PerUser, user_source
from export_service.models import ExportType

_PROMOTERS: Final = "promoters"
_BY_MARKET: Final = "promoters_by_market"
_PROJECTION: Final[Doc] = {**USER_PROJECTION, "marketId": 1, "additionalMarkets": 1}


def _promoter_ids(market: Doc) -> list[str]:
    ids = market.get("promoterIds")
    return [p for p in ids if isinstance(p, str)] if isinstance(ids, list) else []


async def _prepare(ctx: Context) -> None:
    by_market = {market_id: frozenset(_promoter_ids(m)) for market_id, m in ctx.markets.items()}
    named = sorted(set().union(*by_market.values()))
    cursor = ctx.db[sources.PROMOTERS].find({"_id": {"$in": named}}, {"_id": 1})
    found = {doc["_id"] async for doc in cursor}
    missing = [p for p in named if p not in found]
    if missing:
        markets = sorted(m for m, ids in by_market.items() if ids.intersection(missing))
        raise PromotersNotFound(
            f"markets {', '.join(markets)} name promoters that do not exist: {', '.join(missing)}",
            promoter_ids=missing,
            market_ids=markets,
        )
    ctx.lookups[_PROMOTERS] = named
    ctx.lookups[_BY_MARKET] = by_market


def _market_ids(entry: Doc) -> Iterable[Any]:
    yield entry.get("marketId")
    extra = entry.get("additionalMarkets")
    if isinstance(extra, list):
        yield from extra


def _rows(ctx: Context, entries: list[Doc]) -> Iterable[Any]:
    # `entries` is earliest first: the last one carries the user's current consent.
    if not opted_in(entries[-1], "allowPromoter"):
        return
    by_market: dict[str, frozenset[str]] = ctx.lookups[_BY_MARKET]
    promoters: set[str] = set()
    for entry in entries:
        for market_id in _market_ids(entry):
            if isinstance(market_id, str):
                promoters.update(by_market.get(market_id, ()))
    if promoters:
        row = contact_row(entries[0])
        for promoter in promoters:
            yield promoter, row


_PER_USER = PerUser(_rows)

PROMOTER_EMAIL_OPT_IN = ExporterSpec(
    export_type=ExportType.PROMOTER_EMAIL_OPT_IN,
    source=user_source(entries_filter, _PROJECTION),
    columns=lambda ctx: OPTIN_COLUMNS,
    transform=_PER_USER.transform,
    layout=Layout.ZIP,
    needs_markets=True,
    prepare=_prepare,
    finish=_PER_USER.finish,
    file_name=lambda ctx, promoter, n: f"{promoter}.csv",
    partitions=lambda ctx: ctx.lookups[_PROMOTERS],
)
