"""The worker: claim the oldest PENDING export, run it, record the outcome.

`process()` is one step (sweep stale exports, claim one, run it to an end); `run()` loops it with
a wake-up event and the polling interval; `drain()` steps until the queue is empty (tests).
The worker never touches the driver: persistence goes through `ExportRepository`.

No task is ever cancelled while it may be inside a driver call. On Python < 3.13 pymongo waits
for servers and connections with `asyncio.wait_for` around a condition of its own; a cancel that
lands while that wait is being torn down releases the driver's lock without holding it
("RuntimeError: Lock is not acquired") and leaves it held for good: every later call of the
process then waits forever. So the heartbeat, the run and the whole export are stopped with
events: a run stops at its next checkpoint (after a batch, before an upload starts or commits)
or when its driver call ends, and every driver call is bounded (client timeouts, and
`pymongo.timeout` for the beats). Only waits outside the driver (a test's batch hook) are cut
short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pymongo
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from export_service import metrics, telemetry
from export_service.encoding.processes import EncoderProcesses
from export_service.errors import (
    CampaignNotFound,
    EncoderLost,
    EncoderStartFailed,
    ExportCancelled,
    ExportFailed,
    ExportLost,
    ExportServiceError,
)
from export_service.exporters import spec_for
from export_service.exporters.checkpoint import Checkpoint, resumable
from export_service.exporters.runner import run_export
from export_service.exporters.spec import Context
from export_service.exporters.spool import remove_leftover_spools
from export_service.halting import Halted, unless_halted
from export_service.liveness import Liveness
from export_service.models import Export, ExportStatus, StoredFile, utcnow
from export_service.queue.repository import CCPA_OWNER, Beat, ExportRepository, PendingUpload
from export_service.settings import Settings
from export_service.storage import RUN_HALTED, ObjectWriter, Storage
from export_service.webhooks.notifier import Notifier
from export_service.webhooks.outbox import Outbox

log = structlog.get_logger(__name__)

BatchHook = Callable[[Export, int], Awaitable[None]]


class RunStopped(Exception):
    """Raised inside a run at its next checkpoint once the worker has asked it to stop."""


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
        # Set by `shutdown()` past its grace: the running export is stopped and re-queued.
        self._abort = asyncio.Event()
        # Awaited after every batch with the rows done so far; tests use it to hold an export
        # mid-run without sleeping, and to observe progress.
        self.batch_hook: BatchHook | None = None
        self._ended: list[asyncio.Queue[Export]] = []
        # Per running export: set when a user cancels it, by its heartbeat (any process's API)
        # or at once by `cancel_requested` (this process's API).
        self._cancels: dict[str, asyncio.Event] = {}
        self._claimed: list[asyncio.Queue[Export]] = []
        # Ticked by every turn of the loop and every beat of a running export: `/heartbeat`.
        self.liveness = Liveness(settings.liveness_timeout_millis / 1000)

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
            self._abort.set()
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
            # An export still TRIGGERED under our id while we run nothing is one whose outcome
            # we could not record (the database was away): take it back now, without waiting
            # for its heartbeat to go stale.
            orphans_of=None if self.busy else self.worker_id,
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
            elif doc.get("cancelRequested"):
                # Cancelled, then its worker died before carrying the cancel out.
                changed = await self.repository.end_cancelled(export.id, owner)
                outcome = ExportStatus.FAILED
            elif owner == CCPA_OWNER:
                # A CCPA request took it and stopped before deleting it: it must never run
                # again with the user's rows; a repeat of the request deletes the document.
                changed = await self.repository.fail(
                    export.id, owner, "CcpaDeleted", "taken by a CCPA deletion request"
                )
                outcome = ExportStatus.FAILED
            elif export.attempts >= self.settings.max_attempts:
                changed = await self.repository.fail(
                    export.id, owner, "WorkerLost", "the worker running this export stopped"
                )
                outcome = ExportStatus.FAILED
            else:
                # A new run writes the same keys, so the dead run's uploads are cleaned before
                # the export can be claimed again, and the dead run is fenced off first.
                # A resumable type keeps its upload and checkpoint: the next run checks and
                # resumes it (or aborts it and starts over).
                keep = _resumes(export)
                changed = await self.repository.reassign(export.id, owner, self.worker_id)
                if changed:
                    if not keep:
                        await self.clean_uploads(uploads_of(doc))
                    changed = await self.repository.requeue(
                        export.id, self.worker_id, keep_uploads=keep
                    )
                outcome = ExportStatus.PENDING
            if not changed:
                continue
            swept += 1
            if outcome is not ExportStatus.PENDING:
                await self.clean_uploads(uploads_of(doc))
            # The running worker's event names, with `by="sweep"`: one name means one state.
            swept_log = log.bind(**_log_fields(export), by="sweep", previous_worker=owner)
            if outcome is ExportStatus.PENDING:
                metrics.EXPORTS_REQUEUED.labels(export.export_type.value, "worker_lost").inc()
                swept_log.warning("export_requeued", reason="worker_lost")
            else:
                metrics.EXPORTS_ENDED.labels(export.export_type.value, outcome.value).inc()
                swept_log.warning(_STATUS_EVENT[outcome], attempts=export.attempts)
                await self._notify(export.id)
        return swept

    async def _notify(self, export: Export | str) -> None:
        """Put the webhook events of an export we ended into the outbox."""
        if isinstance(export, str):
            await self.notifier.ended_id(export)
        else:
            await self.notifier.ended(export)

    async def clean_uploads(self, uploads: list[PendingUpload]) -> None:
        """Abort unfinished uploads and remove any object under their keys; errors logged."""
        for upload in uploads:
            try:
                await self.storage.abort_upload(upload.bucket, upload.key, upload.upload_id)
            except ExportServiceError as exc:
                log.error("upload_cleanup_failed", bucket=upload.bucket, error=str(exc))

    # ---- running one export -------------------------------------------------------------

    async def _execute(self, export: Export) -> Export | None:
        structlog.contextvars.bind_contextvars(**_log_fields(export))
        # A root span of its own (an export outlives the request that asked for it), linked to
        # that request's span through the trace context stored on the export.
        span = telemetry.tracer.start_span(
            f"export {export.export_type.value}",
            context=otel_context.Context(),
            kind=SpanKind.CONSUMER,
            links=telemetry.links_to(export.trace_context),
            attributes={
                "export.id": export.id,
                "export.type": export.export_type.value,
                "export.campaign_id": export.campaign_id,
                "export.attempt": export.attempts,
                "export.worker_id": self.worker_id,
            },
        )
        metrics.EXPORTS_RUNNING.inc()
        try:
            with trace.use_span(span, end_on_exit=True):
                return await self._run_traced(export, span)
        finally:
            metrics.EXPORTS_RUNNING.dec()
            structlog.contextvars.unbind_contextvars(*_log_fields(export))

    async def _run_traced(self, export: Export, span: trace.Span) -> Export | None:
        started = time.perf_counter()
        log.info("export_triggered", worker_id=self.worker_id, attempt=export.attempts)
        progress = {"rows": 0}
        lost = asyncio.Event()
        cancel = self._cancels[export.id] = asyncio.Event()
        if export.cancel_requested:
            cancel.set()
        halt = asyncio.Event()  # the run: stop at your next checkpoint
        beats_end = asyncio.Event()
        heartbeat = asyncio.create_task(
            self._heartbeat(export, progress, lost, cancel, halt, beats_end)
        )
        run = asyncio.create_task(self._produce(export, progress, lost, halt))
        try:
            outcome = await self._supervise(export, run, halt, lost, cancel, started)
        finally:
            self._cancels.pop(export.id, None)
            # The beat in flight, if any, ends within its own bound.
            beats_end.set()
            await asyncio.wait({heartbeat})
        status = _OUTCOME_STATUS.get(outcome)
        if status is not None:
            metrics.EXPORT_DURATION.labels(export.export_type.value, status.value).observe(
                time.perf_counter() - started
            )
            metrics.EXPORTS_ENDED.labels(export.export_type.value, status.value).inc()
        elif outcome == "requeued":
            metrics.EXPORTS_REQUEUED.labels(export.export_type.value, "shutdown").inc()
        final = await self.repository.get(export.id)
        span.set_attribute("export.outcome", outcome)
        if final is not None:
            span.set_attribute("export.status", final.status.value)
            if final.count is not None:
                span.set_attribute("export.rows", final.count)
                span.set_attribute("export.files", len(final.files))
                span.set_attribute("export.bytes", sum(f.bytes for f in final.files))
            if final.error:
                span.set_attribute("export.error_code", final.error.get("code", ""))
            if final.terminal:
                await self._notify(final)
            for queue in self._ended:
                queue.put_nowait(final)
        if outcome in ("failed", "expired"):
            span.set_status(Status(StatusCode.ERROR, outcome))
        return final

    async def _supervise(
        self,
        export: Export,
        run: asyncio.Task[tuple[list[StoredFile], int]],
        halt: asyncio.Event,
        lost: asyncio.Event,
        cancel: asyncio.Event,
        started: float,
    ) -> str:
        """Wait for the run, the deadline, a cancel, or the loss of the export; record the outcome.

        Logs one event per state change: `export_finished`, `export_failed`, `export_expired`,
        `export_cancelled`, `export_requeued`, or `export_lost` when someone else took the
        export away.
        """

        def seconds() -> float:
            return round(time.perf_counter() - started, 3)

        triggered = export.date.get("triggered") or utcnow()
        deadline = timedelta(milliseconds=self.settings.timeout_millis)
        remaining = max(0.0, (triggered + deadline - utcnow()).total_seconds())
        lost_wait = asyncio.create_task(lost.wait())
        cancel_wait = asyncio.create_task(cancel.wait())
        abort_wait = asyncio.create_task(self._abort.wait())
        try:
            done, _ = await asyncio.wait(
                {run, lost_wait, cancel_wait, abort_wait},
                timeout=remaining,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            # The process is going away (its loop was cancelled): stop and re-queue.
            await _stop(run, halt)
            await self._give_back(export, seconds())
            raise
        finally:
            lost_wait.cancel()
            cancel_wait.cancel()
            abort_wait.cancel()
        if run not in done:
            await _stop(run, halt)
            if self._abort.is_set():
                # Shutdown past its grace: the export is fine, another worker runs it.
                return await self._give_back(export, seconds())
            if lost.is_set():
                log.warning("export_lost", stage="run", duration_s=seconds())
                return "lost"
            if cancel.is_set():
                return await self._end_cancelled(export, seconds())
            if not await self.repository.expire(export.id, self.worker_id):
                log.warning("export_lost", stage="expire", duration_s=seconds())
                return "lost"
            log.warning("export_expired", reason="timeout", duration_s=seconds())
            return "expired"
        try:
            files, count = run.result()
        except ExportLost:
            log.warning("export_lost", stage="write", duration_s=seconds())
            return "lost"
        except ExportCancelled:
            return await self._end_cancelled(export, seconds())
        except EncoderLost as exc:
            # Like a lost connection below: the export is fine, it runs again.
            log.warning("export_interrupted", error=exc.message)
            raise
        except ExportServiceError as exc:
            if not await self.repository.fail(export.id, self.worker_id, exc.code, exc.message):
                # Taken or deleted meanwhile (a CCPA request aborts our upload under us).
                log.warning("export_lost", stage="fail", error=exc.message, duration_s=seconds())
                return "lost"
            log.warning("export_failed", code=exc.code, error=exc.message, duration_s=seconds())
            return "failed"
        except ConnectionFailure as exc:
            # The database went away mid-run: nothing is wrong with the export, so it is not
            # failed. It stays TRIGGERED under our id and the next sweep (ours at once, anyone's
            # after heartbeat_timeout) re-queues it, or fails it after max_attempts.
            log.warning("export_interrupted", error=f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:
            if not await self.repository.fail(
                export.id, self.worker_id, "InternalError", f"{type(exc).__name__}: {exc}"
            ):
                log.warning("export_lost", stage="fail", duration_s=seconds())
                return "lost"
            log.exception("export_failed", code="InternalError", duration_s=seconds())
            return "failed"
        if not await self.repository.finish(export.id, self.worker_id, files, count):
            # Expired or deleted while completing: the files must not outlive the export,
            # unless another run of it took the export over, whose files have the same keys.
            current = await self.repository.get(export.id)
            if (
                current is not None
                and current.status is ExportStatus.TRIGGERED
                and current.worker_id == self.worker_id
                and current.cancel_requested
            ):
                # Cancelled just before it could finish: the cancel wins, files and all.
                return await self._end_cancelled(export, seconds())
            if current is None or current.status not in (
                ExportStatus.FINISHED,
                ExportStatus.TRIGGERED,
            ):
                await self.clean_uploads([PendingUpload(f.bucket, f.key, None) for f in files])
            log.warning("export_lost", stage="finish", duration_s=seconds())
            return "lost"
        metrics.EXPORT_ROWS.labels(export.export_type.value).observe(count)
        log.info(
            "export_finished",
            rows=count,
            files=len(files),
            bytes=sum(f.bytes for f in files),
            duration_s=seconds(),
        )
        return "finished"

    async def _give_back(self, export: Export, duration_s: float) -> str:
        """Re-queue a run stopped by shutdown; a cancel requested meanwhile is carried out."""
        if await self.repository.requeue(export.id, self.worker_id, keep_uploads=_resumes(export)):
            log.warning("export_requeued", reason="shutdown", duration_s=duration_s)
            return "requeued"
        return await self._end_cancelled(export, duration_s)

    async def _end_cancelled(self, export: Export, duration_s: float) -> str:
        """Carry out a cancel once the run has stopped: remove every object it started or
        completed (its recorded uploads), then end the export FAILED Cancelled."""
        await self.clean_uploads(await self.repository.uploads(export.id))
        if not await self.repository.end_cancelled(export.id, self.worker_id):
            log.warning("export_lost", stage="cancel", duration_s=duration_s)
            return "lost"
        log.warning("export_cancelled", duration_s=duration_s)
        return "cancelled"

    async def _begin(self, export: Export) -> Checkpoint | None:
        """Settle what earlier runs left in S3 before this run writes: the checkpoint to resume
        from (its parts checked with ListParts), or None, with every other upload aborted."""
        uploads = await self.repository.uploads(export.id)
        checkpoint = Checkpoint.from_doc(export.checkpoint) if export.checkpoint else None
        if not uploads and checkpoint is None and export.resumed_from is None:
            return None  # the common case: a first run
        keep: PendingUpload | None = None
        if checkpoint is not None and _resumes(export):
            on_s3 = await self.storage.uploaded_parts(
                checkpoint.bucket, checkpoint.key, checkpoint.upload_id
            )
            if checkpoint.matches(on_s3):
                keep = PendingUpload(checkpoint.bucket, checkpoint.key, checkpoint.upload_id)
            else:
                # Aborted meanwhile (a lifecycle rule) or not what we recorded: from row 0.
                log.warning(
                    "checkpoint_discarded",
                    reason="upload gone" if on_s3 is None else "parts differ",
                    rows=checkpoint.rows,
                )
                uploads.append(
                    PendingUpload(checkpoint.bucket, checkpoint.key, checkpoint.upload_id)
                )
        await self.clean_uploads(list(dict.fromkeys(u for u in uploads if u != keep)))
        resumed = checkpoint if keep is not None else None
        rows = resumed.rows if resumed is not None else None
        if not await self.repository.begin_run(export.id, self.worker_id, keep, rows):
            raise ExportLost()
        if resumed is not None:
            log.info(
                "export_resumed", rows=resumed.rows, parts=len(resumed.parts), bytes=resumed.size
            )
        return resumed

    async def _produce(
        self,
        export: Export,
        progress: dict[str, int],
        lost: asyncio.Event,
        halt: asyncio.Event,
    ) -> tuple[list[StoredFile], int]:
        def checkpoint() -> None:
            if halt.is_set():
                raise RunStopped()

        # This task's context (and its part uploads'): S3 writes end as soon as `halt` is set.
        RUN_HALTED.set(halt)

        spec = spec_for(export.export_type)
        if spec is None:
            raise ExportFailed(f"export type {export.export_type.value} is not available")
        campaign = await self.db["campaigns"].find_one({"_id": export.campaign_id})
        if campaign is None:
            raise CampaignNotFound(f"CampaignNotFound: campaign {export.campaign_id} is gone")
        resume = await self._begin(export)
        if resume is not None and resume.cut is not None:
            # The rows of the first run's cut, not of this run's start (contract §12).
            export = dataclasses.replace(export, date={**export.date, "triggered": resume.cut})
        ctx = Context(export=export, db=self.db, settings=self.settings, campaign=campaign)

        async def on_checkpoint(checkpoint: Checkpoint) -> None:
            saved = await self.repository.save_checkpoint(
                export.id, self.worker_id, checkpoint.to_doc()
            )
            if not saved:
                raise ExportLost()

        def interrupted(exc: BaseException) -> bool:
            # The run stops but the export goes on (re-queued, or taken over by whoever
            # fenced us off): its recorded upload is the next run's to resume or abort.
            if halt.is_set() or isinstance(exc, asyncio.CancelledError):
                # Stopped by us: kept for a resume after a shutdown or a loss, not after a
                # cancel or the deadline.
                return self._abort.is_set() or lost.is_set()
            return isinstance(exc, ConnectionFailure | EncoderLost | ExportLost)

        async def on_total(total: int) -> None:
            checkpoint()
            if not await self.repository.set_total(export.id, self.worker_id, total):
                raise ExportLost()

        async def on_progress(rows: int) -> None:
            progress["rows"] = rows
            checkpoint()
            if self.batch_hook is not None:
                await _unless(halt, self.batch_hook(export, rows))
            checkpoint()

        def open_writer(bucket: str, key: str, acl: str | None, content_type: str) -> ObjectWriter:
            async def on_start(upload_id: str | None) -> None:
                upload = PendingUpload(bucket, key, upload_id)
                # Recorded even when stopping: the upload exists and must be cleaned up.
                if not await self.repository.add_upload(export.id, self.worker_id, upload):
                    raise ExportLost()

            async def still_ours() -> None:
                # A stopped run never makes its object visible. Nor when another run of this
                # export (after a sweep judged us dead) writes the same key over ours, nor one
                # a user cancelled.
                checkpoint()
                beat = await self.repository.heartbeat(export.id, self.worker_id)
                if beat is Beat.LOST:
                    raise ExportLost()
                if beat is Beat.CANCEL:
                    raise ExportCancelled()

            return self.storage.writer(
                bucket,
                key,
                acl=acl,
                content_type=content_type,
                on_start=on_start,
                before_commit=still_ours,
            )

        return await run_export(
            spec,
            ctx,
            open_writer=open_writer,
            on_total=on_total,
            on_progress=on_progress,
            encoders=self.encoders,
            on_checkpoint=on_checkpoint,
            resume=resume,
            interrupted=interrupted,
        )

    async def _heartbeat(
        self,
        export: Export,
        progress: dict[str, int],
        lost: asyncio.Event,
        cancel: asyncio.Event,
        halt: asyncio.Event,
        end: asyncio.Event,
    ) -> None:
        """Beat until `end` is set; the beat in flight then ends within its own bound."""
        # The beat also carries `progress.processed`: at least every progress interval, so that
        # clients polling the export see it advance; and it reads a cancel request (from any
        # process's API) at least every cancel-check interval, so a cancel takes effect in
        # about that time.
        interval = (
            min(
                self.settings.heartbeat_interval_millis,
                self.settings.progress_interval_millis,
                self.settings.cancel_check_interval_millis,
            )
            / 1000
        )
        # A beat that cannot land in half the time others wait before judging us dead is as
        # good as missed; the bound also lets `end` take effect soon on a dead server.
        bound = self.settings.heartbeat_timeout_millis / 2000
        while not end.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await end.wait()
            if end.is_set():
                return
            try:
                with pymongo.timeout(bound):
                    beat = await self.repository.heartbeat(
                        export.id, self.worker_id, progress["rows"]
                    )
            except PyMongoError as exc:
                # A missed beat is not fatal; the sweep only acts after heartbeat_timeout.
                log.warning("heartbeat_failed", error=str(exc))
                beat = Beat.OURS
            if not halt.is_set():
                # A run asked to stop that never does is a wedge: let `/heartbeat` see it.
                self.liveness.tick()
            if beat is Beat.CANCEL:
                cancel.set()
            if beat is Beat.LOST:
                lost.set()
                return


_OUTCOME_STATUS = {
    "finished": ExportStatus.FINISHED,
    "failed": ExportStatus.FAILED,
    "expired": ExportStatus.EXPIRED,
    "cancelled": ExportStatus.FAILED,
}
_STATUS_EVENT = {
    ExportStatus.FINISHED: "export_finished",
    ExportStatus.FAILED: "export_failed",
    ExportStatus.EXPIRED: "export_expired",
}


def _log_fields(export: Export) -> dict[str, Any]:
    """What every log line about an export carries; `request_id` is the request that made it."""
    return {
        "export_id": export.id,
        "campaign_id": export.campaign_id,
        "export_type": export.export_type.value,
        "request_id": export.request_id,
    }


def _resumes(export: Export) -> bool:
    """Whether an interrupted run of this export's type resumes (contract §14)."""
    spec = spec_for(export.export_type)
    return spec is not None and resumable(spec)


def uploads_of(doc: dict[str, Any]) -> list[PendingUpload]:
    return [PendingUpload.from_doc(u) for u in doc.get("uploads") or []]


async def _stop(run: asyncio.Task[Any], halt: asyncio.Event) -> None:
    """Ask the run to stop and wait until it has: at its next checkpoint, or when the driver or
    S3 call it is in ends (each is bounded). Never `cancel()`: see the module docstring."""
    halt.set()
    await asyncio.wait({run})
    if not run.cancelled():
        run.exception()  # retrieved: its outcome no longer matters


async def _unless(halt: asyncio.Event, work: Awaitable[None]) -> None:
    """Await `work` (not a driver call) unless `halt` is set first, which cuts it short."""
    try:
        await unless_halted(halt, work)
    except Halted:
        raise RunStopped() from None
