"""The rows of the joined types (codeAssignments, codeWaves, waitlist) computed in plain Python
from the source documents, to compare with what the exporters write (contract §6, §12).

Deliberately naive: every document is looked at, no index, no merge join, no batching. A row's
user qualifies when one of their entries of the campaign passes the filters and the cut; the
contact fields are those of the earliest such entry (by `date.created`, then `_id`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from export_service.encoding.formatting import cell, date, text
from export_service.models import ExportFilters

Doc = dict[str, Any]
Row = list[str]


def passes(doc: Doc, filters: ExportFilters | None, cut: datetime) -> bool:
    """Whether an entry is read by a join under `filters`, cut at `cut` (date.triggered)."""
    created = (doc.get("date") or {}).get("created")
    if filters is None or not filters.any:
        return not (isinstance(created, datetime) and created >= cut)
    if not isinstance(created, datetime) or created >= cut:
        return False
    if filters.created_from is not None and created < filters.created_from:
        return False
    if filters.created_to is not None and created >= filters.created_to:
        return False
    return not filters.market_ids or doc.get("marketId") in filters.market_ids


def contacts(
    entries: Iterable[Doc], campaign_id: str, filters: ExportFilters | None, cut: datetime
) -> dict[str, Doc]:
    """user id → `fields` of their earliest entry that passes."""
    earliest: dict[str, Doc] = {}
    for doc in entries:
        user = doc.get("userId")
        if doc.get("campaignId") != campaign_id or not isinstance(user, str):
            continue
        if not passes(doc, filters, cut):
            continue
        key = ((doc.get("date") or {}).get("created") or datetime.min, doc["_id"])
        held = earliest.get(user)
        if held is None or key < held["key"]:
            earliest[user] = {"key": key, "fields": doc.get("fields") or {}}
    return {user: held["fields"] for user, held in earliest.items()}


def _listed(doc: Doc, filters: ExportFilters | None) -> bool:
    return filters is None or not filters.market_ids or doc.get("marketId") in filters.market_ids


def _filtered(filters: ExportFilters | None) -> bool:
    return filters is not None and filters.any


def assignment_rows(
    codes: Iterable[Doc],
    entries: Iterable[Doc],
    markets: dict[str, str],
    campaign_id: str,
    filters: ExportFilters | None,
    cut: datetime,
    date_key: str | None = None,
) -> list[Row]:
    """codeAssignments (or codeWaves with `date_key`): assigned codes in (assignedTo, _id) order."""
    joined = contacts(entries, campaign_id, filters, cut)
    chosen = [
        c
        for c in codes
        if c.get("campaignId") == campaign_id
        and c.get("assignedTo") is not None
        and (date_key is None or c.get("waveDateKey") == date_key)
        and _listed(c, filters)
        and (not _filtered(filters) or c.get("assignedTo") in joined)
    ]
    chosen.sort(key=lambda c: (c["assignedTo"], c["_id"]))
    return [
        [
            cell(c.get("code")),
            cell(c["assignedTo"]),
            cell(joined.get(c["assignedTo"], {}).get("email")),
            cell(c.get("marketId")),
            text(markets.get(str(c.get("marketId")), "")),
            date((c.get("date") or {}).get("assigned")),
        ]
        for c in chosen
    ]


def waitlist_rows(
    scoring: Iterable[Doc],
    waves: Iterable[Doc],
    entries: Iterable[Doc],
    markets: dict[str, str],
    campaign_id: str,
    filters: ExportFilters | None,
    cut: datetime,
) -> list[Row]:
    """waitlist: non-selected records of users in no SCHEDULED wave, in (userId, _id) order."""
    joined = contacts(entries, campaign_id, filters, cut)
    scheduled = {
        member
        for wave in waves
        if wave.get("campaignId") == campaign_id and wave.get("status") == "SCHEDULED"
        for member in wave.get("memberIds") or ()
    }
    chosen = [
        r
        for r in scoring
        if r.get("campaignId") == campaign_id
        and r.get("selected") is False
        and r.get("userId") not in scheduled
        and _listed(r, filters)
        and (not _filtered(filters) or r.get("userId") in joined)
    ]
    chosen.sort(key=lambda r: (r["userId"], r["_id"]))
    rows: list[Row] = []
    for r in chosen:
        fields = joined.get(r["userId"], {})
        rows.append(
            [
                cell(r["userId"]),
                cell(fields.get("email")),
                text(fields.get("first_name")),
                text(fields.get("last_name")),
                cell(fields.get("phone")),
                cell(r.get("marketId")),
                text(markets.get(str(r.get("marketId")), "")),
                cell(r.get("score")),
            ]
        )
    return rows
