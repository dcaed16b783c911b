"""The worker: the queue loop of one process.

`process()` is one step: sweep stale exports (past their timeout, or whose worker stopped
beating), claim the oldest PENDING one and run it to an end; `run()` loops it with a wake-up
event and the polling interval; `drain()` steps until the queue is empty (tests); `shutdown()`
stops claiming and gives the running export its grace. The life of one run (its lease and
heartbeat, ownership checks, supervision, producing the file) is `queue.run.ExportRun`.

The worker reads and writes only the `exports` collection, through `ExportRepository`; the run
reads the source collections. Nothing here is ever cancelled inside a driver call: a shutdown
stops the running export with an event (see `queue.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.asynchronous.database import AsyncDatabase

from export_service import metrics
from export_service.encoding.processes import EncoderProcesses
from export_service.errors import CcpaDeleted, EncoderStartFailed, ExportFailed, WorkerLost
from export_service.exporters.spool import remove_leftover_spools
from export_service.liveness import Liveness
from export_service.models import Export, ExportStatus, utcnow
from export_service.queue.repository import (
    CCPA_OWNER,
    ExportRepository,
    ExportUploads,
    PendingUpload,
)
from export_service.queue.run import (
    BatchHook,
    ExportRun,
    Outcome,
    RunEnvironment,
    clean_uploads,
    log_fields,
    resumes,
)
from export_service.settings import Settings
from export_service.storage import Storage
from export_service.webhooks.notifier import Notifier
from export_service.webhooks.outbox import Outbox

log = structlog.get_logger(__name__)

# The events of the ends a sweep records, the names the running worker logs: one name, one state.
_ENDED_EVENT = {
    ExportStatus.FINISHED: "export_finished",
    ExportStatus.FAILED: "export_failed",
    ExportStatus.EXPIRED: "export_expired",
}


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
        encoders: EncoderProcesses | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.repository = repository
        # Given every export this worker (or its sweep) ends, before the end is reported.
        self.notifier = notifier or Notifier(
            repository, Outbox(repository.database), settings.webhooks
        )
        self.db = db
        self.storage = storage
        self.settings = settings
        # Where CSV encoding runs for types with an encoder; None: in this process.
        self.encoders = encoders
        self.worker_id = worker_id or new_worker_id()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._current: asyncio.Task[Export | None] | None = None
        self._ended: list[asyncio.Queue[Export]] = []
        # Per running export: set when a user cancels it, by its heartbeat (any process's API)
        # or at once by `cancel_requested` (this process's API).
        self._cancels: dict[str, asyncio.Event] = {}
        self._claimed: list[asyncio.Queue[Export]] = []
        # Ticked by every turn of the loop and every beat of a running export: `/heartbeat`.
        self.liveness = Liveness(settings.liveness_timeout_millis / 1000)
        self._runs = RunEnvironment(
            repository=repository,
            db=db,
            storage=storage,
            settings=settings,
            worker_id=self.worker_id,
            encoders=encoders,
            liveness=self.liveness,
            # Set by `shutdown()` past its grace: the running export is stopped and re-queued.
            abort=asyncio.Event(),
            owes_events=self.notifier.owes_events,
        )

    @property
    def batch_hook(self) -> BatchHook | None:
        """Awaited after every batch with the rows done so far; tests use it to hold an export
        mid-run without sleeping, and to observe progress. Read by the run at each batch."""
        return self._runs.batch_hook

    @batch_hook.setter
    def batch_hook(self, hook: BatchHook | None) -> None:
        self._runs.batch_hook = hook

    # ---- control ------------------------------------------------------------------------

    def notify(self) -> None:
        """An export was just created in this process: claim it now, not at the next tick."""
        self._wake.set()

    def cancel_requested(self, export_id: str) -> None:
        """This process's API just recorded a cancel: stop the export now if it runs here,
        without waiting for its next heartbeat to read it from MongoDB."""
        event = self._cancels.get(export_id)
        if event is not None:
            event.set()

    def subscribe(self) -> asyncio.Queue[Export]:
        """A queue receiving every export this worker leaves (terminal or re-queued)."""
        queue: asyncio.Queue[Export] = asyncio.Queue()
        self._ended.append(queue)
        return queue

    def watch_claims(self) -> asyncio.Queue[Export]:
        """A queue receiving every export this worker claims, as soon as it is TRIGGERED."""
        queue: asyncio.Queue[Export] = asyncio.Queue()
        self._claimed.append(queue)
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
        log.info("worker_started", worker_id=self.worker_id)
        # A worker that died (SIGKILL, OOM) left its spools behind; live runs' are locked.
        remove_leftover_spools(self.settings.spool_dir)
        if self.encoders is not None:
            # Now rather than with the first export's first batch; if they cannot start, that
            # export retries them (and fails with the reason).
            try:
                await self.encoders.start()
            except EncoderStartFailed as exc:
                log.warning("encoder_start_failed", error=f"{type(exc).__name__}: {exc}")
        while not self._stopping.is_set():
            self.liveness.tick()
            # Cleared before the step, not after: a notify() that arrives while the step runs
            # (an export created just after its claim found nothing) must not be lost.
            self._wake.clear()
            try:
                ran = await self.process()
            except Exception as exc:
                # The database or S3 is away, or one document is bad: keep polling, the next
                # tick may find them back. Anything escaping here would end the loop for good
                # while the process (and, under `serve`, its API) looks alive.
                log.warning("worker_step_failed", error=f"{type(exc).__name__}: {exc}")
                ran = None
            self.liveness.tick()
            if ran is not None:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
        log.info("worker_stopped", worker_id=self.worker_id)

    async def drain(self) -> list[Export]:
        """Process until nothing is claimable; returns the exports it ran."""
        done: list[Export] = []
        while (export := await self.process()) is not None:
            done.append(export)
        return done

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop claiming; give the running export `grace` seconds, then abort and re-queue it.

        The abort is an event the export's supervisor waits on, not a cancel: the export may
        be recording its outcome (a driver call) at that moment.
        """
        self._stopping.set()
        self._wake.set()
        current = self._current
        if current is None or current.done():
            return
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        done, _ = await asyncio.wait({current}, timeout=grace)
        if not done:
            self._runs.abort.set()
            await asyncio.wait({current})

    # ---- one step -----------------------------------------------------------------------

    async def process(self) -> Export | None:
        """Sweep, claim one export and run it to an end. `None` when nothing was claimed."""
        await self.sweep()
        if self._stopping.is_set():
            return None
        export = await self.repository.claim(self.worker_id)
        if export is None:
            return None
        for queue in self._claimed:
            queue.put_nowait(export)
        self._current = asyncio.create_task(self._run_one(export))
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
            # An export still TRIGGERED under our id while we run nothing is one whose outcome
            # we could not record (the database was away): take it back now, without waiting
            # for its heartbeat to go stale.
            orphans_of=None if self.busy else self.worker_id,
        )
        swept = 0
        expired_before = utcnow() - timeout
        for item in stale:
            export = item.export
            if export.worker_id == self.worker_id and self.busy:
                continue  # our own run enforces its own timeout
            outcome = await self._settle(item, expired_before)
            if outcome is None:
                continue  # someone else moved it first
            swept += 1
            ended = outcome.ended
            if ended is not None:
                await self.clean_uploads(item.uploads)
            # The running worker's event names, with `by="sweep"`: one name means one state.
            swept_log = log.bind(**log_fields(export), by="sweep", previous_worker=export.worker_id)
            if ended is None:
                metrics.EXPORTS_REQUEUED.labels(export.export_type.value, "worker_lost").inc()
                swept_log.warning("export_requeued", reason="worker_lost")
            else:
                metrics.EXPORTS_ENDED.labels(export.export_type.value, ended.value).inc()
                swept_log.warning(_ENDED_EVENT[ended], attempts=export.attempts)
                await self._notify(export.id)
        return swept

    async def _settle(self, item: ExportUploads, expired_before: datetime) -> Outcome | None:
        """End or re-queue one stale export (a compare-and-set on its holder); None if it
        changed meanwhile. The uploads of an ended export are the caller's to clean."""
        export, owner = item.export, item.export.worker_id
        triggered = export.date.get("triggered")
        if triggered is not None and triggered < expired_before:
            changed = await self.repository.expire(export.id, owner)
            return Outcome.EXPIRED if changed else None
        if export.cancel_requested:
            # Cancelled, then its worker died before carrying the cancel out.
            changed = await self.repository.end_cancelled(export.id, owner)
            return Outcome.CANCELLED if changed else None
        if owner == CCPA_OWNER:
            # A CCPA request took it and stopped before deleting it: it must never run
            # again with the user's rows; a repeat of the request deletes the document.
            error: ExportFailed = CcpaDeleted("taken by a CCPA deletion request")
            changed = await self.repository.fail(export.id, owner, error)
            return Outcome.FAILED if changed else None
        if export.attempts >= self.settings.max_attempts:
            error = WorkerLost("the worker running this export stopped")
            changed = await self.repository.fail(export.id, owner, error)
            return Outcome.FAILED if changed else None
        # A new run writes the same keys, so the dead run's uploads are cleaned before the
        # export can be claimed again, and the dead run is fenced off first. A resumable type
        # keeps its upload and checkpoint: the next run checks and resumes it (or aborts it
        # and starts over).
        keep = resumes(export)
        if not await self.repository.reassign(export.id, owner, self.worker_id):
            return None
        if not keep:
            await self.clean_uploads(item.uploads)
        changed = await self.repository.requeue(export.id, self.worker_id, keep_uploads=keep)
        return Outcome.REQUEUED if changed else None

    async def _notify(self, export: Export | str) -> None:
        """Put the webhook events of an export we ended into the outbox."""
        if isinstance(export, str):
            await self.notifier.ended_id(export)
        else:
            await self.notifier.ended(export)

    async def clean_uploads(self, uploads: list[PendingUpload]) -> None:
        """Abort unfinished uploads and remove any object under their keys; errors logged."""
        await clean_uploads(self.storage, uploads)

    async def _run_one(self, export: Export) -> Export | None:
        """Run a claimed export; the export as it then stands (terminal or re-queued)."""
        cancel = self._cancels[export.id] = asyncio.Event()
        try:
            return await ExportRun(self._runs, export, cancel).execute(self._ended_run)
        finally:
            self._cancels.pop(export.id, None)

    async def _ended_run(self, final: Export) -> None:
        if final.terminal:
            await self._notify(final)
        for queue in self._ended:
            queue.put_nowait(final)
