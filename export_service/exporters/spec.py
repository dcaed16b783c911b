"""What an exporter is: a small declarative unit the runner executes.

An `ExporterSpec` names its source (collection, filter, projection, sort), how a batch of source
documents becomes rows, its columns, where the file goes (bucket role, ACL, layout) and whether
CCPA deletes it. The runner (`runner.py`) does the streaming, counting, uploading and progress
for all of them, so fifteen export types share one pipeline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from export_service.encoding.batch import BatchEncoder
from export_service.encoding.rows import DocRowsEncoder, RowFn
from export_service.filters import entry_clauses
from export_service.models import Export, ExportType
from export_service.settings import BucketRole, Settings

Doc = dict[str, Any]
Row = list[str]

PRIVATE = "private"
BUCKET_OWNER_FULL_CONTROL = "bucket-owner-full-control"


class Layout(StrEnum):
    CSV = "csv"  # one CSV object: {campaignId}/{exportType}/{exportId}.csv
    ZIP = "zip"  # one ZIP object of several CSVs: {campaignId}/{exportType}/{exportId}.zip
    OBJECTS = "objects"  # several CSV objects named by the spec (autoReminderEmail)


@dataclass(slots=True)
class Context:
    """What one run of one export knows; `lookups` holds what a spec's `prepare` loaded."""

    export: Export
    db: AsyncDatabase[Doc]
    settings: Settings
    campaign: Doc
    markets: dict[str, Doc] = field(default_factory=dict)
    lookups: dict[str, Any] = field(default_factory=dict)
    # A resumed run: the cursor reads only documents whose `_id` is greater (contract §14).
    resume_after: Any = None

    @property
    def campaign_id(self) -> str:
        return self.export.campaign_id

    def market_name(self, market_id: Any) -> str:
        market = self.markets.get(market_id) if isinstance(market_id, str) else None
        return str(market.get("name") or "") if market else ""


FilterFn = Callable[[Context], Doc]
TransformFn = Callable[[Context, list[Doc]], Awaitable[Sequence[Any]]]
ColumnsFn = Callable[[Context], Sequence[str]]
PrepareFn = Callable[[Context], Awaitable[None]]
FinishFn = Callable[[Context], Awaitable[Sequence[Any]]]
CountFn = Callable[[Context], Awaitable[int]]
ProjectionFn = Callable[[Context], Doc]
EncoderFn = Callable[[Context], BatchEncoder]
PartitionsFn = Callable[[Context], Sequence[Any]]
# (partition, n) → the ZIP member name or object key of that partition's n-th file (n ≥ 1).
FileNameFn = Callable[[Context, Any, int], str]


def document_id(doc: Doc) -> Any:
    return doc["_id"]


@dataclass(frozen=True, slots=True)
class Source:
    collection: str
    filter: FilterFn
    # Fixed, or made per run (e.g. one field per campaign preference).
    projection: Doc | ProjectionFn | None = None
    sort: Sequence[tuple[str, int]] = (("_id", 1),)
    # The `_id` of a document as the projection returns it (a checkpoint records the last).
    document_id: Callable[[Doc], Any] = document_id

    def query(self, ctx: Context) -> Doc:
        """This run's filter: a resumed run's cursor starts after its checkpoint's `_id`, on
        the same index as a full run (a range on `_id` after the equality fields)."""
        query = self.filter(ctx)
        if ctx.resume_after is None:
            return query
        after = {"_id": {"$gt": ctx.resume_after}}
        return {**query, **after} if "_id" not in query else {"$and": [query, after]}

    def fields(self, ctx: Context) -> Doc | None:
        """The projection of this run's query."""
        return self.projection(ctx) if callable(self.projection) else self.projection


@dataclass(frozen=True, slots=True)
class ExporterSpec:
    export_type: ExportType
    source: Source
    columns: ColumnsFn
    # A batch of source documents → rows. For Layout.ZIP/OBJECTS each row is a
    # `(partition, row)` pair, in any order: the partition names the file the row goes to,
    # and the sink spools rows until the source is read (contract §15).
    transform: TransformFn | None = None
    # Instead of `transform` (stateless CSV types): this run's encoder, from one raw batch
    # straight to CSV bytes; the runner may run it in encoder processes.
    encoder: EncoderFn | None = None
    bucket: BucketRole = BucketRole.EXPORTS
    acl: str = PRIVATE
    ccpa: bool = True
    layout: Layout = Layout.CSV
    # Fails with NoMarketsFound when the campaign has no markets (every type reading entries).
    needs_markets: bool = False
    # Counts rows before writing; None where counting costs as much as the export.
    count: CountFn | None = None
    prepare: PrepareFn | None = None
    # Rows still held by a stateful transform when the cursor is exhausted (per-user grouping).
    finish: FinishFn | None = None
    # For ZIP/OBJECTS: the name of each file, the row cap per file (None: no split) and the
    # partitions that get a file even without rows, in the order they are written (others:
    # sorted), the only ones a row may go to.
    file_name: FileNameFn | None = None
    max_rows_per_file: Callable[[Context], int] | None = None
    partitions: PartitionsFn | None = None

    def __post_init__(self) -> None:
        if (self.transform is None) == (self.encoder is None):
            raise ValueError(f"{self.export_type.value}: give a transform or an encoder")
        if self.encoder is not None and (self.layout is not Layout.CSV or self.finish is not None):
            raise ValueError(f"{self.export_type.value}: an encoder writes one CSV, statelessly")


def doc_rows(row: RowFn) -> EncoderFn:
    """The encoder of a type with one row per source document, built by `row`."""

    def encoder(ctx: Context) -> BatchEncoder:
        return DocRowsEncoder(row, ctx.db.codec_options)

    return encoder


def campaign_filter(ctx: Context) -> Doc:
    return {"campaignId": ctx.campaign_id}


def entries_filter(ctx: Context) -> Doc:
    """The campaign's entries this export reads: its filters and its cut (contract §12)."""
    return {"campaignId": ctx.campaign_id, **entry_clauses(ctx.export)}


def count_source(spec_source: Source) -> CountFn:
    """The preliminary count: one source document = one row."""

    async def count(ctx: Context) -> int:
        return await ctx.db[spec_source.collection].count_documents(spec_source.filter(ctx))

    return count
