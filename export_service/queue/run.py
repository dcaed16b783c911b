"""The life of one export's run, from its claim to its recorded outcome.

An `ExportRun` holds the export's lease (a heartbeat that also carries progress and learns of a
cancel), produces the file through the runner (which reports to it as its `RunControl`: total,
progress, uploads started, "still ours?" before an object is made visible, checkpoints), and
supervises it against the deadline, a cancel, a shutdown past its grace and the loss of the
export to a sweep or a CCPA request. Whatever happens it records one `Outcome`.

No task is ever cancelled while it may be inside a driver call. On Python < 3.13 pymongo waits
for servers and connections with `asyncio.wait_for` around a condition of its own; a cancel that
lands while that wait is being torn down releases the driver's lock without holding it
("RuntimeError: Lock is not acquired") and leaves it held for good: every later call of the
process then waits forever. So the heartbeat, the run and the whole export are stopped with
events: a run stops at its next checkpoint (after a batch, before an upload starts or commits)
or when its driver call ends, and every driver call is bounded (client timeouts, and
`pymongo.timeout` for the beats). Only waits outside the driver (a test's batch hook, S3 calls)
are cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from enum import StrEnum
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
    ExportCancelled,
    ExportFailed,
    ExportLost,
    ExportServiceError,
    Halted,
    InternalError,
    StorageError,
)
from export_service.exporters import spec_for
from export_service.exporters.checkpoint import Checkpoint, resumable
from export_service.exporters.runner import run_export
from export_service.exporters.spec import Context
from export_service.halting import unless_halted
from export_service.liveness import Liveness
from export_service.models import Export, ExportStatus, StoredFile, utcnow
from export_service.queue.repository import Beat, ExportRepository, PendingUpload
from export_service.settings import Settings
from export_service.sources import find_campaign
from export_service.storage import RUN_HALTED, Storage

log = structlog.get_logger(__name__)

# Awaited after every batch with the rows done so far (tests hold a run mid-way with it).
BatchHook = Callable[[Export, int], Awaitable[None]]


class Outcome(StrEnum):
    """How one run ended, as recorded (or found) on the export."""

    FINISHED = "finished"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # FAILED Cancelled, its objects removed
    REQUEUED = "requeued"  # back to PENDING (shutdown)
    LOST = "lost"  # taken away (sweep, CCPA, deleted): someone else records its end

    @property
    def ended(self) -> ExportStatus | None:
        """The terminal status this outcome wrote, if it wrote one."""
        return _ENDED.get(self)


_ENDED = {
    Outcome.FINISHED: ExportStatus.FINISHED,
    Outcome.FAILED: ExportStatus.FAILED,
    Outcome.EXPIRED: ExportStatus.EXPIRED,
    Outcome.CANCELLED: ExportStatus.FAILED,
}


@dataclasses.dataclass(slots=True)
class RunEnvironment:
    """What every run of one worker shares."""

    repository: ExportRepository
    db: AsyncDatabase[dict[str, Any]]
    storage: Storage
    settings: Settings
    worker_id: str
    # Where CSV encoding runs for types with an encoder; None: in this process.
    encoders: EncoderProcesses | None
    # Ticked by every beat of a running export that is not stopping: `/heartbeat`.
    liveness: Liveness
    # Set by the worker's shutdown past its grace: the running export is stopped and re-queued.
    abort: asyncio.Event
    # Whether an export's end owes webhook events (`Notifier.owes_events`).
    owes_events: Callable[[Export], bool]
    batch_hook: BatchHook | None = None


class _Stopped(Exception):
    """Raised inside a run at its next checkpoint once it has been asked to stop."""


def log_fields(export: Export) -> dict[str, Any]:
    """What every log line about an export carries; `request_id` is the request that made it."""
    return {
        "export_id": export.id,
        "campaign_id": export.campaign_id,
        "export_type": export.export_type.value,
        "request_id": export.request_id,
    }


def resumes(export: Export) -> bool:
    """Whether an interrupted run of this export's type resumes (contract §14)."""
    spec = spec_for(export.export_type)
    return spec is not None and resumable(spec)


