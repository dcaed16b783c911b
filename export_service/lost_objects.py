"""No FINISHED export may point at objects that are gone: the embedded S3 restart case.

moto's server keeps objects in memory, so restarting `dev` loses every object while MongoDB (on
disk) keeps the export documents. `dev` calls this at start: an export with a missing object gets
contract §13's `purged: {date, reason: "embedded-restart"}` (its answers then list the files without
URLs) after any of its objects that survived are deleted, so a purged export never has one left.
"""

from __future__ import annotations

from collections import defaultdict

from export_service.queue.repository import ExportRepository
from export_service.storage import Storage

EMBEDDED_RESTART = "embedded-restart"


async def purge_exports_with_lost_objects(
    repository: ExportRepository, storage: Storage
) -> list[str]:
    """Mark purged every FINISHED export with a missing object; returns their ids."""
    purged: list[str] = []
    for export in await repository.finished_unpurged():
        present = [f for f in export.files if await storage.exists(f.bucket, f.key)]
        if len(present) == len(export.files):
            continue
        by_bucket: dict[str, list[str]] = defaultdict(list)
        for stored in present:
            by_bucket[stored.bucket].append(stored.key)
        for bucket, keys in by_bucket.items():
            await storage.delete(bucket, keys)
        if await repository.mark_purged(export.id, EMBEDDED_RESTART):
            purged.append(export.id)
    return purged
