"""`scoring`: one row per scoring record, for the scoring bucket (contract §6)."""

from __future__ import annotations

from export_service import sources
from export_service.encoding.rows import scoring_row
from export_service.exporters.spec import (
    BUCKET_OWNER_FULL_CONTROL,
    ExporterSpec,
    Source,
    campaign_filter,
    count_source,
    doc_rows,
)
from export_service.models import ExportType
from export_service.settings import BucketRole

SCORING_COLUMNS = ("user_id", "entry_id", "market_id", "score", "rank", "selected")

_SOURCE = Source(
    sources.SCORING,
    campaign_filter,
    {"userId": 1, "entryId": 1, "marketId": 1, "score": 1, "rank": 1, "selected": 1},
)

SCORING = ExporterSpec(
    export_type=ExportType.SCORING,
    source=_SOURCE,
    columns=lambda ctx: SCORING_COLUMNS,
    encoder=doc_rows(scoring_row),
    bucket=BucketRole.SCORING,
    acl=BUCKET_OWNER_FULL_CONTROL,
    ccpa=False,
    count=count_source(_SOURCE),
)
