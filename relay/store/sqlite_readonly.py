"""A SQLite outbox opened read-only, for the read commands while the daemon is down.

Opened ``mode=ro`` (no write, no write lock, no checkpoint, and no ``.lock`` taken), so it is
safe beside a running daemon; with no write-ahead log beside it, ``immutable`` too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite

from relay.errors import OutboxError
from relay.store.sqlite import SqliteOutbox
from relay.store.sqlite_records import SqliteRecords
from relay.store.sqlite_schema import MIGRATIONS


class ReadOnlyOutbox(SqliteOutbox):
    """An ``Outbox`` on a read-only connection; any write fails with a clear error."""

    def __init__(self, path: Path, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._reader = reader
        self._write = _refuse
        self.lost: str | None = None  # this reader does not watch the file
        self.new_events = asyncio.Event()
        self.records = SqliteRecords(_refuse, self._read)

    @classmethod
    async def open_file(cls, path: Path, *, immutable: bool) -> ReadOnlyOutbox:
        """Open ``path`` (absolute, existing) read-only; ``immutable`` when no WAL is beside it."""
        uri = f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")
        try:
            reader = await aiosqlite.connect(uri, uri=True)
            reader.row_factory = sqlite3.Row  # the outbox reads its columns by name
            try:
                await reader.execute("PRAGMA query_only = 1")
                rows = list(await reader.execute_fetchall("PRAGMA user_version"))
                version = int(rows[0][0]) if rows else 0
                if version != len(MIGRATIONS):
                    raise OutboxError(
                        f"the outbox {path} has schema version {version} and this relay reads "
                        f"version {len(MIGRATIONS)}; a read-only reader cannot migrate it. "
                        "Start this relay's daemon once (it migrates), or read the file with "
                        "the relay version that wrote it."
                    )
            except BaseException:
                await reader.close()
                raise
        except sqlite3.Error as exc:
            raise OutboxError(
                f"cannot read the outbox {path} ({exc}); check the path and that you may "
                "read it (run as the relay's user, e.g. sudo -u mmolove-relay)."
            ) from exc
        return cls(path, reader)

    async def close(self) -> None:
        await self._reader.close()


async def _refuse(job: Any) -> Any:
    raise OutboxError(
        "the outbox was opened read-only (the daemon is not running); start "
        "`mmolove-relay serve` to change it."
    )
