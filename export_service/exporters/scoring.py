"""`scoring`: one row per scoring record, for the scoring bucket (DESIGN §6)."""

from __future__ import annotations

from collections.abc import Iterable

from export_service.encoding.formatting import cell
from export_service.exporters.spec import (
    BUCKET_OWNER_FULL_CONTROL,
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

SCORING_COLUMNS = ("user_id", "entry_id", "market_id", "score", "rank", "selected")


def _scoring_row(ctx: Context, doc: Doc) -> Iterable[Row]:
    yield [
        cell(doc.get("userId")),
        cell(doc.get("entryId")),
        cell(doc.get("marketId")),
        cell(doc.get("score")),
        cell(doc.get("rank")),
        cell(bool(doc.get("selected"))),
    ]


_SOURCE = Source(
    "scoring",
    campaign_filter,
    {"userId": 1, "entryId": 1, "marketId": 1, "score": 1, "rank": 1, "selected": 1},
)

SCORING = ExporterSpec(
    export_type=ExportType.SCORING,
    source=_SOURCE,
    columns=lambda ctx: SCORING_COLUMNS,
    transform=per_doc(_scoring_row),
    bucket=BucketRole.SCORING,
    acl=BUCKET_OWNER_FULL_CONTROL,
    ccpa=False,
    count=count_source(_SOURCE),
)
