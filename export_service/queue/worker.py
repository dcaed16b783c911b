"""The worker: claim the oldest PENDING export, run it, record the outcome.

`process()` is one step (sweep stale exports, claim one, run it to an end); `run()` loops it with
a wake-up event and the polling interval; `drain()` steps until the queue is empty (tests).
The worker never touches the driver: persistence goes through `ExportRepository`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from export_service import metrics
from export_service.errors import CampaignNotFound, ExportFailed, ExportLost, ExportServiceError
from export_service.exporters import spec_for
from export_service.exporters.runner import run_export
from export_service.exporters.spec import Context
from export_service.models import Export, ExportStatus, StoredFile, utcnow
from export_service.queue.repository import ExportRepository, PendingUpload
from export_service.settings import Settings
from export_service.storage import ObjectWriter, Storage

log = structlog.get_logger(__name__)

BatchHook = Callable[[Export, int], Awaitable[None]]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        repository: ExportRepository,
        db: AsyncDatabase[dict[str, Any]],
        storage: Storage,
        settings: Settings,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.repository = repository
        self.db = db
        self.storage = storage
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._current: asyncio.Task[Export | None] | None = None
        self._aborting = False
        # Awaited after every batch with the rows done so far; tests use it to hold an export
        # mid-run without sleeping, and to observe progress.
        self.batch_hook: BatchHook | None = None
        self._ended: list[asyncio.Queue[Export]] = []

    # ---- control ------------------------------------------------------------------------

    def notify(self) -> None:
        """An export was just created in this process: claim it now, not at the next tick."""
        self._wake.set()

    def subscribe(self) -> asyncio.Queue[Export]:
        """A queue receiving every export this worker leaves (terminal or re-queued)."""
        queue: asyncio.Queue[Export] = asyncio.Queue()
        self._ended.append(queue)
        return queue

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def busy(self) -> bool:
        return self._current is not None and not self._current.done()

    async def run(self) -> None:
        """Loop until `shutdown()`; errors of one step are logged and the loop goes on."""
        interval = self.settings.polling_interval_millis / 1000
        log.info("worker_started", action="worker_started", worker_id=self.worker_id)
        while not self._stopping.is_set():
            try:
                ran = await self.process()
            except (PyMongoError, ExportServiceError, OSError) as exc:
                # The database or S3 is away: keep polling, the next tick may find it back.
                log.warning("worker_step_failed", action="worker_step_failed", error=str(exc))
                ran = None
            if ran is not None:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
        log.info("worker_stopped", action="worker_stopped", worker_id=self.worker_id)

    async def drain(self) -> list[Export]:
        """Process until nothing is claimable; returns the exports it ran."""
        done: list[Export] = []
        while (export := await self.process()) is not None:
            done.append(export)
        return done

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop claiming; give the running export `grace` seconds, then abort and re-queue it."""
        self._stopping.set()
        self._wake.set()
        current = self._current
        if current is None or current.done():
            return
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        done, _ = await asyncio.wait({current}, timeout=grace)
        if not done:
            self._aborting = True
            current.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await current

    # ---- one step -----------------------------------------------------------------------

    async def process(self) -> Export | None:
        """Sweep, claim one export and run it to an end. `None` when nothing was claimed."""
        await self.sweep()
        if self._stopping.is_set():
            return None
        export = await self.repository.claim(self.worker_id)
        if export is None:
            return None
        self._current = asyncio.create_task(self._execute(export))
        try:
            return await self._current
        finally:
            self._current = None

    async def sweep(self) -> int:
        """End exports past their timeout and re-queue those whose worker stopped beating."""
        timeout = timedelta(milliseconds=self.settings.timeout_millis)
        stale = await self.repository.stale(
            run_timeout=timeout,
            heartbeat_timeout=timedelta(milliseconds=self.settings.heartbeat_timeout_millis),
        )
        swept = 0
        now = utcnow()
        for doc in stale:
            export = Export.from_doc(doc)
            if export.worker_id == self.worker_id and self.busy:
                continue  # our own run enforces its own timeout
            owner = doc.get("workerId")
            triggered = export.date.get("triggered")
            if triggered is not None and triggered < now - timeout:
                changed = await self.repository.expire(export.id, owner)
                outcome = ExportStatus.EXPIRED
            elif export.attempts >= self.settings.max_attempts:
                changed = await self.repository.fail(
                    export.id, owner, "WorkerLost", "the worker running this export stopped"
                )
                outcome = ExportStatus.FAILED
            else:
                changed = await self.repository.requeue(export.id, owner)
                outcome = ExportStatus.PENDING
            if not changed:
                continue
            swept += 1
            await self._clean_uploads([PendingUpload.from_doc(u) for u in doc.get("uploads") or []])
            metrics.EXPORTS_ENDED.labels(export.export_type.value, outcome.value).inc()
            log.warning(
                "export_swept",
                action="export_swept",
                export_id=export.id,
                campaign_id=export.campaign_id,
                export_type=export.export_type.value,
                outcome=outcome.value,
                dead_worker=owner,
            )
        return swept

    async def _clean_uploads(self, uploads: list[PendingUpload]) -> None:
        for upload in uploads:
            try:
                await self.storage.abort_upload(upload.bucket, upload.key, upload.upload_id)
            except ExportServiceError as exc:
                log.error("upload_cleanup_failed", action="upload_cleanup_failed", error=str(exc))

    # ---- running one export -------------------------------------------------------------

    async def _execute(self, export: Export) -> Export | None:
        structlog.contextvars.bind_contextvars(
            export_id=export.id,
            campaign_id=export.campaign_id,
            export_type=export.export_type.value,
        )
        started = time.perf_counter()
        log.info("export_triggered", action="export_triggered", worker_id=self.worker_id)
        progress = {"rows": 0}
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(export, progress, lost))
        run = asyncio.create_task(self._produce(export, progress))
        try:
            outcome = await self._supervise(export, run, lost)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            structlog.contextvars.unbind_contextvars("export_id", "campaign_id", "export_type")
        metrics.EXPORT_DURATION.labels(export.export_type.value).observe(
            time.perf_counter() - started
        )
        final = await self.repository.get(export.id)
        if final is not None:
            metrics.EXPORTS_ENDED.labels(final.export_type.value, final.status.value).inc()
            for queue in self._ended:
                queue.put_nowait(final)
        log.info("export_ended", action="export_ended", export_id=export.id, outcome=outcome)
        return final

    async def _supervise(
        self, export: Export, run: asyncio.Task[tuple[list[StoredFile], int]], lost: asyncio.Event
    ) -> str:
        """Wait for the run, the deadline, or the loss of the export; record the outcome."""
        triggered = export.date.get("triggered") or utcnow()
        deadline = timedelta(milliseconds=self.settings.timeout_millis)
        remaining = max(0.0, (triggered + deadline - utcnow()).total_seconds())
        lost_wait = asyncio.create_task(lost.wait())
        try:
            done, _ = await asyncio.wait(
                {run, lost_wait}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            # Shutdown past its grace (or the process is going away): abort and re-queue.
            await _cancel(run)
            await self.repository.requeue(export.id, self.worker_id)
            log.warning("export_requeued", action="export_requeued", reason="shutdown")
            if self._aborting:
                return "requeued"
            raise
        finally:
            lost_wait.cancel()
        if run not in done:
            await _cancel(run)
            if lost.is_set():
                log.warning("export_lost", action="export_lost")
                return "lost"
            await self.repository.expire(export.id, self.worker_id)
            log.warning("export_expired", action="export_expired")
            return "expired"
        try:
            files, count = run.result()
        except ExportLost:
            return "lost"
        except ExportServiceError as exc:
            await self.repository.fail(export.id, self.worker_id, exc.code, exc.message)
            log.warning("export_failed", action="export_failed", code=exc.code, error=exc.message)
            return "failed"
        except Exception as exc:
            await self.repository.fail(
                export.id, self.worker_id, "InternalError", f"{type(exc).__name__}: {exc}"
            )
            log.exception("export_failed", action="export_failed", code="InternalError")
            return "failed"
        if not await self.repository.finish(export.id, self.worker_id, files, count):
            # Expired or deleted while completing: the files must not outlive the export.
            await self._clean_uploads([PendingUpload(f.bucket, f.key, None) for f in files])
            log.warning("export_lost", action="export_lost", stage="finish")
            return "lost"
        metrics.EXPORT_ROWS.labels(export.export_type.value).observe(count)
        log.info("export_finished", action="export_finished", rows=count, files=len(files))
        return "finished"

    async def _produce(
        self, export: Export, progress: dict[str, int]
    ) -> tuple[list[StoredFile], int]:
        spec = spec_for(export.export_type)
        if spec is None:
            raise ExportFailed(f"export type {export.export_type.value} is not available")
        campaign = await self.db["campaigns"].find_one({"_id": export.campaign_id})
        if campaign is None:
            raise CampaignNotFound(f"CampaignNotFound: campaign {export.campaign_id} is gone")
        ctx = Context(export=export, db=self.db, settings=self.settings, campaign=campaign)

        async def on_total(total: int) -> None:
            if not await self.repository.set_total(export.id, self.worker_id, total):
                raise ExportLost()

        async def on_progress(rows: int) -> None:
            progress["rows"] = rows
            if self.batch_hook is not None:
                await self.batch_hook(export, rows)

        def open_writer(bucket: str, key: str, acl: str | None, content_type: str) -> ObjectWriter:
            async def on_start(upload_id: str | None) -> None:
                upload = PendingUpload(bucket, key, upload_id)
                if not await self.repository.add_upload(export.id, self.worker_id, upload):
                    raise ExportLost()

            return self.storage.writer(
                bucket, key, acl=acl, content_type=content_type, on_start=on_start
            )

        before = self.storage.bytes_uploaded
        try:
            return await run_export(
                spec, ctx, open_writer=open_writer, on_total=on_total, on_progress=on_progress
            )
        finally:
            metrics.S3_BYTES.inc(self.storage.bytes_uploaded - before)

    async def _heartbeat(
        self, export: Export, progress: dict[str, int], lost: asyncio.Event
    ) -> None:
        interval = self.settings.heartbeat_interval_millis / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                mine = await self.repository.heartbeat(export.id, self.worker_id, progress["rows"])
            except PyMongoError as exc:
                # A missed beat is not fatal; the sweep only acts after heartbeat_timeout.
                log.warning("heartbeat_failed", action="heartbeat_failed", error=str(exc))
                continue
            if not mine:
                lost.set()
                return


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
