"""What S3 holds, as the server answers (not as the writer believes)."""

from __future__ import annotations

import hashlib
from typing import Any

from export_service.runtime import Services
from export_service.storage import Storage


async def object_keys(storage: Storage, bucket: str) -> list[str]:
    answer = await storage.client.list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in answer.get("Contents") or [])


async def multipart_uploads(storage: Storage, bucket: str) -> list[dict[str, Any]]:
    answer = await storage.client.list_multipart_uploads(Bucket=bucket)
    return [dict(u) for u in answer.get("Uploads") or []]


async def download(storage: Storage, bucket: str, key: str) -> bytes:
    answer = await storage.client.get_object(Bucket=bucket, Key=key)
    async with answer["Body"] as stream:
        data: bytes = await stream.read()
    return data


async def object_sha256(storage: Storage, bucket: str, key: str) -> tuple[str, int]:
    """sha256 and size of the object as S3 serves it."""
    body = await download(storage, bucket, key)
    return hashlib.sha256(body).hexdigest(), len(body)


async def leftovers(services: Services) -> list[str]:
    """Every object and unfinished multipart upload in the service's buckets (`bucket/key`)."""
    found = []
    for bucket in services.settings.buckets.values():
        found += [f"{bucket}/{key}" for key in await object_keys(services.storage, bucket)]
        uploads = await multipart_uploads(services.storage, bucket)
        found += [f"{bucket}/{upload['Key']} (upload)" for upload in uploads]
    return found
