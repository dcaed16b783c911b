"""`codes`: one row per code of the campaign (contract §6)."""

from __future__ import annotations

from export_service import sources
from export_service.encoding.rows import code_row
from export_service.exporters.spec import (
    ExporterSpec,
    Source,
    campaign_filter,
    count_source,
    doc_rows,
)
from export_service.models import ExportType

CODE_COLUMNS = ("code", "type", "status", "market_id", "assigned_to", "assigned_at")

_SOURCE = Source(
    sources.CODES,
    campaign_filter,
    {"code": 1, "type": 1, "status": 1, "marketId": 1, "assignedTo": 1, "date.assigned": 1},
)

CODES = ExporterSpec(
    export_type=ExportType.CODES,
    source=_SOURCE,
    columns=lambda ctx: CODE_COLUMNS,
    encoder=doc_rows(code_row),
    count=count_source(_SOURCE),
)
