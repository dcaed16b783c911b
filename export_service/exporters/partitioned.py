"""Sinks for partitioned exports: a ZIP of CSVs, or one CSV object per file (contract §6, §15).

Rows arrive as `(partition, row)` pairs in any order: the specs read their source once, in
user order, and say which partition each row belongs to. The sink assigns each row to its file
as it arrives (`n` = 1, 2, … split every `max_rows_per_file` rows of a partition) and spools it
(`spool.py`); once the source is read, it writes the files one after the other from the spool,
each with the header: the declared partitions (`ExporterSpec.partitions`) in their order, with a
header-only file when they had no rows, otherwise the partitions in sorted order. Within a file,
rows keep the order they arrived in. Memory: the rows not yet spooled (`_PENDING_BYTES` at
most, whatever the number of partitions) and one spooled chunk on its way out.

The ZIP is built by stream-zip, whose API is synchronous and pulls member bytes: its
`async_stream_zip` runs the zipping in a thread and asks the event loop for each chunk. Chunks
are pushed in through a small bounded queue, and the zipped bytes go straight to the multipart
writer. Members are always ZIP64 (sizes are unknown when a member starts, and big exports pass
4 GiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import zlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterable, AsyncIterator, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from stream_zip import ZIP_64, Method, async_stream_zip

from export_service.encoding.formatting import CsvEncoder
from export_service.exporters.sinks import SinkTarget
from export_service.exporters.spec import Context, ExporterSpec, FileNameFn, Row
from export_service.exporters.spool import Spool
from export_service.models import StoredFile, utcnow
from export_service.storage import ObjectWriter

CSV_TYPE: Final = "text/csv; charset=utf-8"
ZIP_TYPE: Final = "application/zip"

# Chunks waiting for the zipping thread, so this bounds the bytes in flight towards S3.
_QUEUE_ITEMS: Final = 4
# stream-zip hands over the archive in pieces of this size; one thread hop each.
_ZIP_CHUNK: Final = 256 * 1024
_MEMBER_MODE: Final = stat.S_IFREG | 0o644
# A file's encoded rows go to the spool once they reach `_CHUNK_BYTES`, and every file's once
# all of them together pass `_PENDING_BYTES`: memory stays flat however many files there are,
# and chunks stay big enough to compress well.
_CHUNK_BYTES: Final = 128 * 1024
_PENDING_BYTES: Final = 2 * 1024 * 1024


class _UndeclaredPartition(RuntimeError):
    """A spec with declared partitions sent a row of another one: a bug, never a data problem."""


class _DuplicateFileName(RuntimeError):
    """A spec's `file_name` gave two files the same name: a bug, never a data problem."""


@dataclass(slots=True)
class _File:
    partition: Any
    n: int
    rows: int = 0

    @property
    def key(self) -> Hashable:
        return (self.n, self.partition)


