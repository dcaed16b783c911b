"""Runs one export: preliminary count, one indexed cursor, batch transform, sink, progress."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from export_service.errors import NoMarketsFound
from export_service.exporters.sinks import CsvSink, Sink, SinkTarget
from export_service.exporters.spec import Context, ExporterSpec, Layout
from export_service.models import StoredFile
from export_service.storage import ObjectWriter

# (bucket, key, acl, content type) → a writer whose upload the worker tracks for clean-up.
WriterFactory = Callable[[str, str, str | None, str], ObjectWriter]

# (rows done so far) → awaited after every batch; the worker reports progress through it.
ProgressFn = Callable[[int], Awaitable[None]]
TotalFn = Callable[[int], Awaitable[None]]
SinkFactory = Callable[[ExporterSpec, Context, SinkTarget], Sink]


def object_base_key(ctx: Context) -> str:
    export = ctx.export
    return f"{export.campaign_id}/{export.export_type.value}/{export.id}"


def _csv_sink(spec: ExporterSpec, ctx: Context, target: SinkTarget) -> Sink:
    return CsvSink(target)


# Layout → sink; modules with other layouts register theirs here.
SINKS: dict[Layout, SinkFactory] = {Layout.CSV: _csv_sink}


def default_sink(spec: ExporterSpec, ctx: Context, target: SinkTarget) -> Sink:
    return SINKS[spec.layout](spec, ctx, target)


async def load_markets(ctx: Context) -> None:
    cursor = ctx.db["markets"].find({"campaignId": ctx.campaign_id})
    ctx.markets = {doc["_id"]: doc async for doc in cursor}


async def run_export(
    spec: ExporterSpec,
    ctx: Context,
    *,
    open_writer: WriterFactory,
    on_total: TotalFn,
    on_progress: ProgressFn,
    sink_factory: SinkFactory = default_sink,
) -> tuple[list[StoredFile], int]:
    """Stream the export to S3; returns its files and row count. Cleans up on any failure."""
    if spec.needs_markets:
        await load_markets(ctx)
        if not ctx.markets:
            raise NoMarketsFound(f"NoMarketsFound: campaign {ctx.campaign_id} has no markets")
    if spec.prepare is not None:
        await spec.prepare(ctx)
    if spec.count is not None:
        await on_total(await spec.count(ctx))

    settings = ctx.settings
    bucket = settings.bucket(spec.bucket)
    acl = spec.acl if settings.s3_acl_enabled else None
    target = SinkTarget(
        bucket=bucket,
        acl=acl,
        base_key=object_base_key(ctx),
        columns=list(spec.columns(ctx)),
        open_writer=lambda key, content_type: open_writer(bucket, key, acl, content_type),
    )
    sink = sink_factory(spec, ctx, target)
    source = spec.source
    rows_done = 0
    try:
        cursor = ctx.db[source.collection].find(
            source.filter(ctx),
            source.projection,
            sort=list(source.sort),
            batch_size=settings.batch_size,
        )
        # Whole batches at a time: one await per batch instead of one per document.
        while batch := await cursor.to_list(settings.batch_size):
            rows = await spec.transform(ctx, batch)
            await sink.write(rows)
            rows_done += len(rows)
            await on_progress(rows_done)
        if spec.finish is not None:
            rows = await spec.finish(ctx)
            await sink.write(rows)
            rows_done += len(rows)
            await on_progress(rows_done)
        files = await sink.close()
    except BaseException:
        await sink.abort()
        raise
    return files, sum(f.rows for f in files)