async def clean_uploads(storage: Storage, uploads: list[PendingUpload]) -> None:
    """Abort unfinished uploads and remove any object under their keys; errors logged."""
    for upload in uploads:
        try:
            await storage.abort_upload(upload.bucket, upload.key, upload.upload_id)
        except ExportServiceError as exc:
            log.error("upload_cleanup_failed", bucket=upload.bucket, error=str(exc))


class ExportRun:
    """One run of one claimed export; `execute()` once."""

    # Resumable types record a checkpoint per uploaded part (contract §14).
    checkpoints = True

    def __init__(self, env: RunEnvironment, export: Export, cancel: asyncio.Event) -> None:
        self._env = env
        self._repository = env.repository
        self._worker_id = env.worker_id
        self.export = export
        # Set when a user cancels the export: by its heartbeat or by this process's API.
        self._cancel = cancel
        if export.cancel_requested:
            cancel.set()
        self._lost = asyncio.Event()  # someone else holds the export now
        self._halt = asyncio.Event()  # the producing task: stop at your next checkpoint
        self._rows = 0
        self._started = time.perf_counter()
        # The export as the runner sees it (a resumed run's rows are those of its first cut).
        self._producing = export

    # ---- the run as a whole -------------------------------------------------------------

    async def execute(self, on_end: Callable[[Export], Awaitable[None]]) -> Export | None:
        """Run the export to an outcome; the export as it then stands (None if deleted), which
        is handed to `on_end` first, still inside the run's span and log context."""
        export = self.export
        structlog.contextvars.bind_contextvars(**log_fields(export))
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
                "export.worker_id": self._worker_id,
            },
        )
        metrics.EXPORTS_RUNNING.inc()
        try:
            with trace.use_span(span, end_on_exit=True):
                outcome = await self._leased()
                final = await self._report(outcome, span)
                if final is not None:
                    await on_end(final)
                if outcome in (Outcome.FAILED, Outcome.EXPIRED):
                    span.set_status(Status(StatusCode.ERROR, outcome.value))
                return final
        finally:
            metrics.EXPORTS_RUNNING.dec()
            structlog.contextvars.unbind_contextvars(*log_fields(export))

    async def _leased(self) -> Outcome:
        """Produce and supervise the run while its heartbeat holds the lease."""
        log.info("export_triggered", worker_id=self._worker_id, attempt=self.export.attempts)
        self._started = time.perf_counter()
        beats_end = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(beats_end))
        run = asyncio.create_task(self._produce())
        try:
            return await self._supervise(run)
        finally:
            # The beat in flight, if any, ends within its own bound.
            beats_end.set()
            await asyncio.wait({heartbeat})

    async def _report(self, outcome: Outcome, span: trace.Span) -> Export | None:
        """Metrics and span of the outcome; the export as it now stands."""
        export_type = self.export.export_type.value
        status = outcome.ended
        if status is not None:
            metrics.EXPORT_DURATION.labels(export_type, status.value).observe(
                time.perf_counter() - self._started
            )
            metrics.EXPORTS_ENDED.labels(export_type, status.value).inc()
        elif outcome is Outcome.REQUEUED:
            metrics.EXPORTS_REQUEUED.labels(export_type, "shutdown").inc()
        final = await self._repository.get(self.export.id)
        span.set_attribute("export.outcome", outcome.value)
        if final is not None:
            span.set_attribute("export.status", final.status.value)
            if final.count is not None:
                span.set_attribute("export.rows", final.count)
                span.set_attribute("export.files", len(final.files))
                span.set_attribute("export.bytes", sum(f.bytes for f in final.files))
            if final.error:
                span.set_attribute("export.error_code", final.error.get("code", ""))
        return final

    def _seconds(self) -> float:
        return round(time.perf_counter() - self._started, 3)

    # ---- supervision --------------------------------------------------------------------

    async def _supervise(self, run: asyncio.Task[tuple[list[StoredFile], int]]) -> Outcome:
        """Wait for the run, the deadline, a cancel, or the loss of the export; record the outcome.

        Logs one event per state change: `export_finished`, `export_failed`, `export_expired`,
        `export_cancelled`, `export_requeued`, or `export_lost` when someone else took the
        export away.
        """
        triggered = self.export.date.get("triggered") or utcnow()
        deadline = timedelta(milliseconds=self._env.settings.timeout_millis)
        remaining = max(0.0, (triggered + deadline - utcnow()).total_seconds())
        lost_wait = asyncio.create_task(self._lost.wait())
        cancel_wait = asyncio.create_task(self._cancel.wait())
        abort_wait = asyncio.create_task(self._env.abort.wait())
        try:
            done, _ = await asyncio.wait(
                {run, lost_wait, cancel_wait, abort_wait},
                timeout=remaining,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except asyncio.CancelledError:
            # The process is going away (its loop was cancelled): stop and re-queue.
            await self._stop(run)
            await self._give_back()
            raise
        finally:
            lost_wait.cancel()
            cancel_wait.cancel()
            abort_wait.cancel()
        if run in done:
            return await self._ended(run)
        await self._stop(run)
        if self._env.abort.is_set():
            # Shutdown past its grace: the export is fine, another worker runs it.
            return await self._give_back()
        if self._lost.is_set():
            log.warning("export_lost", stage="run", duration_s=self._seconds())
            return Outcome.LOST
        if self._cancel.is_set():
            return await self._end_cancelled()
        if not await self._repository.expire(self.export.id, self._worker_id):
            log.warning("export_lost", stage="expire", duration_s=self._seconds())
            return Outcome.LOST
        log.warning("export_expired", reason="timeout", duration_s=self._seconds())
        return Outcome.EXPIRED

    async def _stop(self, run: asyncio.Task[Any]) -> None:
        """Ask the run to stop and wait until it has: at its next checkpoint, or when the driver
        or S3 call it is in ends (each is bounded). Never `cancel()`: see the module docstring."""
        self._halt.set()
        await asyncio.wait({run})
        if not run.cancelled():
            run.exception()  # retrieved: its outcome no longer matters

    async def _ended(self, run: asyncio.Task[tuple[list[StoredFile], int]]) -> Outcome:
        """Record the outcome of a run that ended by itself."""
        export_id, seconds = self.export.id, self._seconds
        try:
            files, count = run.result()
        except ExportLost:
            log.warning("export_lost", stage="write", duration_s=seconds())
            return Outcome.LOST
        except ExportCancelled:
            return await self._end_cancelled()
        except EncoderLost as exc:
            # Like a lost connection below: the export is fine, it runs again.
            log.warning("export_interrupted", error=exc.message)
            raise
        except ExportServiceError as exc:
            if not await self._repository.fail(export_id, self._worker_id, exc):
                # Taken or deleted meanwhile (a CCPA request aborts our upload under us).
                log.warning("export_lost", stage="fail", error=exc.message, duration_s=seconds())
                return Outcome.LOST
            log.warning("export_failed", code=exc.code, error=exc.message, duration_s=seconds())
            return Outcome.FAILED
        except ConnectionFailure as exc:
            # The database went away mid-run: nothing is wrong with the export, so it is not
            # failed. It stays TRIGGERED under our id and the next sweep (ours at once, anyone's
            # after heartbeat_timeout) re-queues it, or fails it after max_attempts.
            log.warning("export_interrupted", error=f"{type(exc).__name__}: {exc}")
            raise
        except Exception as exc:
            internal = InternalError(f"{type(exc).__name__}: {exc}")
            if not await self._repository.fail(export_id, self._worker_id, internal):
                log.warning("export_lost", stage="fail", duration_s=seconds())
                return Outcome.LOST
            log.exception("export_failed", code=internal.code, duration_s=seconds())
            return Outcome.FAILED
        return await self._finish(files, count)

    async def _finish(self, files: list[StoredFile], count: int) -> Outcome:
        owes = self._env.owes_events(self.export)
        if not await self._repository.finish(
            self.export.id, self._worker_id, files, count, owes_events=owes
        ):
            # Expired or deleted while completing: the files must not outlive the export,
            # unless another run of it took the export over, whose files have the same keys.
            current = await self._repository.get(self.export.id)
            if (
                current is not None
                and current.status is ExportStatus.TRIGGERED
                and current.worker_id == self._worker_id
                and current.cancel_requested
            ):
                # Cancelled just before it could finish: the cancel wins, files and all.
                return await self._end_cancelled()
            if current is None or current.status not in (
                ExportStatus.FINISHED,
                ExportStatus.TRIGGERED,
            ):
                await clean_uploads(
                    self._env.storage, [PendingUpload(f.bucket, f.key, None) for f in files]
                )
            log.warning("export_lost", stage="finish", duration_s=self._seconds())
            return Outcome.LOST
        metrics.EXPORT_ROWS.labels(self.export.export_type.value).observe(count)
        log.info(
            "export_finished",
            rows=count,
            files=len(files),
            bytes=sum(f.bytes for f in files),
            duration_s=self._seconds(),
        )
        return Outcome.FINISHED

    async def _give_back(self) -> Outcome:
        """Re-queue a run stopped by shutdown; a cancel requested meanwhile is carried out."""
        keep = resumes(self.export)
        if await self._repository.requeue(self.export.id, self._worker_id, keep_uploads=keep):
            log.warning("export_requeued", reason="shutdown", duration_s=self._seconds())
            return Outcome.REQUEUED
        return await self._end_cancelled()

    async def _end_cancelled(self) -> Outcome:
        """Carry out a cancel once the run has stopped: remove every object it started or
        completed (its recorded uploads), then end the export FAILED Cancelled."""
        export_id = self.export.id
        await clean_uploads(self._env.storage, await self._repository.uploads(export_id))
        if not await self._repository.end_cancelled(export_id, self._worker_id):
            log.warning("export_lost", stage="cancel", duration_s=self._seconds())
            return Outcome.LOST
        log.warning("export_cancelled", duration_s=self._seconds())
        return Outcome.CANCELLED

    # ---- the lease ----------------------------------------------------------------------

    async def _heartbeat(self, end: asyncio.Event) -> None:
        """Beat until `end` is set; the beat in flight then ends within its own bound."""
        settings = self._env.settings
        # The beat also carries `progress.processed`: at least every progress interval, so that
        # clients polling the export see it advance; and it reads a cancel request (from any
        # process's API) at least every cancel-check interval, so a cancel takes effect in
        # about that time.
        interval = (
            min(
                settings.heartbeat_interval_millis,
                settings.progress_interval_millis,
                settings.cancel_check_interval_millis,
            )
            / 1000
        )
        # A beat that cannot land in half the time others wait before judging us dead is as
        # good as missed; the bound also lets `end` take effect soon on a dead server.
        bound = settings.heartbeat_timeout_millis / 2000
        while not end.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await end.wait()
            if end.is_set():
                return
            try:
                with pymongo.timeout(bound):
                    beat = await self._repository.heartbeat(
                        self.export.id, self._worker_id, self._rows
                    )
            except PyMongoError as exc:
                # A missed beat is not fatal; the sweep only acts after heartbeat_timeout.
                log.warning("heartbeat_failed", error=str(exc))
                beat = Beat.OURS
            if not self._halt.is_set():
                # A run asked to stop that never does is a wedge: let `/heartbeat` see it.
                self._env.liveness.tick()
            if beat is Beat.CANCEL:
                self._cancel.set()
            if beat is Beat.LOST:
                self._lost.set()
                return

    # ---- producing the file -------------------------------------------------------------

    async def _produce(self) -> tuple[list[StoredFile], int]:
        # This task's context (and its part uploads'): S3 writes end as soon as `halt` is set.
        RUN_HALTED.set(self._halt)
        export = self.export
        spec = spec_for(export.export_type)
        if spec is None:
            raise ExportFailed(f"export type {export.export_type.value} is not available")
        campaign = await find_campaign(self._env.db, export.campaign_id)
        if campaign is None:
            raise CampaignNotFound(f"campaign {export.campaign_id} is gone")
        resume = await self._begin()
        if resume is not None and resume.cut is not None:
            # The rows of the first run's cut, not of this run's start (contract §12).
            export = dataclasses.replace(export, date={**export.date, "triggered": resume.cut})
            self._producing = export
        ctx = Context(
            export=export, db=self._env.db, settings=self._env.settings, campaign=campaign
        )
        try:
            return await run_export(
                spec, ctx, self, self._env.storage, encoders=self._env.encoders, resume=resume
            )
        except StorageError as exc:
            if resume is None or exc.payload.get("s3_code") != "InvalidPart":
                raise
        # A run fenced off before us but still alive (cut off from MongoDB, say) uploaded a
        # part into the upload we resumed after we checked it, and S3 refuses our part list.
        # The runner has aborted that upload; start over from row 0 with a new one, which no
        # earlier run knows of (and so with this run's own cut).
        log.warning("checkpoint_discarded", reason="part overwritten", rows=resume.rows)
        if not await self._repository.begin_run(self.export.id, self._worker_id, None, None):
            raise ExportLost()
        self._producing = self.export
        ctx = Context(
            export=self.export, db=self._env.db, settings=self._env.settings, campaign=campaign
        )
        return await run_export(spec, ctx, self, self._env.storage, encoders=self._env.encoders)

    async def _begin(self) -> Checkpoint | None:
        """Settle what earlier runs left in S3 before this run writes: the checkpoint to resume
        from (its parts checked with ListParts), or None, with every other upload aborted."""
        export = self.export
        uploads = await self._repository.uploads(export.id)
        checkpoint = Checkpoint.from_doc(export.checkpoint) if export.checkpoint else None
        if not uploads and checkpoint is None and export.resumed_from is None:
            return None  # the common case: a first run
        keep: PendingUpload | None = None
        if checkpoint is not None and resumes(export):
            on_s3 = await self._env.storage.uploaded_parts(
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
        stale = list(dict.fromkeys(u for u in uploads if u != keep))
        await clean_uploads(self._env.storage, stale)
        resumed = checkpoint if keep is not None else None
        rows = resumed.rows if resumed is not None else None
        if not await self._repository.begin_run(export.id, self._worker_id, keep, rows):
            raise ExportLost()
        if resumed is not None:
            log.info(
                "export_resumed", rows=resumed.rows, parts=len(resumed.parts), bytes=resumed.size
            )
        return resumed

    # ---- what the runner reports and asks (`exporters.runner.RunControl`) ---------------

    def _check(self) -> None:
        if self._halt.is_set():
            raise _Stopped()

    async def total(self, rows: int) -> None:
        self._check()
        if not await self._repository.set_total(self.export.id, self._worker_id, rows):
            raise ExportLost()

    async def progress(self, rows: int) -> None:
        self._rows = rows
        self._check()
        hook = self._env.batch_hook
        if hook is not None:
            try:
                # Not a driver call, so it may be cut short.
                await unless_halted(self._halt, hook(self._producing, rows))
            except Halted:
                raise _Stopped() from None
        self._check()

    async def upload_started(self, bucket: str, key: str, upload_id: str | None) -> None:
        # Recorded even when stopping: the upload exists and must be cleaned up.
        upload = PendingUpload(bucket, key, upload_id)
        if not await self._repository.add_upload(self.export.id, self._worker_id, upload):
            raise ExportLost()

    async def still_ours(self) -> None:
        # A stopped run never makes its object visible. Nor when another run of this export
        # (after a sweep judged us dead) writes the same key over ours, nor one a user
        # cancelled.
        self._check()
        beat = await self._repository.heartbeat(self.export.id, self._worker_id)
        if beat is Beat.LOST:
            raise ExportLost()
        if beat is Beat.CANCEL:
            raise ExportCancelled()

    async def object_started(self, bucket: str, key: str) -> None:
        # `upload_started` + `still_ours` in one write: a stopped, lost or cancelled run
        # neither records nor writes the object.
        self._check()
        upload = PendingUpload(bucket, key, None)
        beat = await self._repository.record_put(self.export.id, self._worker_id, upload)
        if beat is Beat.LOST:
            raise ExportLost()
        if beat is Beat.CANCEL:
            raise ExportCancelled()

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        saved = await self._repository.save_checkpoint(
            self.export.id, self._worker_id, checkpoint.to_doc()
        )
        if not saved:
            raise ExportLost()

    def interrupted(self, exc: BaseException) -> bool:
        # The run stops but the export goes on (re-queued, or taken over by whoever fenced us
        # off): its recorded upload is the next run's to resume or abort.
        if self._halt.is_set() or isinstance(exc, asyncio.CancelledError):
            # Stopped by us: kept for a resume after a shutdown or a loss, not after a cancel
            # or the deadline.
            return self._env.abort.is_set() or self._lost.is_set()
        return isinstance(exc, ConnectionFailure | EncoderLost | ExportLost)