class PartitionedSink(ABC):
    """Spools `(partition, row)` pairs by file, then stores the files; subclasses store them."""

    def __init__(self, spec: ExporterSpec, ctx: Context, target: SinkTarget) -> None:
        if spec.file_name is None:
            raise TypeError(f"{spec.export_type.value}: a partitioned layout needs `file_name`")
        self._ctx = ctx
        self._target = target
        self._file_name: FileNameFn = spec.file_name
        self._cap = spec.max_rows_per_file(ctx) if spec.max_rows_per_file is not None else None
        # Partitions that get a file even without rows, in the order they are written.
        self._declared = list(spec.partitions(ctx)) if spec.partitions is not None else None
        self._allowed = set(self._declared) if self._declared is not None else None
        self._encoder = CsvEncoder()
        self._header = self._encoder.header(target.columns)
        # partition → its files so far, the last one being filled.
        self._routed: dict[Any, list[_File]] = {}
        self._pending: dict[Hashable, bytearray] = {}
        self._pending_bytes = 0
        self._spool: Spool | None = None
        self.rows = 0

    # ---- what subclasses store ------------------------------------------------------------

    @abstractmethod
    async def _open(self, name: str) -> None: ...

    @abstractmethod
    async def _put(self, data: bytes) -> None: ...

    @abstractmethod
    async def _end(self, rows: int) -> None: ...

    @abstractmethod
    async def _finish(self) -> list[StoredFile]: ...

    @abstractmethod
    async def _abort(self) -> None: ...

    # ---- the Sink protocol ----------------------------------------------------------------

    @property
    def spool_bytes(self) -> int:
        """Bytes the spool holds on disk now (0 before the first row and after the end)."""
        return self._spool.size if self._spool is not None else 0

    async def write(self, rows: Sequence[Any]) -> None:
        if self._spool is None:
            # At the first batch, inside the runner's clean-up: a run that writes (or fails)
            # from here on removes its spool.
            settings = self._ctx.settings
            self._spool = Spool(
                settings.spool_dir, self._ctx.export.id, max_bytes=settings.spool_max_bytes
            )
        by_file: dict[Hashable, list[Row]] = defaultdict(list)
        for partition, row in rows:
            by_file[self._file_for(partition).key].append(row)
        self.rows += len(rows)
        for key, file_rows in by_file.items():
            data = self._encoder.encode(file_rows)
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = bytearray()
            pending += data
            self._pending_bytes += len(data)
            if len(pending) >= _CHUNK_BYTES:
                self._spool_pending(key)
        if self._pending_bytes > _PENDING_BYTES:
            for key in list(self._pending):
                self._spool_pending(key)

    async def close(self) -> list[StoredFile]:
        try:
            for key in list(self._pending):
                self._spool_pending(key)
            # Every name before any byte is stored: a name that cannot be made (a region
            # without SFMC prefix) fails the export with nothing written.
            plan = [(self._name(f), f) for f in self._ordered_files()]
            names = [name for name, _ in plan]
            if len(set(names)) != len(names):
                raise _DuplicateFileName(f"two files would have the same name among {names}")
            for name, file in plan:
                await self._open(name)
                await self._put(self._header)
                if self._spool is not None:
                    for chunk in self._spool.read(file.key):
                        await self._put(chunk)
                await self._end(file.rows)
            return await self._finish()
        finally:
            self._remove_spool()

    async def abort(self) -> None:
        try:
            await self._abort()
        finally:
            self._remove_spool()

    # ---- routing --------------------------------------------------------------------------

    def _file_for(self, partition: Any) -> _File:
        files = self._routed.get(partition)
        if files is None:
            if self._allowed is not None and partition not in self._allowed:
                raise _UndeclaredPartition(f"partition {partition!r} is not declared")
            files = self._routed[partition] = [_File(partition, 1)]
        file = files[-1]
        if file.rows == self._cap:
            file = _File(partition, file.n + 1)
            files.append(file)
        file.rows += 1
        return file

    def _ordered_files(self) -> list[_File]:
        order = self._declared if self._declared is not None else sorted(self._routed)
        out: list[_File] = []
        for partition in order:
            out.extend(self._routed.get(partition) or [_File(partition, 1)])
        return out

    def _name(self, file: _File) -> str:
        return self._file_name(self._ctx, file.partition, file.n)

    # ---- spooling -------------------------------------------------------------------------

    def _spool_pending(self, key: Hashable) -> None:
        data = self._pending.pop(key)
        self._pending_bytes -= len(data)
        assert self._spool is not None  # made by the first `write`, which filled `_pending`
        self._spool.append(key, bytes(data))

    def _remove_spool(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        if self._spool is not None:
            self._spool.remove()


# ---- ZIP ------------------------------------------------------------------------------------


class _Member:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Signal:
    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


_END: Final = _Signal("end")
_ABORT: Final = _Signal("abort")
_Item = bytes | _Member | _Signal
MemberFile = tuple[str, datetime, int, Method, AsyncIterable[bytes]]


class _Aborted(Exception):
    """Raised into the zipping thread so that it stops waiting for bytes that will not come."""


def _deflate() -> Any:
    # zlib's default level: level 9 costs about twice the CPU for a CSV barely 1 % smaller.
    return zlib.compressobj(level=6, wbits=-zlib.MAX_WBITS)


class ZipSink(PartitionedSink):
    """One ZIP object, `{campaignId}/{exportType}/{exportId}.zip`, streamed as it is built."""

    def __init__(self, spec: ExporterSpec, ctx: Context, target: SinkTarget) -> None:
        super().__init__(spec, ctx, target)
        self._writer = target.open_writer(f"{target.base_key}.zip", ZIP_TYPE)
        triggered = ctx.export.date.get("triggered") or utcnow()
        self._modified = triggered.replace(tzinfo=UTC)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUE_ITEMS)
        self._pump: asyncio.Task[None] | None = None

    async def _open(self, name: str) -> None:
        await self._send(_Member(name))

    async def _put(self, data: bytes) -> None:
        await self._send(data)

    async def _end(self, rows: int) -> None:
        """A member ends where the next one (or the archive's end) is sent."""

    async def _finish(self) -> list[StoredFile]:
        await self._send(_END)
        assert self._pump is not None
        await self._pump
        written = await self._writer.close()
        return [self._target.stored(written, self.rows)]

    async def _abort(self) -> None:
        # The zipping thread may be waiting for the next chunk: hand it an abort (dropping
        # what it will never use) so that it ends instead of holding an executor thread.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_ABORT)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
        await self._writer.abort()

    async def _send(self, item: _Item) -> None:
        if self._pump is None:
            self._pump = asyncio.create_task(self._zip())
        pump = self._pump
        if pump.done():
            pump.result()  # the zipping failed: raise its error here
            raise RuntimeError("the ZIP stream ended before its last member")
        if not self._queue.full():
            self._queue.put_nowait(item)
            return
        # Wait for room, unless the zipping fails meanwhile (then nobody would make room).
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait({put, pump}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            pump.result()
            raise RuntimeError("the ZIP stream ended before its last member")

    async def _zip(self) -> None:
        chunks = async_stream_zip(self._members(), chunk_size=_ZIP_CHUNK, get_compressobj=_deflate)
        async for chunk in chunks:
            await self._writer.write(chunk)

    async def _members(self) -> AsyncIterator[MemberFile]:
        item = await self._queue.get()
        while isinstance(item, _Member):
            # stream-zip reads a member's bytes to their end before asking for the next
            # member, so the item that ended them is known by then.
            ended_by: list[_Item] = []
            yield (item.name, self._modified, _MEMBER_MODE, ZIP_64, self._bytes(ended_by))
            item = ended_by[0]
        if item is not _END:
            raise _Aborted()

    async def _bytes(self, ended_by: list[_Item]) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if isinstance(item, bytes):
                yield item
                continue
            if item is _ABORT:
                raise _Aborted()
            ended_by.append(item)
            return


# ---- several objects ------------------------------------------------------------------------


class ObjectsSink(PartitionedSink):
    """Each file its own CSV object, keyed by the spec (autoReminderEmail).

    An object is completed (a PutObject, or the multipart completion) while the next ones are
    read from the spool, up to `S3_UPLOAD_CONCURRENCY` at once: an SFMC export is dozens of
    small objects, and each completion waits for S3 and for the run's records in MongoDB.
    Memory: that many objects' unsent bytes (each under one part) at most.
    """

    def __init__(self, spec: ExporterSpec, ctx: Context, target: SinkTarget) -> None:
        super().__init__(spec, ctx, target)
        self._writers: list[ObjectWriter] = []
        self._files: list[StoredFile | None] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._concurrency = ctx.settings.s3_upload_concurrency

    async def _open(self, name: str) -> None:
        self._writers.append(self._target.open_writer(name, CSV_TYPE))

    async def _put(self, data: bytes) -> None:
        await self._writers[-1].write(data)

    async def _end(self, rows: int) -> None:
        while len(self._closing) >= self._concurrency:
            await self._settle(asyncio.FIRST_COMPLETED)
        self._files.append(None)
        closing = asyncio.create_task(self._close(self._writers[-1], rows, len(self._files) - 1))
        self._closing.add(closing)

    async def _close(self, writer: ObjectWriter, rows: int, index: int) -> None:
        written = await writer.close()
        self._files[index] = self._target.stored(written, rows)

    async def _settle(self, until: str) -> None:
        """Wait for completions (the first, or all); a failed one fails the export here."""
        done, self._closing = await asyncio.wait(self._closing, return_when=until)
        failures = [exc for task in done if (exc := task.exception()) is not None]
        if failures:
            raise failures[0]

    async def _finish(self) -> list[StoredFile]:
        while self._closing:
            await self._settle(asyncio.ALL_COMPLETED)
        files = [f for f in self._files if f is not None]
        assert len(files) == len(self._files)  # every completion ended, in file order
        return files

    async def _abort(self) -> None:
        """Remove every object of the run, completed ones included: a failed export has none."""
        # Completions in flight end first, never cancelled: they may be inside a driver call
        # (see `queue.run`), and each is bounded (S3 writes are cut short on a halt).
        closing, self._closing = self._closing, set()
        if closing:
            await asyncio.wait(closing)
            for task in closing:
                if not task.cancelled():
                    task.exception()  # retrieved: the abort below removes what it wrote
        failure: BaseException | None = None
        for writer in self._writers:
            try:
                await writer.abort()
            except Exception as exc:  # keep removing the others; report the first failure
                failure = failure or exc
        if failure is not None:
            raise failure
