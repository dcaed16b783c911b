"""`waitlist`: non-selected scoring records of users not in a SCHEDULED SMS wave (contract §6).

SCHEDULED members are loaded once per export into a set (`prepare`), not anti-joined per batch.
Measured on the embedded MongoDB-wire server (20,000-entry seeded campaign, two SCHEDULED waves
of ~1,000 members): the per-batch anti-join (one aggregation per batch projecting
`$setIntersection(memberIds, <batch users>)`) took 20 s per ~1,600-user batch, so the waitlist
took 2.5 minutes, and with a 400,000-member wave added it had not finished one batch after 15
minutes, because every batch makes the server walk every matching wave again (O(wave size) per
batch on real MongoDB too). Loading the members takes one pass over the SCHEDULED waves (0.7 s
for 409,000 members on the same server) and costs ~110 bytes per distinct member in the worker:
~50 MB for 450,000 ids, the most one 16 MB wave document can hold. That memory follows the
SCHEDULED waves, not the campaign's size, and no wave is ever loaded per row or per batch. SENT
and CANCELLED waves do not exclude anyone.

With filters (contract §12) a record is written when its own market is listed (with
`marketIds`) and its user has an entry that passes the filters; the contact fields come from the
earliest such entry.
"""

from __future__ import annotations

from export_service import sources
from export_service.encoding.formatting import cell, text
from export_service.exporters.contacts import (
    close_contacts,
    contact_of,
    count_joined,
    filtered,
    keeps,
    sorted_contacts,
    user_ids,
)
from export_service.exporters.spec import Context, Doc, ExporterSpec, Row, Source
from export_service.filters import market_clause
from export_service.models import ExportType

WAITLIST_COLUMNS = (
    "user_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "market_id",
    "market_name",
    "score",
)

SCHEDULED = "SCHEDULED"

_CONTACT_FIELDS = ("email", "first_name", "last_name", "phone")
_MEMBERS = "scheduled_members"
COUNT_CHUNK = 200
_JOIN = "waitlist_contacts"


def _waitlist_filter(ctx: Context) -> Doc:
    # A market filter reads scoring (campaignId, selected, marketId, userId, _id): one range per
    # listed market, merged in user order; without one, (campaignId, selected, userId, _id).
    return {"campaignId": ctx.campaign_id, "selected": False, **market_clause(ctx.export)}


def _scheduled_waves(ctx: Context) -> Doc:
    return {"campaignId": ctx.campaign_id, "status": SCHEDULED}


async def _load_scheduled_members(ctx: Context) -> None:
    members: set[str] = set()
    # One wave document (up to 16 MB) decoded at a time; only the ids are kept.
    cursor = ctx.db[sources.SMS_WAVES].find(_scheduled_waves(ctx), {"_id": 0, "memberIds": 1})
    async for wave in cursor.batch_size(1):
        members.update(user_ids(wave.get("memberIds") or ()))
    ctx.lookups[_MEMBERS] = frozenset(members)


def _scheduled_members(ctx: Context) -> frozenset[str]:
    members: frozenset[str] = ctx.lookups[_MEMBERS]
    return members


async def _waitlist_rows(ctx: Context, records: list[Doc]) -> list[Row]:
    excluded = _scheduled_members(ctx)
    kept = [r for r in records if r.get("userId") not in excluded]
    join = sorted_contacts(ctx, _JOIN, _CONTACT_FIELDS)
    contacts = await join.lookup(r.get("userId") for r in kept)
    rows: list[Row] = []
    for record in kept:
        user_id = record.get("userId")
        if not keeps(ctx, contacts, user_id):
            continue
        market_id = record.get("marketId")
        fields = contact_of(contacts, user_id)
        rows.append(
            [
                cell(user_id),
                cell(fields.get("email")),
                text(fields.get("first_name")),
                text(fields.get("last_name")),
                cell(fields.get("phone")),
                cell(market_id),
                text(ctx.market_name(market_id)),
                cell(record.get("score")),
            ]
        )
    return rows


async def _finish(ctx: Context) -> list[Row]:
    await close_contacts(ctx, _JOIN)
    return []


# User order (index campaign_selected_user_id), so the contact join is a merge join.
_SOURCE = Source(
    sources.SCORING,
    _waitlist_filter,
    {"userId": 1, "marketId": 1, "score": 1},
    (("userId", 1), ("_id", 1)),
)


async def _count_waitlist(ctx: Context) -> int:
    """Exact: the campaign's non-selected records minus those of SCHEDULED members.

    One index count plus one count per `batch_size` members, both on the scoring index
    (campaignId, selected, userId): the cost follows the SCHEDULED waves, not the campaign.
    """
    if filtered(ctx):
        # Which users have a qualifying entry is known only from the entries: the merge join
        # over user ids, the SCHEDULED members skipped as in the export.
        return await count_joined(ctx, _SOURCE, "userId", _scheduled_members(ctx).__contains__)
    scoring = ctx.db[sources.SCORING]
    source = _waitlist_filter(ctx)
    total = await scoring.count_documents(source)
    members = sorted(_scheduled_members(ctx))
    # Short `$in` lists: the embedded server's `$in` cost grows faster than the list (0.28 s for
    # 200 ids, 6.1 s for 1,600); on MongoDB this only adds a few cheap index counts.
    size = min(ctx.settings.batch_size, COUNT_CHUNK)
    for start in range(0, len(members), size):
        chunk = members[start : start + size]
        total -= await scoring.count_documents({**source, "userId": {"$in": chunk}})
    return total


WAITLIST = ExporterSpec(
    export_type=ExportType.WAITLIST,
    source=_SOURCE,
    columns=lambda ctx: WAITLIST_COLUMNS,
    transform=_waitlist_rows,
    finish=_finish,
    # Reads entries (the contact join), so a campaign without markets fails (contract §6).
    needs_markets=True,
    count=_count_waitlist,
    prepare=_load_scheduled_members,
)
