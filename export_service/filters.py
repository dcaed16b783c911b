"""An export's filters and its cut (contract §12): which entries an export of an entries type reads.

`ExportFilters` is what a request asked for (markets, a `date.created` range), as stored on the
export; `entry_clauses` turns it, together with the export's `date.triggered`, into the query
clauses every exporter that reads rows from `entries` adds to its campaign filter. The cut
(`date.created < triggered`) applies to every such export, filtered or not, so an export is a
snapshot of the campaign at its start and its preliminary count equals its rows.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from export_service.models import Export, ExportFilters, ExportType

Doc = dict[str, Any]

# The types that read entries (tests/test_filters.py checks this against the specs): those
# whose rows come from `entries`, and the joined types (codeAssignments, codeWaves, waitlist),
# whose rows come from codes or scoring records joined to their users' entries. A joined row is
# kept only when its user has an entry that passes the filters (see exporters/contacts.py).
# `codes` and `scoring` read no entries, so filters are refused for them.
FILTERABLE_TYPES = frozenset(
    {
        ExportType.ENTRIES,
        ExportType.VERIFIED_ENTRIES,
        ExportType.FANLIST,
        ExportType.ARTIST_OPT_IN,
        ExportType.ARTIST_SMS_OPT_IN,
        ExportType.LIVENATION_OPT_IN,
        ExportType.REMINDER_EMAIL,
        ExportType.REMINDER_EMAIL_SAMPLE,
        ExportType.AUTO_REMINDER_EMAIL,
        ExportType.PROMOTER_EMAIL_OPT_IN,
        ExportType.CODE_ASSIGNMENTS,
        ExportType.CODE_WAVES,
        ExportType.WAITLIST,
    }
)

MAX_MARKET_IDS = 100


def to_bson_date(value: datetime) -> datetime:
    """An aware datetime as the naive UTC millisecond BSON stores, rounded up.

    Entries carry whole milliseconds, so for a bound `b` with a fraction of a millisecond,
    `created >= b` and `created < b` hold exactly when they hold for `b` rounded up: the range
    means what the client wrote.
    """
    naive = value.astimezone(UTC).replace(tzinfo=None)
    ms = math.ceil(naive.microsecond / 1000)
    return naive.replace(microsecond=0) + timedelta(milliseconds=ms)


def request_filters(
    market_ids: list[str] | None, created_from: datetime | None, created_to: datetime | None
) -> ExportFilters | None:
    """The filters of a request; None when it gives none (the same export as no filters)."""
    filters = ExportFilters(
        tuple(sorted(set(market_ids or ()))),
        to_bson_date(created_from) if created_from is not None else None,
        to_bson_date(created_to) if created_to is not None else None,
    )
    return filters if filters.any else None


def created_range(export: Export) -> Doc:
    """The `date.created` clause: the requested range, cut at the export's start."""
    filters = export.filters
    triggered = export.date.get("triggered")
    start = filters.created_from if filters is not None else None
    end = filters.created_to if filters is not None else None
    if start is None and end is None:
        # The cut alone keeps an entry without a (date) `date.created`: nothing says it came
        # after the start, and the export read it before the cut existed.
        return {"$not": {"$gte": triggered}} if triggered is not None else {}
    if triggered is not None:
        end = triggered if end is None else min(end, triggered)
    clause: Doc = {}
    if start is not None:
        clause["$gte"] = start
    if end is not None:
        clause["$lt"] = end
    return clause


def entry_clauses(export: Export, *, markets: bool = True) -> Doc:
    """Clauses to add to a campaign's entries query for `export` (its filters and its cut).

    `markets=False` leaves the market filter to the caller: `entries` with includeAllMarkets
    keeps an entry whose additional markets are listed, and picks the rows itself.
    """
    clauses: Doc = {}
    created = created_range(export)
    if created:
        clauses["date.created"] = created
    if markets and export.filters is not None and export.filters.market_ids:
        clauses["marketId"] = {"$in": list(export.filters.market_ids)}
    return clauses


def market_clause(export: Export) -> Doc:
    """`{marketId: {$in: listed}}` for a source whose documents carry their own market (codes,
    scoring records); empty without a market filter."""
    if export.filters is None or not export.filters.market_ids:
        return {}
    return {"marketId": {"$in": list(export.filters.market_ids)}}
