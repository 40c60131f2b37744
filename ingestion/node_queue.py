"""The DICOM node's disk queue: each received instance is durable (fsync, atomic rename) before it is acknowledged."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)

READY = "ready"  # whole instances waiting to be indexed, one file each, named by the image's salted id
TMP = "tmp"  # instances being written: never acknowledged, so what a kill leaves here is deleted at start
FAILED = "failed"  # instances the indexer could not index, kept for a person to look at
SUFFIX = ".dcm"
DEFAULT_MAX_ITEMS = 100_000
DEFAULT_MIN_FREE_BYTES = 1 << 30  # stop accepting while the queue's file system has less than 1 GiB free


class QueueFullError(Exception):
    """The queue holds its bound of instances, or its disk is (nearly) full: the sender must retry later."""


class DiskQueue:
    """A directory of instances: `put` returns once the bytes are on disk; `take` / `done` drain it in order."""

    def __init__(self, root: str | Path, max_items: int = DEFAULT_MAX_ITEMS,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES) -> None:
        self.root = Path(root)
        self.max_items = max_items
        self.min_free_bytes = min_free_bytes
        for name in (READY, TMP, FAILED):
            # 0700: the queue holds whole datasets, patient names included, until they are indexed.
            (self.root / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        for partial in (self.root / TMP).iterdir():
            partial.unlink(missing_ok=True)  # written but never renamed: the sender got no success for it
        self._lock = threading.Lock()
        self._depth = sum(1 for _ in (self.root / READY).glob(f"*{SUFFIX}"))
        self.arrived = threading.Event()  # set by put: wakes the indexer
        self._taken: dict[Path, int] = {}  # path -> inode when taken: a re-sent instance replacing it stays queued

    def depth(self) -> int:
        return self._depth

    def put(self, key: str, data: bytes) -> None:
        """Write `data` as `ready/<key>.dcm`, durably; a key already queued is replaced (the same instance again)."""
        with self._lock:
            if self._depth >= self.max_items:
                raise QueueFullError(f"the queue holds {self._depth} instances, its bound (--queue-max-items)")
            free = shutil.disk_usage(self.root).free
            if free - len(data) < self.min_free_bytes:
                raise QueueFullError(f"{free >> 20} MiB free on the queue's disk, under the {self.min_free_bytes >> 20}"
                                     f" MiB it keeps (--queue-min-free-mb)")
        target = self.root / READY / f"{key}{SUFFIX}"
        tmp = self.root / TMP / f"{key}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._lock:
                existed = target.exists()
                os.replace(tmp, target)
                if not existed:
                    self._depth += 1
            _fsync_dir(target.parent)  # the rename itself must survive a power cut before the sender is told
        except OSError as error:
            tmp.unlink(missing_ok=True)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QueueFullError(f"the queue's disk is full: {error.strerror}") from None
            raise
        self.arrived.set()

    def take(self, limit: int) -> list[Path]:
        """Up to `limit` queued instances, oldest first (they stay queued until `done`)."""
        entries = []
        for path in (self.root / READY).glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced meanwhile: taken at the next turn
                continue
            entries.append((stat.st_mtime_ns, path.name, path, stat.st_ino))
        entries.sort()
        taken = entries[:limit]
        with self._lock:
            self._taken = {path: inode for _, _, path, inode in taken}
        return [path for _, _, path, _ in taken]

    def done(self, paths: list[Path]) -> None:
        """Drop indexed instances (after their rows are written: a kill in between only indexes them again)."""
        with self._lock:
            for path in paths:
                try:
                    if path.stat().st_ino != self._taken.get(path):
                        continue  # a newer copy of the instance arrived while this one was indexed: index it too
                    path.unlink()
                    self._depth -= 1
                except FileNotFoundError:
                    pass
        _fsync_dir(self.root / READY)

    def fail(self, path: Path) -> None:
        """Move an instance the indexer cannot index out of the way, kept for inspection."""
        with self._lock:
            try:
                os.replace(path, self.root / FAILED / path.name)
                self._depth -= 1
            except FileNotFoundError:
                pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
