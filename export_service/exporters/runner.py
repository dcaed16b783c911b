"""Runs one export: preliminary count, one indexed cursor, batch transform, sink, progress."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, cast

import bson

from export_service.encoding.batch import BatchEncoder, EncodedBatch
from export_service.encoding.processes import EncoderProcesses
from export_service.errors import NoMarketsFound
from export_service.exporters.checkpoint import Checkpoint, resumable
from export_service.exporters.layouts import SinkFactory, open_sink
from export_service.exporters.sinks import CsvSink, SinkTarget
from export_service.exporters.spec import Context, ExporterSpec, Layout, Source
from export_service.models import StoredFile
from export_service.storage import ObjectWriter, WriterState

# (bucket, key, acl, content type) → a writer whose upload the worker tracks for clean-up.
WriterFactory = Callable[[str, str, str | None, str], ObjectWriter]

# (rows done so far) → awaited after every batch; the worker reports progress through it.
ProgressFn = Callable[[int], Awaitable[None]]
TotalFn = Callable[[int], Awaitable[None]]
# (source, ctx) → the source's documents in raw BSON batches (concatenated documents, as
# `find_raw_batches` gives them). The runner decodes them, so a replayed source (the
# benchmark's) goes through the same decoding as the database cursor.
BatchReader = Callable[[Source, Context], AsyncGenerator[bytes]]
# Awaited with each new checkpoint of a resumable run (contract §14).
CheckpointFn = Callable[[Checkpoint], Awaitable[None]]
# Whether a failure only interrupts the run (it runs again and may resume), so that the upload
# recorded on the export is left for the next run instead of aborted.
InterruptedFn = Callable[[BaseException], bool]


def object_base_key(ctx: Context) -> str:
    export = ctx.export
    return f"{export.campaign_id}/{export.export_type.value}/{export.id}"


async def read_cursor(source: Source, ctx: Context) -> AsyncGenerator[bytes]:
    """The source's query as one indexed cursor (no skip/limit paging), in raw batches."""
    cursor = ctx.db[source.collection].find_raw_batches(
        source.query(ctx),
        source.fields(ctx),
        sort=list(source.sort),
        batch_size=ctx.settings.batch_size,
    )
    try:
        async for batch in cursor:
            yield cast(bytes, batch)  # typed as a document, but a raw cursor yields bytes
    finally:
        await cursor.close()


async def _read_ahead(batches: AsyncGenerator[bytes]) -> AsyncGenerator[bytes]:
    """Hand out each batch once the next one has been asked for.

    The database (or the network) then produces batch n+1 while batch n is decoded,
    transformed and uploaded, which is CPU work of this process. One batch ahead at most, so
    memory stays bounded.
    """

    async def following() -> bytes | None:
        return await anext(batches, None)

    pending = asyncio.create_task(following())
    try:
        while (batch := await pending) is not None:
            pending = asyncio.create_task(following())
            await asyncio.sleep(0)  # let the request go out before the CPU-bound work
            yield batch
    finally:
        # The batch asked for ahead is a driver call: let it end (it is bounded) rather than
        # cancel it, which can leave the driver's locks held (see `queue.worker`).
        await asyncio.wait({pending})
        if not pending.cancelled():
            pending.exception()  # retrieved: nobody wants that batch any more
        await batches.aclose()


def last_document(raw: bytes) -> bytes:
    """The last BSON document of a raw batch (each starts with its int32 little-endian size)."""
    offset = 0
    while (end := offset + int.from_bytes(raw[offset : offset + 4], "little")) < len(raw):
        offset = end
    return raw[offset:end]


