"""S3: streaming multipart writes, signed URLs, deletes and clean-up of unfinished uploads.

Every call is bounded by an asyncio timeout (a stalled endpoint can otherwise hang a request,
e.g. on `Expect: 100-continue`), and botocore's standard retry mode retries 5xx and dropped
connections. An object becomes visible only when its multipart upload completes, so a failed or
aborted export never leaves a half-written object behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from rehashes import PySha256

from export_service import metrics, telemetry

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
from export_service.caches import SignedUrls
from export_service.errors import Halted, StorageError
from export_service.halting import unless_halted
from export_service.settings import Settings

log = structlog.get_logger(__name__)

# Set by the worker inside a run: once set, the run's S3 writes in flight are cut short, so a
# cancelled or expired run stops within moments even when S3 holds a request. (S3 calls may be
# cancelled, unlike driver calls: see `queue.run`.) Clean-up calls are never cut short.
RUN_HALTED: ContextVar[asyncio.Event | None] = ContextVar("run_halted", default=None)
_WRITES = frozenset(
    {"create_multipart_upload", "upload_part", "put_object", "complete_multipart_upload"}
)

# Errors worth one more attempt of our own after botocore's retries gave up: a stalled call
# (our timeout) or a connection dropped at a moment botocore does not retry.
_TRANSIENT = (TimeoutError, BotoCoreError)


async def _unless_halted(
    halt: asyncio.Event, operation: str, call: Callable[[], Awaitable[Any]]
) -> Any:
    # `call` makes the request's coroutine only once it is to be sent: one made and dropped
    # for a run already stopping would never be awaited.
    if halt.is_set():
        raise StorageError(f"S3 {operation} not sent: the run is stopping", operation=operation)
    try:
        return await unless_halted(halt, call())
    except Halted:
        raise StorageError(
            f"S3 {operation} cut short: the run is stopping", operation=operation
        ) from None


@dataclass(frozen=True, slots=True)
class WrittenObject:
    bucket: str
    key: str
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class UploadedPart:
    number: int
    etag: str
    size: int

    def to_doc(self) -> dict[str, Any]:
        return {"PartNumber": self.number, "ETag": self.etag, "size": self.size}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> UploadedPart:
        return cls(int(doc["PartNumber"]), str(doc["ETag"]), int(doc["size"]))


@dataclass(frozen=True, slots=True)
class WriterState:
    """What a multipart writer has made durable: its upload, the parts 1..n uploaded, the bytes
    they hold and the SHA-256 state after their last byte (`rehashes`, 104 bytes), plus the
    caller's `mark` of where in its input the last part ended."""

    upload_id: str
    parts: tuple[UploadedPart, ...]
    size: int
    sha256_state: bytes
    mark: Any


# Awaited with the writer's state each time one more part (and all before it) is uploaded.
CheckpointFn = Callable[[WriterState], Awaitable[None]]


