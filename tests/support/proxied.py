"""Services whose S3 goes through a fault proxy, and a direct look at what moto holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from export_service.models import Export, ExportType
from export_service.runtime import Services, s3_credentials
from export_service.storage import Storage
from tests.support.app import make_settings
from tests.support.data import queue_exports
from tests.support.faults import S3FaultProxy
from tests.support.s3 import multipart_uploads, object_keys


@dataclass
class Proxied:
    services: Services  # its storage goes through the proxy
    direct: Storage  # straight to moto
    proxy: S3FaultProxy

    @property
    def bucket(self) -> str:
        return self.services.settings.bucket_exports

    async def queue(self, export_type: ExportType, n: int = 1) -> list[Export]:
        return await queue_exports(self.services, n, export_type)

    async def leftovers(self) -> tuple[list[str], list[dict[str, Any]]]:
        return (
            await object_keys(self.direct, self.bucket),
            await multipart_uploads(self.direct, self.bucket),
        )


@asynccontextmanager
async def proxied(mongo_uri: str, s3_endpoint: str, **overrides: Any) -> AsyncIterator[Proxied]:
    proxy = await S3FaultProxy.start(s3_endpoint)
    settings = make_settings(mongo_uri, proxy.url, **overrides)
    try:
        async with (
            Services.open(settings, create_buckets=True) as services,
            Storage.open(settings, s3_endpoint, s3_credentials(settings)) as direct,
        ):
            try:
                yield Proxied(services, direct, proxy)
            finally:
                await services.client.drop_database(settings.mongo_db)
    finally:
        await proxy.close()
