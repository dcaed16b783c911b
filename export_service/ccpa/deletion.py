"""CCPA deletion (contract §7): remove every CCPA-type export of the campaigns a user is in.

One request goes:

1. record the request in `ccpa_requests` (who asked, when, for which user);
2. find the user's campaigns: one `distinct("campaignId")` per source collection (entries,
   scoring, assigned codes, SMS wave membership), each on an index of its user field;
3. load every export of a CCPA type in those campaigns (one query, any status);
4. in rounds, until nothing is left or moving:
   * PENDING exports are deleted outright (a worker's claim then finds nothing); one that kept
     the upload of an interrupted run for resuming has it aborted first;
   * TRIGGERED exports are taken from their worker (`workerId` := `CCPA_OWNER`): the worker's
     next compare-and-set fails, so it stops and removes its own uploads, and can record no new
     one; the export is read again in the next round with its `uploads` frozen;
   * terminal exports and taken ones: S3 first — every key of `files` with one `delete_objects`
     per bucket and 1000 keys, every recorded upload aborted — then, for exports whose objects
     are all gone, the documents with one `delete_many`;
5. complete the audit document and log `ccpa_deleted` with counts.

An export whose objects could not all be deleted keeps its document and is reported as a
failure, so a second request finds it again and finishes the job; counts include only exports
whose document this request saw disappear, and only their `files` keys.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pymongo.asynchronous.database import AsyncDatabase

from export_service.ccpa.requests import CcpaRequests
from export_service.errors import StorageError
from export_service.exporters import EXPORTERS
from export_service.models import TERMINAL_STATUSES, Export, ExportStatus, ExportType
from export_service.queue.repository import CCPA_OWNER, ExportRepository, ExportUploads
from export_service.sources import associated_campaigns
from export_service.storage import Storage

log = structlog.get_logger(__name__)

Doc = dict[str, Any]

# The types whose exports a request deletes (contract §6/§7): each spec's `ccpa` flag says it,
# and nothing else does.
CCPA_TYPES: frozenset[ExportType] = frozenset(t for t, spec in EXPORTERS.items() if spec.ccpa)

# An export changes state at most PENDING → TRIGGERED → taken → terminal while a request runs,
# so a few rounds settle it; anything still moving after that is reported, not chased forever.
MAX_ROUNDS = 5

# One DeleteObjects request takes at most this many keys (an S3 limit).
DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class S3Object:
    bucket: str
    key: str

    def to_doc(self) -> Doc:
        return {"bucket": self.bucket, "key": self.key}


@dataclass(frozen=True, slots=True)
class DeletedExport:
    export: Export
    # The export's files; for a TRIGGERED one, its unfinished uploads (aborted, not counted).
    objects: list[S3Object]
    aborted_uploads: list[S3Object] = field(default_factory=list)

    def to_doc(self) -> Doc:
        return {
            "exportId": self.export.id,
            "campaignId": self.export.campaign_id,
            "exportType": self.export.export_type.value,
            "status": self.export.status.value,
            "objects": [o.to_doc() for o in self.objects],
            "abortedUploads": [o.to_doc() for o in self.aborted_uploads],
        }


@dataclass(frozen=True, slots=True)
class Failure:
    export: Export
    error: str
    objects: list[S3Object] = field(default_factory=list)

    def to_doc(self) -> Doc:
        return {
            "exportId": self.export.id,
            "campaignId": self.export.campaign_id,
            "exportType": self.export.export_type.value,
            "error": self.error,
            "objects": [o.to_doc() for o in self.objects],
        }


@dataclass(slots=True)
class DeletionResult:
    request_id: str
    campaign_ids: list[str] = field(default_factory=list)
    deleted: list[DeletedExport] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        return {
            "exports": len(self.deleted),
            "files": sum(len(d.objects) for d in self.deleted),
        }

    def audit(self) -> Doc:
        return {
            "campaignIds": self.campaign_ids,
            "exports": [d.to_doc() for d in self.deleted],
            "deletedCount": self.counts(),
            "failures": [f.to_doc() for f in self.failures],
        }


def _ids(items: Sequence[ExportUploads]) -> list[str]:
    return [item.export.id for item in items]


class CcpaDeletion:
    def __init__(
        self, db: AsyncDatabase[Doc], storage: Storage, repository: ExportRepository
    ) -> None:
        self._db = db
        self._storage = storage
        self._repository = repository
        self._requests = CcpaRequests(db)

    async def delete_user(self, user_id: str, *, requested_by: str) -> DeletionResult:
        result = DeletionResult(
            await self._requests.open(user_id=user_id, requested_by=requested_by)
        )
        result.campaign_ids = await associated_campaigns(self._db, user_id)
        todo = (
            await self._repository.in_campaigns(result.campaign_ids, CCPA_TYPES)
            if result.campaign_ids
            else []
        )
        for _ in range(MAX_ROUNDS):
            if not todo:
                break
            again = await self._round(todo, result)
            todo = await self._repository.by_ids(again) if again else []
        for item in todo:
            result.failures.append(Failure(item.export, "export kept changing state; retry"))
        await self._requests.close(
            result.request_id, complete=result.complete, outcome=result.audit()
        )
        log.info(
            "ccpa_deleted",
            ccpa_request_id=result.request_id,
            requested_by=requested_by,
            campaigns=len(result.campaign_ids),
            exports=result.counts()["exports"],
            files=result.counts()["files"],
            failures=len(result.failures),
        )
        return result

    async def _round(self, items: list[ExportUploads], result: DeletionResult) -> list[str]:
        """Act once on each export; returns the ids to look at again (their state moved)."""
        queued = [i for i in items if i.export.status is ExportStatus.PENDING]
        running = [i for i in items if i.export.status is ExportStatus.TRIGGERED]
        taken = [i for i in running if i.export.worker_id == CCPA_OWNER]
        running = [i for i in running if i.export.worker_id != CCPA_OWNER]
        ended = [i for i in items if i.export.status in TERMINAL_STATUSES]
        again: list[str] = []
        if running:
            await self._repository.take_over(_ids(running), CCPA_OWNER)
            again += _ids(running)  # their uploads are frozen only from now on: read again
        # A PENDING export may keep the upload of an interrupted run for resuming (contract §14):
        # aborted first, then the document, if it still holds just that.
        kept = [i for i in queued if i.uploads]
        queued = [i for i in queued if not i.uploads]
        if queued:
            deleted = await self._repository.delete_pending(_ids(queued))
            again += await self._settle(queued, deleted, result)
        if kept:
            aborted = await self._abort_uploads(kept, result)
            deleted = await self._repository.delete_pending_resumable(aborted)
            again += await self._settle(aborted, deleted, result)
        clean = await self._clear_objects(ended, result) + await self._abort_uploads(taken, result)
        if clean:
            clean_ended = [i for i in clean if i.export.status in TERMINAL_STATUSES]
            clean_taken = [i for i in clean if i.export.status is ExportStatus.TRIGGERED]
            deleted = await self._repository.delete_settled(
                _ids(clean_ended), _ids(clean_taken), CCPA_OWNER
            )
            again += await self._settle(clean, deleted, result)
        return again

    async def _settle(
        self, items: list[ExportUploads], deleted: int, result: DeletionResult
    ) -> list[str]:
        """Record the exports whose documents are gone; returns those still there."""
        remaining: set[str] = set()
        if deleted != len(items):
            # Some changed state under us (claimed, taken back by a sweep): they stay for
            # another round. One query, only when the counts disagree.
            remaining = {i.export.id for i in await self._repository.by_ids(_ids(items))}
        for item in items:
            if item.export.id in remaining:
                continue
            export = item.export
            result.deleted.append(
                DeletedExport(
                    export,
                    objects=[S3Object(f.bucket, f.key) for f in export.files],
                    aborted_uploads=[S3Object(u.bucket, u.key) for u in item.uploads],
                )
            )
        return sorted(remaining)

    async def _clear_objects(
        self, items: list[ExportUploads], result: DeletionResult
    ) -> list[ExportUploads]:
        """Delete the files of ended exports; returns those whose every file is gone."""
        owners: dict[tuple[str, str], list[ExportUploads]] = defaultdict(list)
        by_bucket: dict[str, list[str]] = defaultdict(list)
        for item in items:
            for f in item.export.files:
                if (f.bucket, f.key) not in owners:
                    by_bucket[f.bucket].append(f.key)
                owners[(f.bucket, f.key)].append(item)
        failed: dict[str, Failure] = {}
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), DELETE_BATCH):
                chunk = keys[start : start + DELETE_BATCH]
                try:
                    await self._storage.delete(bucket, chunk)
                except StorageError as exc:
                    # Per-key errors when S3 names them, else the whole batch is in doubt.
                    bad = exc.payload.get("keys") or chunk
                    for key in bad:
                        for item in owners.get((bucket, key), []):
                            failure = failed.setdefault(
                                item.export.id, Failure(item.export, exc.message)
                            )
                            failure.objects.append(S3Object(bucket, key))
        result.failures.extend(failed.values())
        return [item for item in items if item.export.id not in failed]

    async def _abort_uploads(
        self, items: list[ExportUploads], result: DeletionResult
    ) -> list[ExportUploads]:
        """Abort the frozen uploads of taken exports; returns those left with none."""
        clean = []
        for item in items:
            errors = []
            for upload in item.uploads:
                try:
                    await self._storage.abort_upload(upload.bucket, upload.key, upload.upload_id)
                except StorageError as exc:
                    errors.append((S3Object(upload.bucket, upload.key), exc.message))
            if errors:
                result.failures.append(
                    Failure(item.export, errors[0][1], objects=[o for o, _ in errors])
                )
            else:
                clean.append(item)
        return clean