class Storage:
    def __init__(self, client: S3Client, settings: Settings) -> None:
        self._s3 = client
        self._settings = settings
        self._urls = SignedUrls(settings.signed_url_ttl_seconds, settings.signed_url_cache_size)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, endpoint_url: str | None, credentials: tuple[str, str] | None
    ) -> AsyncIterator[Storage]:
        config = AioConfig(
            region_name=settings.s3_region,
            signature_version="s3v4",
            retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
            connect_timeout=min(10.0, settings.s3_call_timeout_seconds),
            read_timeout=settings.s3_call_timeout_seconds,
            s3={"addressing_style": settings.s3_addressing_style},
            max_pool_connections=max(10, settings.s3_upload_concurrency * 4),
            # We hash every byte ourselves (sha256 in files[]); botocore's default CRC32 of each
            # part would be a second pass over the data on the export's hot path.
            request_checksum_calculation="when_required",
        )
        # aiobotocore directly: aioboto3's resource layer and extras were never used.
        key_id, secret = credentials if credentials else (None, None)
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    endpoint_url=endpoint_url,
                    config=config,
                    aws_access_key_id=key_id,
                    aws_secret_access_key=secret,
                )
            )
            yield cls(client, settings)

    @property
    def client(self) -> S3Client:
        return self._s3

    async def call(self, operation: str, **params: Any) -> Any:
        """One S3 operation, bounded in time, retried once more on a transient failure."""
        method: Callable[..., Awaitable[Any]] = getattr(self._s3, operation)
        halt = RUN_HALTED.get() if operation in _WRITES else None
        attempts = 2
        for attempt in range(1, attempts + 1):
            try:
                with telemetry.only_in_trace():  # a child span of the run's or request's
                    async with asyncio.timeout(self._settings.s3_call_timeout_seconds):
                        if halt is None:
                            return await method(**params)
                        return await _unless_halted(halt, operation, lambda: method(**params))
            except _TRANSIENT as exc:
                if attempt == attempts:
                    raise StorageError(
                        f"S3 {operation} failed: {type(exc).__name__}: {exc}",
                        operation=operation,
                    ) from exc
                log.warning("s3_retry", operation=operation, error=str(exc))
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "Unknown")
                raise StorageError(
                    f"S3 {operation} failed: {code}", operation=operation, s3_code=code
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def ping(self) -> None:
        await self.call("head_bucket", Bucket=self._settings.bucket_exports)

    async def ensure_buckets(self, names: Sequence[str]) -> None:
        for name in names:
            try:
                await self.call("head_bucket", Bucket=name)
            except StorageError:
                await self.call("create_bucket", Bucket=name)

    async def exists(self, bucket: str, key: str) -> bool:
        try:
            await self.call("head_object", Bucket=bucket, Key=key)
        except StorageError as exc:
            if exc.payload.get("s3_code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def presign(self, bucket: str, key: str) -> str:
        """A download URL valid `signed_url_ttl_seconds`; one signed less than a tenth of that
        ago is handed out again (signing is CPU work on every GET: README "What a GET costs")."""
        cached = self._urls.get(bucket, key)
        if cached is not None:
            return cached
        signed_at = self._urls.now()
        url: str = await self._s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": key},
            ExpiresIn=self._settings.signed_url_ttl_seconds,
        )
        self._urls.put(bucket, key, url, signed_at)
        return url

    async def delete(self, bucket: str, keys: Sequence[str]) -> None:
        """Delete keys (missing ones are fine: delete is idempotent in S3)."""
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            answer = await self.call(
                "delete_objects",
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if errors:
                # The keys let a caller tell what is gone from what is still there.
                raise StorageError(
                    f"S3 delete_objects failed for {len(errors)} keys",
                    bucket=bucket,
                    keys=[e.get("Key") for e in errors],
                )

    async def abort_upload(
        self, bucket: str, key: str, upload_id: str | None, *, remove_object: bool = True
    ) -> None:
        """Remove whatever an unfinished write left: the multipart upload and (unless told
        otherwise) any object under its key."""
        if upload_id:
            try:
                await self.call(
                    "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id
                )
            except StorageError as exc:
                if exc.payload.get("s3_code") not in ("NoSuchUpload", "404"):
                    raise
        if remove_object:
            await self.delete(bucket, [key])

    async def uploaded_parts(
        self, bucket: str, key: str, upload_id: str
    ) -> list[UploadedPart] | None:
        """The parts S3 holds for an unfinished upload; None when the upload is gone."""
        parts: list[UploadedPart] = []
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
        while True:
            try:
                answer = await self.call("list_parts", **params)
            except StorageError as exc:
                if exc.payload.get("s3_code") in ("NoSuchUpload", "404", "NoSuchKey"):
                    return None
                raise
            parts += [
                UploadedPart(int(p["PartNumber"]), str(p["ETag"]), int(p["Size"]))
                for p in answer.get("Parts") or []
            ]
            if not answer.get("IsTruncated"):
                return parts
            params["PartNumberMarker"] = answer["NextPartNumberMarker"]

    def writer(
        self,
        bucket: str,
        key: str,
        *,
        acl: str | None,
        content_type: str,
        on_start: Callable[[str | None], Awaitable[None]],
        before_commit: Callable[[], Awaitable[None]] | None = None,
        on_checkpoint: CheckpointFn | None = None,
        before_put: Callable[[], Awaitable[None]] | None = None,
    ) -> ObjectWriter:
        """A writer of one object; `acl` is applied as given (the runner decides it)."""
        return ObjectWriter(
            self,
            bucket,
            key,
            acl=acl,
            content_type=content_type,
            part_size=self._settings.s3_part_size_bytes,
            concurrency=self._settings.s3_upload_concurrency,
            on_start=on_start,
            before_commit=before_commit,
            on_checkpoint=on_checkpoint,
            before_put=before_put,
        )


class ObjectWriter:
    """Streams bytes to one S3 object in parts, hashing as it goes.

    Memory stays at about (concurrency + 1) parts whatever the object's size. Small objects
    (under one part) go up in a single PutObject at close. `on_start` is told the upload id
    before the first byte goes out, so a crash can always be cleaned up by someone else; a
    single PutObject is preceded by `before_put` when given (it records the object and checks
    that it may be made visible, in one step), else by `on_start(None)` and `before_commit`.

    A part holds whole `write()` calls (a part is cut only after a call), so the `mark` given
    with the last call of a part says where the caller's input stands at the part's end.
    `on_checkpoint` is awaited once per part, in part order, after that part and every part
    before it are uploaded: a run that stops can be resumed from there (`resume`).
    """

    def __init__(
        self,
        storage: Storage,
        bucket: str,
        key: str,
        *,
        acl: str | None,
        content_type: str,
        part_size: int,
        concurrency: int,
        on_start: Callable[[str | None], Awaitable[None]],
        before_commit: Callable[[], Awaitable[None]] | None = None,
        on_checkpoint: CheckpointFn | None = None,
        before_put: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self._storage = storage
        self._extra: dict[str, Any] = {"ContentType": content_type}
        if acl:
            self._extra["ACL"] = acl
        self._part_size = part_size
        self._concurrency = concurrency
        self._on_start = on_start
        # Awaited right before the object is made visible; raising there keeps it invisible.
        self._before_commit = before_commit
        # `on_start(None)` and `before_commit` in one call, for an object that goes up in a
        # single PutObject (both are awaited right before it anyway).
        self._before_put = before_put
        self.on_checkpoint = on_checkpoint
        self._buffer = bytearray()
        # Resumable (its state serialises), unlike hashlib's; as fast (both ~320 MB/s here).
        self._hash = PySha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[UploadedPart] = []
        self._in_flight: list[asyncio.Task[UploadedPart]] = []
        # Parts uploaded, by number, with the writer's state at their end, until checkpointed.
        self._uploaded: dict[int, tuple[UploadedPart, int, bytes, Any]] = {}
        self._durable: list[UploadedPart] = []
        self._checkpointing = asyncio.Lock()
        self._mark: Any = None
        self._started = False
        # Once the upload id is recorded on the export, the upload belongs to the export (a
        # later run may resume it), not to this run alone.
        self.recorded = False
        # Set once this writer asks S3 to make the object visible: only from then on can an
        # object under the key be its own (another run of the same export writes the same key).
        self._committing = False

    @property
    def size(self) -> int:
        return self._size

    def resume(self, state: WriterState) -> None:
        """Continue an upload from a checkpoint whose parts the caller checked on S3."""
        self._upload_id = state.upload_id
        self._parts = list(state.parts)
        self._durable = list(state.parts)
        self._size = state.size
        self._hash = PySha256.deserialize(state.sha256_state)
        self._mark = state.mark
        self._started = True
        self.recorded = True

    async def write(self, data: bytes, mark: Any = None) -> None:
        if not data:
            return
        self._hash.update(data)
        self._size += len(data)
        self._buffer += data
        self._mark = mark
        if len(self._buffer) >= self._part_size:
            await self._ship_part()

    async def _ship_part(self) -> None:
        if self._upload_id is None:
            answer = await self._storage.call(
                "create_multipart_upload", Bucket=self.bucket, Key=self.key, **self._extra
            )
            self._upload_id = answer["UploadId"]
            self._started = True
            await self._on_start(self._upload_id)
            self.recorded = True
        body = bytes(self._buffer)
        self._buffer.clear()
        number = len(self._parts) + len(self._in_flight) + 1
        at_end = (self._size, self._hash.serialize(), self._mark)
        self._in_flight.append(asyncio.create_task(self._upload_part(number, body, at_end)))
        if len(self._in_flight) >= self._concurrency:
            done = self._in_flight.pop(0)
            self._parts.append(await done)

    async def _upload_part(
        self, number: int, body: bytes, at_end: tuple[int, bytes, Any]
    ) -> UploadedPart:
        answer = await self._storage.call(
            "upload_part",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        metrics.S3_BYTES.labels(self.bucket).inc(len(body))
        part = UploadedPart(number, answer["ETag"], len(body))
        if self.on_checkpoint is not None:
            self._uploaded[number] = (part, *at_end)
            await self._checkpoint()
        return part

    async def _checkpoint(self) -> None:
        """Report the longest run of uploaded parts from part 1, once per new part."""
        assert self.on_checkpoint is not None and self._upload_id is not None
        async with self._checkpointing:
            while (number := len(self._durable) + 1) in self._uploaded:
                part, size, hash_state, mark = self._uploaded.pop(number)
                self._durable.append(part)
                await self.on_checkpoint(
                    WriterState(self._upload_id, tuple(self._durable), size, hash_state, mark)
                )

    async def close(self) -> WrittenObject:
        if self._upload_id is None:
            body = bytes(self._buffer)
            self._buffer.clear()
            if self._before_put is not None:
                await self._before_put()
                self._started = True
                self._committing = True
            else:
                await self._on_start(None)
                self._started = True
                await self._commit()
            await self._storage.call(
                "put_object", Bucket=self.bucket, Key=self.key, Body=body, **self._extra
            )
            metrics.S3_BYTES.labels(self.bucket).inc(len(body))
        else:
            if self._buffer:
                await self._ship_part()
            for task in self._in_flight:
                self._parts.append(await task)
            self._in_flight.clear()
            self._parts.sort(key=lambda p: p.number)
            await self._commit()
            parts = [{"PartNumber": p.number, "ETag": p.etag} for p in self._parts]
            try:
                await self._storage.call(
                    "complete_multipart_upload",
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
            except StorageError as exc:
                if exc.payload.get("s3_code") == "NoSuchUpload":
                    # Aborted by whoever took the export over: the object is not ours.
                    self._committing = False
                raise
        return WrittenObject(self.bucket, self.key, self._size, self._hash.finalize())

    async def _commit(self) -> None:
        if self._before_commit is not None:
            await self._before_commit()
        self._committing = True

    async def abort(self, *, keep_recorded: bool = False) -> None:
        """Cancel parts in flight and remove the upload, and the object if this writer may
        have made it: never one that a newer run of the same export wrote under the key.

        `keep_recorded`: a run interrupted, not ended, leaves an upload recorded on the export
        (and its checkpoint) for the next run to resume; whoever ends the export aborts it."""
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._in_flight.clear()
        if keep_recorded and self.recorded and not self._committing:
            return
        if self._started:
            await self._storage.abort_upload(
                self.bucket, self.key, self._upload_id, remove_object=self._committing
            )
