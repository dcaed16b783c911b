"""`codeAssignments` and `codeWaves`: one row per assigned code and its user's email (contract §6).

Both read the same code rows and differ only in which codes they select and where the file goes.
With filters (contract §12) a code is written when its own market is listed (with `marketIds`)
and its user has an entry that passes the filters; the email comes from the earliest such entry.
"""

from __future__ import annotations

from export_service import sources
from export_service.encoding.formatting import cell, date, text
from export_service.errors import ExportFailed
from export_service.exporters.contacts import (
    close_contacts,
    contact_of,
    count_joined,
    filtered,
    keeps,
    sorted_contacts,
)
from export_service.exporters.spec import (
    Context,
    CountFn,
    Doc,
    ExporterSpec,
    Row,
    Source,
    count_source,
)
from export_service.filters import market_clause
from export_service.models import ExportType
from export_service.settings import BucketRole

ASSIGNMENT_COLUMNS = ("code", "user_id", "email", "market_id", "market_name", "assigned_at")

_PROJECTION = {"code": 1, "marketId": 1, "assignedTo": 1, "date.assigned": 1}

# `$ne: None` also excludes codes without the field: "assigned" means a user id is there.
_ASSIGNED = {"$ne": None}


_JOIN = "assignment_contacts"
# User order, so that the email join is a merge join (see contacts.py).
_USER_ORDER = (("assignedTo", 1), ("_id", 1))


async def assignment_rows(ctx: Context, codes: list[Doc]) -> list[Row]:
    join = sorted_contacts(ctx, _JOIN, ("email",))
    emails = await join.lookup(code.get("assignedTo") for code in codes)
    rows: list[Row] = []
    for code in codes:
        user_id = code.get("assignedTo")
        if not keeps(ctx, emails, user_id):
            continue
        market_id = code.get("marketId")
        rows.append(
            [
                cell(code.get("code")),
                cell(user_id),
                cell(contact_of(emails, user_id).get("email")),
                cell(market_id),
                text(ctx.market_name(market_id)),
                date((code.get("date") or {}).get("assigned")),
            ]
        )
    return rows


def _assigned_filter(ctx: Context) -> Doc:
    # A market filter reads codes (campaignId, marketId, assignedTo, _id): one range per listed
    # market, merged in user order; without one, codes (campaignId, assignedTo, _id).
    return {"campaignId": ctx.campaign_id, **market_clause(ctx.export), "assignedTo": _ASSIGNED}


def _wave_filter(ctx: Context) -> Doc:
    # Served by the codes index (campaignId, waveDateKey, assignedTo, _id); a listed market is
    # checked on each of the wave's codes (one dateKey's codes, not the campaign's).
    return {
        "campaignId": ctx.campaign_id,
        "waveDateKey": ctx.export.date_key,
        **market_clause(ctx.export),
        "assignedTo": _ASSIGNED,
    }


async def _require_date_key(ctx: Context) -> None:
    # The API rejects codeWaves without a dateKey; an export written to `exports` by other
    # means must not silently select the codes whose waveDateKey is null.
    if not ctx.export.date_key:
        raise ExportFailed("codeWaves needs a dateKey")


_ASSIGNED_SOURCE = Source(sources.CODES, _assigned_filter, _PROJECTION, _USER_ORDER)
_WAVE_SOURCE = Source(sources.CODES, _wave_filter, _PROJECTION, _USER_ORDER)


def _count(source: Source) -> CountFn:
    """An index count without filters; with them, the merge join over user ids (a code counts
    only when its user has a qualifying entry)."""
    plain = count_source(source)

    async def count(ctx: Context) -> int:
        if filtered(ctx):
            return await count_joined(ctx, source, "assignedTo")
        return await plain(ctx)

    return count


async def _close_join(ctx: Context) -> list[Row]:
    await close_contacts(ctx, _JOIN)
    return []


CODE_ASSIGNMENTS = ExporterSpec(
    export_type=ExportType.CODE_ASSIGNMENTS,
    source=_ASSIGNED_SOURCE,
    columns=lambda ctx: ASSIGNMENT_COLUMNS,
    transform=assignment_rows,
    finish=_close_join,
    # Reads entries (the email join), so a campaign without markets fails (contract §6).
    needs_markets=True,
    count=_count(_ASSIGNED_SOURCE),
)

CODE_WAVES = ExporterSpec(
    export_type=ExportType.CODE_WAVES,
    source=_WAVE_SOURCE,
    columns=lambda ctx: ASSIGNMENT_COLUMNS,
    transform=assignment_rows,
    finish=_close_join,
    bucket=BucketRole.VF_SCORING,
    needs_markets=True,
    count=_count(_WAVE_SOURCE),
    prepare=_require_date_key,
)
