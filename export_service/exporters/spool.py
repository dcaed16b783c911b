"""Local spool files of one export run (contract §15).

The partitioned types read their source once, in user order, and route each row to a file
(ZIP member or SFMC object) that can only be written once all of its rows are known. The rows
wait here: one append-only file per export, holding compressed chunks, each chunk the CSV of
some consecutive rows of one file; an in-memory index lists each file's chunks in order. The
file is read back chunk by chunk, so memory holds one chunk whatever the number of files.

Every spool lives in its own directory under `Settings.spool_dir`, created under an exclusive
`flock` that its run holds until it removes the directory (on every outcome: the sink's
`close`/`abort`). A process that dies without removing it (SIGKILL, OOM) drops the lock with
its file descriptors, so `remove_leftover_spools` (called when a worker starts) can tell a dead
run's directory, lockable, from a live one's, locked, even with several workers per host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Final

import structlog

from export_service.errors import SpoolDiskFull

log = structlog.get_logger(__name__)

# zlib level 1: CSV shrinks ~4x at a few hundred MB/s, so the disk holds about the size of
# the finished ZIP; higher levels cost CPU the export needs for encoding (bench/partitioned).
_LEVEL: Final = 1
_FILE: Final = "rows.spool"
_NEW: Final = ".new-"
# A directory still being set up is left alone this long (its owner takes the lock at once).
_SETUP_GRACE_SECONDS: Final = 60.0
_NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


class Spool:
    """An append-only chunk file; chunks are filed under a key and read back in order."""

    def __init__(self, root: Path, label: str, *, max_bytes: int | None = None) -> None:
        self._max_bytes = max_bytes
        self._index: dict[Hashable, list[tuple[int, int]]] = {}
        self._size = 0
        self.raw_bytes = 0
        root.mkdir(parents=True, exist_ok=True)
        name = f"{_safe(label)}-{uuid.uuid4().hex[:12]}"
        # Set up under a temporary name and renamed once locked, so that a cleaner never sees
        # the final name unlocked while its owner lives.
        staging = root / f"{_NEW}{name}"
        try:
            os.mkdir(staging, 0o700)
        except OSError as exc:
            _raise_if_full(exc, staging)
            raise
        self._dir_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = root / name
        os.rename(staging, self.path)
        try:
            self._fd = os.open(self.path / _FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            self._remove_dir()
            _raise_if_full(exc, self.path)
            raise
        self._open = True

    @property
    def size(self) -> int:
        """Bytes on disk (what `max_bytes` bounds)."""
        return self._size

    def append(self, key: Hashable, data: bytes) -> None:
        if not data:
            return
        packed = zlib.compress(data, _LEVEL)
        if self._max_bytes is not None and self._size + len(packed) > self._max_bytes:
            raise SpoolDiskFull(
                f"the export's spool would pass SPOOL_MAX_BYTES "
                f"({self._max_bytes} bytes) under {self.path.parent}",
                spool_dir=str(self.path.parent),
                max_bytes=self._max_bytes,
            )
        offset = self._size
        try:
            written = os.pwrite(self._fd, packed, offset)
            while written < len(packed):  # a short write: the rest, or ENOSPC
                written += os.pwrite(self._fd, packed[written:], offset + written)
        except OSError as exc:
            _raise_if_full(exc, self.path)
            raise
        self._index.setdefault(key, []).append((offset, len(packed)))
        self._size += len(packed)
        self.raw_bytes += len(data)

    def read(self, key: Hashable) -> Iterator[bytes]:
        """The chunks filed under `key`, decompressed, in the order they were appended."""
        for offset, length in self._index.get(key, ()):
            yield zlib.decompress(os.pread(self._fd, length, offset))

    def remove(self) -> None:
        """Delete the spool; idempotent."""
        if not self._open:
            return
        self._open = False
        os.close(self._fd)
        self._index.clear()
        self._remove_dir()

    def _remove_dir(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._dir_fd)


def _safe(label: str) -> str:
    kept = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
    return kept[:64] or "export"


def _raise_if_full(exc: OSError, path: Path) -> None:
    if exc.errno in _NO_SPACE:
        raise SpoolDiskFull(
            f"no space left for the export's spool under {path.parent}",
            spool_dir=str(path.parent),
        ) from exc


def remove_leftover_spools(root: Path) -> int:
    """Remove the spools of runs that died without removing them; returns how many.

    A spool whose run is alive is locked and stays. Safe while other workers use `root`.
    """
    if not root.is_dir():
        return 0
    removed = 0
    for entry in os.scandir(root):
        if not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith(_NEW):
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime < _SETUP_GRACE_SECONDS:
                    continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # removed meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run's
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        log.info("spool_leftovers_removed", spools=removed, spool_dir=str(root))
    return removed
