"""The SQLite outbox file: opening its connections, and the lock that keeps it to one relay.

Used by the outbox (``sqlite``) and by ``migrate_outbox``, which holds the lock while it copies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
from pathlib import Path

import aiosqlite

from relay.errors import OutboxError

# WAL lets the reader run beside the writer; FULL makes each commit survive power loss.
_PRAGMAS = ("journal_mode = WAL", "synchronous = FULL", "busy_timeout = 5000")


async def connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row  # columns are read by name, wherever they sit in a SELECT
    try:
        for pragma in _PRAGMAS:
            await db.execute(f"PRAGMA {pragma}")
    except BaseException:
        # Its thread is not a daemon: left open, it would keep the process from exiting.
        await db.close()
        raise
    return db


def connect_writer(path: Path, lock_timeout_s: float) -> sqlite3.Connection:
    """The writer's connection, made off the event loop and then used on the writer's thread
    only.

    Every write queues behind the one before, so the writer's wait for a foreign lock is
    what bounds an ingest's wait: ``lock_timeout_s`` replaces SQLite's 5 s here.
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    try:
        for pragma in (*_PRAGMAS, f"busy_timeout = {round(lock_timeout_s * 1000)}"):
            db.execute(f"PRAGMA {pragma}")
    except BaseException:
        db.close()
        raise
    return db


def unopenable(path: Path, exc: sqlite3.Error | OSError) -> OutboxError:
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "full" in cause:
        free = shutil.disk_usage(path.parent).free
        return OutboxError(
            f"cannot open the outbox {path}: {cause}; its disk has {free} bytes free. Free "
            "space on that disk, then start the relay again."
        )
    return OutboxError(
        f"cannot open the outbox {path}: {cause}; point MMOLOVE_RELAY_DB (or [outbox] path) "
        "at a file in a writable directory the relay's user owns."
    )


def lock(path: Path) -> int:
    """Create the file (0600) and lock the file itself, so no second relay can open it.

    Keyed by the file, not its name: a second relay reaching it through a symlink or a
    hard link would otherwise start, and its start-up recovery would turn the first one's
    in-flight events back to pending, to be sent twice. flock is separate from SQLite's
    POSIX locks; the descriptor stays open until both connections are closed, because
    closing any descriptor of the file drops the process's POSIX locks on it.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise OutboxError(
            f"another relay is already using the outbox {path} (the same file, maybe through "
            "a symlink or a hard link); stop it or point MMOLOVE_RELAY_DB at another file."
        ) from exc
    return fd


def file_bytes(path: Path) -> int:
    """The outbox on disk: the database file and its write-ahead log."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += part.stat().st_size
    return total
