"""Disk space set aside beside the outbox, so a full disk never strands what is in flight.

A preallocated file (``outbox.db.reserve``) holds ``reserve_bytes``. When a write meets a
full disk, the reserve is deleted and the WAL checkpointed with TRUNCATE: the space that
frees lets the outcomes of attempts already sent, ``purge`` and ``retry`` complete, while
ingest and new deliveries wait. Once the disk has room for the reserve and a quarter more,
it is made again and everything resumes.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path

import structlog

from relay.errors import OutboxError

log = structlog.get_logger("relay.outbox")


class DiskReserve:
    """The reserve file; ``full`` while it is released because the disk filled up.

    Its methods do file I/O: call them on a worker thread (the writer's, or ``to_thread``).
    """

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.full = False

    def ensure(self) -> bool:
        """Make the reserve again once space returned; False if it does not fit yet."""
        if self._allocate():
            return True
        self.full = True
        log.error(
            "outbox.reserve_unavailable",
            reserve=str(self.path),
            reserve_bytes=self.size_bytes,
            error="the disk has no room for the reserve; ingest and delivery wait for space",
        )
        return False

    def make_at_start(self) -> None:
        """Make the reserve at start-up, or refuse to start: a relay that began without it
        could not record the outcome of a delivery once the disk filled."""
        if not self._allocate():
            free = shutil.disk_usage(self.path.parent).free
            raise OutboxError(
                f"the disk holding the outbox has {free} bytes free, and the relay needs "
                f"{self.size_bytes} (reserve_bytes) for its reserve {self.path}: free space "
                "on that disk, or lower [outbox] reserve_bytes, then start the relay again."
            )

    def _allocate(self) -> bool:
        if self.path.exists() and self.path.stat().st_blocks * 512 >= self.size_bytes:
            return True
        fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            # Allocated blocks, not a sparse file: the space must really be taken now.
            os.posix_fallocate(fd, 0, self.size_bytes)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self.path.unlink(missing_ok=True)
            return False
        finally:
            os.close(fd)
        return True

    def release(self, db: sqlite3.Connection) -> None:
        """The disk is full: free the reserve, then shrink the WAL into the database file.

        Without the TRUNCATE checkpoint a WAL that filled the disk stays at its size, since
        SQLite's auto-checkpoint only runs after a commit that succeeded.
        """
        first = not self.full
        self.full = True
        self.path.unlink(missing_ok=True)
        try:
            busy, wal_pages, moved = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.error("outbox.checkpoint_failed", error=str(exc))
            busy, wal_pages, moved = 1, None, None
        if first:
            log.error(
                "outbox.disk_full",
                reserve_released_bytes=self.size_bytes,
                wal_truncated=not busy,
                wal_pages=wal_pages,
                checkpointed_pages=moved,
                action="free disk space; deliveries in flight are recorded, purge still works",
            )

    def refresh(self) -> int:
        """Free bytes on the outbox's disk; ends a full spell once the reserve fits again with
        a quarter of its size to spare (the margin keeps it from flapping)."""
        free = shutil.disk_usage(self.path.parent).free
        if self.full and free >= self.size_bytes + self.size_bytes // 4 and self.ensure():
            self.full = False
            log.info("outbox.disk_recovered", free_bytes=free, reserve_bytes=self.size_bytes)
        return free


def short_of_space(free_bytes: int, min_free_bytes: int) -> str | None:
    """Why ingest refuses events for want of disk space, or None: the one rule ``/readyz``
    and ``doctor`` apply."""
    if free_bytes < min_free_bytes:
        return f"disk nearly full: {free_bytes} bytes free, {min_free_bytes} needed for ingest"
    return None
