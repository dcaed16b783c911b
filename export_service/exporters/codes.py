"""`codes`: one row per code of the campaign (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Iterable

from export_service.encoding.formatting import cell, date
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

CODE_COLUMNS = ("code", "type", "status", "market_id", "assigned_to", "assigned_at")


def _code_row(ctx: Context, doc: Doc) -> Iterable[Row]:
    yield [
        cell(doc.get("code")),
        cell(doc.get("type")),
        cell(doc.get("status")),
        cell(doc.get("marketId")),
        cell(doc.get("assignedTo")),
        date((doc.get("date") or {}).get("assigned")),
    ]


_SOURCE = Source(
    "codes",
    campaign_filter,
    {"code": 1, "type": 1, "status": 1, "marketId": 1, "assignedTo": 1, "date.assigned": 1},
)

CODES = ExporterSpec(
    export_type=ExportType.CODES,
    source=_SOURCE,
    columns=lambda ctx: CODE_COLUMNS,
    transform=per_doc(_code_row),
    count=count_source(_SOURCE),
)
