"""S3: streaming multipart writes, signed URLs, deletes and clean-up of unfinished uploads.

Every call is bounded by an asyncio timeout (a stalled endpoint can otherwise hang a request,
e.g. on `Expect: 100-continue`), and botocore's standard retry mode retries 5xx and dropped
connections. An object becomes visible only when its multipart upload completes, so a failed or
aborted export never leaves a half-written object behind.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aioboto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from export_service import metrics
from export_service.errors import StorageError
from export_service.settings import Settings

log = structlog.get_logger(__name__)

# Errors worth one more attempt of our own after botocore's retries gave up: a stalled call
# (our timeout) or a connection dropped at a moment botocore does not retry.
_TRANSIENT = (TimeoutError, BotoCoreError)


@dataclass(frozen=True, slots=True)
class WrittenObject:
    bucket: str
    key: str
    bytes: int
    sha256: str


class Storage:
    def __init__(self, client: Any, settings: Settings) -> None:
        self._s3 = client
        self._settings = settings

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, endpoint_url: str | None, credentials: tuple[str, str] | None
    ) -> AsyncIterator[Storage]:
        config = Config(
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
        session = (
            aioboto3.Session(aws_access_key_id=credentials[0], aws_secret_access_key=credentials[1])
            if credentials
            else aioboto3.Session()
        )
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                session.client("s3", endpoint_url=endpoint_url, config=config)
            )
            yield cls(client, settings)

    @property
    def client(self) -> Any:
        return self._s3

    async def call(self, operation: str, **params: Any) -> Any:
        """One S3 operation, bounded in time, retried once more on a transient failure."""
        method: Callable[..., Awaitable[Any]] = getattr(self._s3, operation)
        attempts = 2
        for attempt in range(1, attempts + 1):
            try:
                async with asyncio.timeout(self._settings.s3_call_timeout_seconds):
                    return await method(**params)
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
        url: str = await self._s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": key},
            ExpiresIn=self._settings.signed_url_ttl_seconds,
        )
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

    def writer(
        self,
        bucket: str,
        key: str,
        *,
        acl: str | None,
        content_type: str,
        on_start: Callable[[str | None], Awaitable[None]],
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> ObjectWriter:
        return ObjectWriter(
            self,
            bucket,
            key,
            acl=acl if self._settings.s3_acl_enabled else None,
            content_type=content_type,
            part_size=self._settings.s3_part_size_bytes,
            concurrency=self._settings.s3_upload_concurrency,
            on_start=on_start,
            before_commit=before_commit,
        )


class ObjectWriter:
    """Streams bytes to one S3 object in parts, hashing as it goes.

    Memory stays at about (concurrency + 1) parts whatever the object's size. Small objects
    (under one part) go up in a single PutObject at close. `on_start` is told the upload id
    before the first byte goes out, so a crash can always be cleaned up by someone else.
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
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._in_flight: list[asyncio.Task[dict[str, Any]]] = []
        self._started = False
        # Set once this writer asks S3 to make the object visible: only from then on can an
        # object under the key be its own (another run of the same export writes the same key).
        self._committing = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self._hash.update(data)
        self._size += len(data)
        self._buffer += data
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
        body = bytes(self._buffer)
        self._buffer.clear()
        number = len(self._parts) + len(self._in_flight) + 1
        self._in_flight.append(asyncio.create_task(self._upload_part(number, body)))
        if len(self._in_flight) >= self._concurrency:
            done = self._in_flight.pop(0)
            self._parts.append(await done)

    async def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        answer = await self._storage.call(
            "upload_part",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        metrics.S3_BYTES.labels(self.bucket).inc(len(body))
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def close(self) -> WrittenObject:
        if self._upload_id is None:
            await self._on_start(None)
            self._started = True
            body = bytes(self._buffer)
            self._buffer.clear()
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
            self._parts.sort(key=lambda p: p["PartNumber"])
            await self._commit()
            try:
                await self._storage.call(
                    "complete_multipart_upload",
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
            except StorageError as exc:
                if exc.payload.get("s3_code") == "NoSuchUpload":
                    # Aborted by whoever took the export over: the object is not ours.
                    self._committing = False
                raise
        return WrittenObject(self.bucket, self.key, self._size, self._hash.hexdigest())

    async def _commit(self) -> None:
        if self._before_commit is not None:
            await self._before_commit()
        self._committing = True

    async def abort(self) -> None:
        """Cancel parts in flight and remove the upload, and the object if this writer may
        have made it: never one that a newer run of the same export wrote under the key."""
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._in_flight.clear()
        if self._started:
            await self._storage.abort_upload(
                self.bucket, self.key, self._upload_id, remove_object=self._committing
            )