async def _encoded(
    batches: AsyncIterator[bytes],
    encoder: BatchEncoder,
    processes: EncoderProcesses | None,
    last_id: Callable[[bytes], Any],
) -> AsyncGenerator[tuple[EncodedBatch, Any]]:
    """The batches encoded, in order, each with `last_id` of its raw batch: by `processes` with
    one batch more in flight than there are processes (each has its next batch while the worker
    uploads), else here, one by one."""
    if processes is None:
        async for raw in batches:
            yield encoder(raw), last_id(raw)
        return
    in_flight: deque[tuple[asyncio.Task[EncodedBatch], Any]] = deque()
    try:
        async for raw in batches:
            task = asyncio.create_task(processes.encode(encoder, raw))
            in_flight.append((task, last_id(raw)))
            if len(in_flight) > processes.processes:
                task, key = in_flight.popleft()
                yield await task, key
        while in_flight:
            task, key = in_flight.popleft()
            yield await task, key
    finally:
        for task, _ in in_flight:
            task.cancel()
        await asyncio.gather(*(task for task, _ in in_flight), return_exceptions=True)


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
    sink_factory: SinkFactory = open_sink,
    read: BatchReader = read_cursor,
    encoders: EncoderProcesses | None = None,
    on_checkpoint: CheckpointFn | None = None,
    resume: Checkpoint | None = None,
    interrupted: InterruptedFn | None = None,
) -> tuple[list[StoredFile], int]:
    """Stream the export to S3; returns its files and row count. Cleans up on any failure.

    `read` supplies each source's documents; the default is the database cursor. A spec with
    an encoder has its batches encoded by `encoders` when given, else in this process.

    A resumable spec (`checkpoint.resumable`) with `on_checkpoint` reports a checkpoint per
    uploaded part and, given `resume` (a checkpoint whose parts the caller checked on S3),
    goes on from it. A failure that `interrupted` says is an interruption leaves the recorded
    upload in place for the next run.
    """
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
    codec_options = ctx.db.codec_options
    rows_done = 0
    checkpointed = on_checkpoint is not None and resumable(spec) and isinstance(sink, CsvSink)
    if checkpointed:
        assert isinstance(sink, CsvSink) and on_checkpoint is not None
        key = sink.key
        save = on_checkpoint

        async def checkpoint(state: WriterState) -> None:
            await save(Checkpoint.of(bucket, key, state, ctx.export.date.get("triggered")))

        sink.writer.on_checkpoint = checkpoint
        if resume is not None:
            sink.resume(resume.writer_state(), resume.rows)
            rows_done = resume.rows
            ctx.resume_after = resume.last_id
            await on_progress(rows_done)

    def batch_last_id(raw: bytes) -> Any:
        if not checkpointed:
            return None
        return spec.source.document_id(bson.decode(last_document(raw), codec_options))

    try:
        # Whole batches at a time: one await per batch instead of one per document. Closed
        # at once on failure, so the batch asked for ahead and the cursor go with it.
        async with contextlib.aclosing(_read_ahead(read(spec.source, ctx))) as batches:
            if spec.encoder is not None:
                assert isinstance(sink, CsvSink)  # an encoder's spec has the CSV layout
                encoded = _encoded(batches, spec.encoder(ctx), encoders, batch_last_id)
                async with contextlib.aclosing(encoded) as encoded_batches:
                    async for batch, last_id in encoded_batches:
                        rows_done += batch.rows
                        await sink.write_encoded(batch, (rows_done, last_id))
                        await on_progress(rows_done)
            else:
                assert spec.transform is not None
                async for raw in batches:
                    rows = await spec.transform(ctx, bson.decode_all(raw, codec_options))
                    await sink.write(rows)
                    rows_done += len(rows)
                    await on_progress(rows_done)
        if spec.finish is not None:
            rows = await spec.finish(ctx)
            await sink.write(rows)
            rows_done += len(rows)
            await on_progress(rows_done)
        if spec.layout is not Layout.CSV and spec.count is None:
            # The files are written from the spool now: their rows are all known.
            await on_total(rows_done)
        files = await sink.close()
    except BaseException as exc:
        if checkpointed and interrupted is not None and interrupted(exc):
            assert isinstance(sink, CsvSink)
            await sink.abort(keep_recorded=True)
        else:
            await sink.abort()
        raise
    return files, sum(f.rows for f in files)
