"""The clients one process holds (MongoDB, S3, repository, worker), opened and closed together."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.monitoring import CommandListener

from export_service import db as dbmod
from export_service import devstate
from export_service.encoding.processes import EncoderProcesses, default_processes
from export_service.metrics import ScrapeRefresh
from export_service.queue.estimates import QueueEstimates
from export_service.queue.gauges import queue_gauges
from export_service.queue.repository import ExportRepository
from export_service.queue.worker import Worker
from export_service.retention import Retention
from export_service.settings import Settings
from export_service.storage import Storage
from export_service.webhooks.delivery import Dispatcher
from export_service.webhooks.gauges import outbox_gauges
from export_service.webhooks.notifier import Notifier
from export_service.webhooks.outbox import Outbox

Doc = dict[str, Any]


def mongo_uri(settings: Settings) -> str:
    if settings.mongo_uri is not None:
        return settings.mongo_uri.get_secret_value()
    return f"mongodb://127.0.0.1:{settings.embedded_mongo_port}/?directConnection=true"


def s3_endpoint(settings: Settings) -> str | None:
    if settings.s3_endpoint_url:
        return settings.s3_endpoint_url
    if settings.embedded:
        return f"http://127.0.0.1:{settings.embedded_s3_port}"
    return None  # AWS: region and credentials from the standard AWS_* variables


def s3_credentials(settings: Settings) -> tuple[str, str] | None:
    """Static keys when configured; any keys for the embedded server; else AWS's own chain."""
    if settings.s3_access_key_id is not None and settings.s3_secret_access_key is not None:
        return (
            settings.s3_access_key_id.get_secret_value(),
            settings.s3_secret_access_key.get_secret_value(),
        )
    if settings.embedded and not settings.s3_endpoint_url:
        return ("embedded", "embedded")
    return None


def dev_jwt_secret(settings: Settings) -> str:
    """The configured secret, or (embedded mode only) a random one kept in the data dir."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    if not settings.embedded:
        raise RuntimeError("EXPORT_SERVICE_JWT_SECRET or EXPORT_SERVICE_JWT_PUBLIC_KEY is required")
    path = Path(settings.data_dir) / devstate.SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def encoder_processes(settings: Settings) -> EncoderProcesses | None:
    """The worker's encoder processes (started on first use), or None to encode in-process."""
    processes = settings.encoder_processes
    if processes is None:
        processes = default_processes()
    return EncoderProcesses(processes) if processes > 0 else None


@dataclass(slots=True)
class Services:
    settings: Settings
    client: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]
    # The same database as the exporters read it (the source read preference).
    source_db: AsyncDatabase[Doc]
    storage: Storage
    repository: ExportRepository
    worker: Worker
    encoders: EncoderProcesses | None
    outbox: Outbox
    # Every terminal transition hands the export to `notifier.ended()` (contract §11).
    notifier: Notifier
    # Started beside the worker loop by the processes that run a worker.
    dispatcher: Dispatcher
    estimates: QueueEstimates
    # Started beside the worker loop too: the retention sweep (contract §13).
    retention: Retention
    # Set before each `/metrics` scrape: the gauges the queue and the outbox read from MongoDB.
    gauges: tuple[ScrapeRefresh, ...]

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        create_buckets: bool | None = None,
        listeners: Sequence[CommandListener] = (),
    ) -> AsyncIterator[Services]:
        client = dbmod.connect(mongo_uri(settings), settings, listeners=listeners)
        try:
            db: AsyncDatabase[Doc] = client[settings.mongo_db]
            source_db = dbmod.source_database(client, settings)
            await dbmod.ensure_indexes(db, settings)
            async with Storage.open(
                settings, s3_endpoint(settings), s3_credentials(settings)
            ) as storage:
                if create_buckets if create_buckets is not None else settings.embedded:
                    await storage.ensure_buckets(list(settings.buckets.values()))
                repository = ExportRepository(db, max_concurrent=settings.max_concurrent_exports)
                encoders = encoder_processes(settings)
                outbox = Outbox(db)
                notifier = Notifier(repository, outbox, settings.webhooks)
                worker = Worker(
                    repository, source_db, storage, settings, encoders=encoders, notifier=notifier
                )
                dispatcher = Dispatcher(notifier, storage, settings, owner=worker.worker_id)
                try:
                    yield cls(
                        settings,
                        client,
                        db,
                        source_db,
                        storage,
                        repository,
                        worker,
                        encoders,
                        outbox=outbox,
                        notifier=notifier,
                        dispatcher=dispatcher,
                        estimates=QueueEstimates(repository, slots=settings.max_concurrent_exports),
                        retention=Retention(repository, storage, settings, owner=worker.worker_id),
                        gauges=(queue_gauges(repository), outbox_gauges(outbox)),
                    )
                finally:
                    await dispatcher.close()
                    if encoders is not None:
                        await encoders.close()
        finally:
            await client.close()
