"""S3 faults (contract §5, §8): the worker talks to moto through a fault-injecting proxy.

What S3 holds is always checked straight at moto, never through the proxy.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings

import pytest

from export_service.errors import StorageError
from export_service.models import ExportStatus, ExportType
from export_service.runtime import Services
from export_service.storage import RUN_HALTED
from tests.support.data import CAMPAIGN, seed_big_entries
from tests.support.faults import (
    COMPLETE_MPU,
    CREATE_MPU,
    PUT_OBJECT,
    UPLOAD_PART,
    operations,
)
from tests.support.proxied import proxied
from tests.support.s3 import object_sha256


async def add_codes(services: Services, n: int = 5) -> None:
    await services.db["codes"].insert_many(
        [{"_id": f"c{i}", "campaignId": CAMPAIGN, "code": f"CODE{i}", "status": "AVAILABLE"}
         for i in range(n)]
    )  # fmt: skip


async def test_part_errors_and_dropped_connections_still_give_exact_objects(
    mongo_uri: str, s3_endpoint: str
) -> None:
    async with proxied(mongo_uri, s3_endpoint) as env:
        services = env.services
        # 140 rows of 110 kB: 15 MB, three 5 MiB parts per export.
        await seed_big_entries(services, n=140)
        await add_codes(services)
        (baseline,) = await env.queue(ExportType.ENTRIES)
        (reference,) = await services.worker.drain()
        assert reference.status is ExportStatus.FINISHED
        await services.db["exports"].delete_one({"_id": baseline.id})

        # 10 % of part uploads answered 500/503 (botocore's standard mode retries them), and
        # 5 % of writes lose their connection: before reaching S3, or (parts) after S3 took
        # the part, so that the client cannot know it was stored.
        fails = env.proxy.fail_rate(0.10, statuses=(500, 503), match=UPLOAD_PART, seed=15)
        drops = env.proxy.drop_rate(
            0.05, match=operations(UPLOAD_PART, CREATE_MPU, COMPLETE_MPU, PUT_OBJECT), seed=9
        )
        lost_answers = env.proxy.drop_rate(0.05, match=UPLOAD_PART, seed=22, after_forward=True)
        exports = await env.queue(ExportType.ENTRIES, 4) + await env.queue(ExportType.CODES)
        done = await services.worker.drain()

        assert sorted(e.id for e in done) == sorted(e.id for e in exports)
        assert fails.injected >= 2 and drops.injected + lost_answers.injected >= 2, env.proxy.faults
        expected = reference.files[0].sha256
        for export in done:
            assert export.status is ExportStatus.FINISHED, export.error
            (stored,) = export.files
            assert await object_sha256(env.direct, stored.bucket, stored.key) == (
                stored.sha256,
                stored.bytes,
            )
            if export.export_type is ExportType.ENTRIES:
                assert stored.sha256 == expected and stored.rows == 140
        keys, uploads = await env.leftovers()
        assert uploads == []  # every retried part ended in a completed upload
        print(
            f"\nS3 faults injected: {dict(env.proxy.faults)}; requests: {dict(env.proxy.requests)}"
        )
        assert keys == sorted([reference.files[0].key] + [e.files[0].key for e in done])


async def test_stalled_s3_fails_the_export_within_the_call_timeout(
    mongo_uri: str, s3_endpoint: str
) -> None:
    timeout = 0.5
    async with proxied(mongo_uri, s3_endpoint, s3_call_timeout_seconds=timeout) as env:
        services = env.services
        await seed_big_entries(services)
        (export,) = await env.queue(ExportType.ENTRIES)
        # The endpoint takes the part and never answers; everything else still works.
        stall = env.proxy.stall(match=UPLOAD_PART)
        started = time.monotonic()
        (done,) = await services.worker.drain()
        elapsed = time.monotonic() - started

        assert done.id == export.id
        assert done.status is ExportStatus.FAILED
        assert done.error is not None and done.error["code"] == "StorageError"
        assert "upload_part" in done.error["message"]
        assert "Timeout" in done.error["message"]
        # Retried once (our own retry after the call timeout), then given up: bounded by
        # a few call timeouts, far from the 30-minute export timeout.
        assert stall.injected >= 2
        assert elapsed < 12 * timeout, elapsed
        assert await env.leftovers() == ([], [])  # the open multipart upload was aborted


@pytest.mark.parametrize(
    ("export_type", "operation", "call"),
    [
        (ExportType.ENTRIES, COMPLETE_MPU, "complete_multipart_upload"),
        (ExportType.CODES, PUT_OBJECT, "put_object"),
    ],
)
async def test_access_denied_fails_the_export_with_a_clear_code_and_leaves_nothing(
    mongo_uri: str, s3_endpoint: str, export_type: ExportType, operation: str, call: str
) -> None:
    async with proxied(mongo_uri, s3_endpoint) as env:
        services = env.services
        await seed_big_entries(services)
        await add_codes(services)
        (export,) = await env.queue(export_type)
        denied = env.proxy.fail_always(403, "AccessDenied", match=operation)
        (done,) = await services.worker.drain()

        assert done.id == export.id
        assert done.status is ExportStatus.FAILED
        assert done.error == {
            "code": "StorageError",
            "message": f"S3 {call} failed: AccessDenied",
        }
        assert denied.injected == 1  # not retried: AccessDenied will not go away
        assert done.files == [] and done.count is None
        assert await env.leftovers() == ([], [])
        # The failed export released its dedupe key: asking again makes a new export.
        (again,) = await env.queue(export_type)
        assert again.id != export.id


async def test_a_write_of_a_stopping_run_is_not_sent_nor_left_unawaited(services: Services) -> None:
    """A run already stopping sends no S3 write: the call fails at once, the object is not
    written, and no request coroutine is made and dropped (it would never be awaited)."""
    bucket = services.settings.bucket_exports
    halted = asyncio.Event()
    halted.set()
    token = RUN_HALTED.set(halted)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(StorageError, match="not sent: the run is stopping"):
                await services.storage.call("put_object", Bucket=bucket, Key="k", Body=b"x")
            gc.collect()  # a dropped coroutine warns when it is collected
    finally:
        RUN_HALTED.reset(token)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert not await services.storage.exists(bucket, "k")
