"""Runs one export: preliminary count, one indexed cursor, batch transform, sink, progress."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol, cast

import bson

from export_service.encoding.batch import BatchEncoder, EncodedBatch
from export_service.encoding.processes import EncoderProcesses
from export_service.errors import NoMarketsFound
from export_service.exporters.checkpoint import Checkpoint, resumable
from export_service.exporters.layouts import SinkFactory, open_sink
from export_service.exporters.sinks import CsvSink, OpenWriter, Sink, SinkTarget
from export_service.exporters.spec import Context, ExporterSpec, Layout, Source
from export_service.models import StoredFile
from export_service.sources import campaign_markets
from export_service.storage import ObjectWriter, Storage, WriterState

# (source, ctx) → the source's documents in raw BSON batches (concatenated documents, as
# `find_raw_batches` gives them). The runner decodes them, so a replayed source (the
# benchmark's) goes through the same decoding as the database cursor.
BatchReader = Callable[[Source, Context], AsyncGenerator[bytes]]


class RunControl(Protocol):
    """The run an export is produced for: what the runner tells it and asks it.

    Any method may raise to stop the export (lost, cancelled, asked to stop); the runner then
    aborts what it wrote, unless `interrupted` says the run only stops and the export goes on.
    """

    @property
    def checkpoints(self) -> bool:
        """Whether a resumable run records a checkpoint per uploaded part (contract §14)."""
        ...

    async def total(self, rows: int) -> None:
        """The rows the export will have (from the spec's count, or once all are known)."""

    async def progress(self, rows: int) -> None:
        """Rows done so far, after every batch."""

    async def upload_started(self, bucket: str, key: str, upload_id: str | None) -> None:
        """An object is about to be written: before its first byte, so it can be cleaned up."""

    async def still_ours(self) -> None:
        """Right before an object is made visible: raises if it must not be."""

    async def object_started(self, bucket: str, key: str) -> None:
        """A single PutObject is about to make an object visible: `upload_started` and
        `still_ours` in one step (an export of small objects pays one round trip each)."""

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """A new checkpoint of a resumable run."""

    def interrupted(self, exc: BaseException) -> bool:
        """Whether a failure only interrupts the run (it runs again and may resume), so that
        the upload recorded on the export is left for the next run instead of aborted."""
        ...


class Unsupervised:
    """A run nobody watches (the benchmark, pipeline tests): nothing recorded, no checkpoints."""

    checkpoints = False

    async def total(self, rows: int) -> None:
        return None

    async def progress(self, rows: int) -> None:
        return None

    async def upload_started(self, bucket: str, key: str, upload_id: str | None) -> None:
        return None

    async def still_ours(self) -> None:
        return None

    async def object_started(self, bucket: str, key: str) -> None:
        return None

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        return None

    def interrupted(self, exc: BaseException) -> bool:
        return False


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
        # cancel it, which can leave the driver's locks held (see `queue.run`).
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
    ctx.markets = await campaign_markets(ctx.db, ctx.campaign_id)


async def run_export(
    spec: ExporterSpec,
    ctx: Context,
    run: RunControl,
    storage: Storage,
    *,
    sink_factory: SinkFactory = open_sink,
    read: BatchReader = read_cursor,
    encoders: EncoderProcesses | None = None,
    resume: Checkpoint | None = None,
) -> tuple[list[StoredFile], int]:
    """Stream the export to S3; returns its files and row count. Cleans up on any failure.

    `read` supplies each source's documents; the default is the database cursor. A spec with
    an encoder has its batches encoded by `encoders` when given, else in this process.

    A resumable spec (`checkpoint.resumable`) of a run that `checkpoints` reports a checkpoint
    per uploaded part and, given `resume` (a checkpoint whose parts the caller checked on S3),
    goes on from it.
    """
    if spec.needs_markets:
        await load_markets(ctx)
        if not ctx.markets:
            raise NoMarketsFound(f"campaign {ctx.campaign_id} has no markets")
    if spec.prepare is not None:
        await spec.prepare(ctx)
    total: int | None = None
    if spec.count is not None:
        # A resumed run reads the first run's cut, so the first run's count stands.
        known = resume.total if resume is not None else None
        total = known if known is not None else await spec.count(ctx)
        await run.total(total)

    settings = ctx.settings
    bucket = settings.bucket(spec.bucket)
    # The one place the ACL is decided: what the object gets is what its file records.
    acl = spec.acl if settings.s3_acl_enabled else None
    target = SinkTarget(
        bucket=bucket,
        acl=acl,
        base_key=object_base_key(ctx),
        columns=list(spec.columns(ctx)),
        open_writer=_object_writers(run, storage, bucket, acl),
    )
    sink = sink_factory(spec, ctx, target)
    checkpointed = run.checkpoints and resumable(spec) and isinstance(sink, CsvSink)
    rows_done = 0
    if checkpointed:
        assert isinstance(sink, CsvSink)
        rows_done = await _start_checkpoints(run, sink, ctx, resume, total)
    try:
        await _write_rows(spec, ctx, run, sink, read, encoders, rows_done, checkpointed)
        files = await sink.close()
    except BaseException as exc:
        if checkpointed and run.interrupted(exc):
            assert isinstance(sink, CsvSink)
            await sink.abort(keep_recorded=True)
        else:
            await sink.abort()
        raise
    return files, sum(f.rows for f in files)


def _object_writers(run: RunControl, storage: Storage, bucket: str, acl: str | None) -> OpenWriter:
    """Writers whose uploads the run records before their first byte, and that ask the run
    whether the export is still its own right before making an object visible."""

    def open_writer(key: str, content_type: str) -> ObjectWriter:
        async def started(upload_id: str | None) -> None:
            await run.upload_started(bucket, key, upload_id)

        async def put() -> None:
            await run.object_started(bucket, key)

        return storage.writer(
            bucket,
            key,
            acl=acl,
            content_type=content_type,
            on_start=started,
            before_commit=run.still_ours,
            before_put=put,
        )

    return open_writer


async def _start_checkpoints(
    run: RunControl, sink: CsvSink, ctx: Context, resume: Checkpoint | None, total: int | None
) -> int:
    """Report the sink's checkpoints to the run and go on from `resume`; the rows done."""
    bucket, key = sink.writer.bucket, sink.key

    async def checkpoint(state: WriterState) -> None:
        cut = ctx.export.date.get("triggered")
        await run.checkpoint(Checkpoint.of(bucket, key, state, cut, total))

    sink.writer.on_checkpoint = checkpoint
    if resume is None:
        return 0
    sink.resume(resume.writer_state(), resume.rows)
    ctx.resume_after = resume.last_id
    await run.progress(resume.rows)
    return resume.rows


async def _write_rows(
    spec: ExporterSpec,
    ctx: Context,
    run: RunControl,
    sink: Sink,
    read: BatchReader,
    encoders: EncoderProcesses | None,
    rows_done: int,
    checkpointed: bool,
) -> None:
    """Every row into the sink (not closed), with the run told of progress after each batch."""
    codec_options = ctx.db.codec_options

    def batch_last_id(raw: bytes) -> Any:
        if not checkpointed:
            return None
        return spec.source.document_id(bson.decode(last_document(raw), codec_options))

    # Whole batches at a time: one await per batch instead of one per document. Closed at once
    # on failure, so the batch asked for ahead and the cursor go with it.
    async with contextlib.aclosing(_read_ahead(read(spec.source, ctx))) as batches:
        if spec.encoder is not None:
            assert isinstance(sink, CsvSink)  # an encoder's spec has the CSV layout
            encoded = _encoded(batches, spec.encoder(ctx), encoders, batch_last_id)
            async with contextlib.aclosing(encoded) as encoded_batches:
                async for batch, last_id in encoded_batches:
                    rows_done += batch.rows
                    await sink.write_encoded(batch, (rows_done, last_id))
                    await run.progress(rows_done)
        else:
            assert spec.transform is not None
            async for raw in batches:
                rows = await spec.transform(ctx, bson.decode_all(raw, codec_options))
                await sink.write(rows)
                rows_done += len(rows)
                await run.progress(rows_done)
    if spec.finish is not None:
        rows = await spec.finish(ctx)
        await sink.write(rows)
        rows_done += len(rows)
        await run.progress(rows_done)
    if spec.layout is not Layout.CSV and spec.count is None:
        # The files are written from the spool now: their rows are all known.
        await run.total(rows_done)
