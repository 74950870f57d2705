"""A SQLite outbox opened read-only, for the read commands while the daemon is down.

Opened ``mode=ro`` (no write, no write lock, no checkpoint, and no ``.lock`` taken), so it is
safe beside a running daemon; with no write-ahead log beside it, ``immutable`` too.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import aiosqlite

from relay.errors import OutboxError
from relay.events import Event
from relay.store.base import OutboxBase
from relay.store.contract import Added, EventRecord, FleetState, Health
from relay.store.dialect import SQLITE
from relay.store.sqlite_file import file_bytes
from relay.store.sqlite_records import SqliteRecords
from relay.store.sqlite_schema import require_current
from relay.store.transitions import Steps, Transitions

T = TypeVar("T")
_READ_ONLY = (
    "the outbox was opened read-only (the daemon is not running); start "
    "`mmolove-relay serve` to change it."
)


class ReadOnlyOutbox(OutboxBase):
    """An ``Outbox`` on a read-only connection: the shared reads; every write, and every
    question only a writer can answer, fails with a clear ``OutboxError``."""

    def __init__(self, path: Path, reader: aiosqlite.Connection) -> None:
        super().__init__(self._read, Transitions(SQLITE, fenced=False))
        self.path = path
        self._reader = reader
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
                require_current(
                    int(rows[0][0]) if rows else 0,
                    path,
                    doing="reads",
                    remedy="A read-only reader cannot migrate it: start this relay's daemon "
                    "once (it migrates), or read the file with the relay version that wrote it.",
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

    @property
    def location(self) -> str:
        return str(self.path)

    async def close(self) -> None:
        await self._reader.close()

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise OutboxError(f"reading the outbox {self.path} failed ({exc}).") from exc

    # -- what a reader can say of the file --------------------------------------------------

    async def health(self) -> Health:
        free = await self.disk_free_bytes()
        return Health((f"outbox not writable: {_READ_ONLY}",), free)

    async def check_file(self) -> str | None:
        return None  # not watched: this reader stores nothing that a lost file would lose

    async def disk_free_bytes(self) -> int | None:
        return (await asyncio.to_thread(shutil.disk_usage, self.path.parent)).free

    async def can_deliver(self) -> bool:
        return False  # no outcome could be recorded

    def size_bytes(self) -> int:
        return file_bytes(self.path)

    async def share(self, mine: FleetState, now: float) -> FleetState:
        return FleetState()

    # -- writes: refused ---------------------------------------------------------------------

    async def _run(self, steps: Callable[[], Steps[T]]) -> NoReturn:
        raise OutboxError(_READ_ONLY)

    def _wake(self) -> None:
        """Nothing is ever written here, so nothing wakes."""

    def _claim_steps(
        self, now: float, limit: int, servers: Sequence[str], lease_s: float, max_age_s: float
    ) -> NoReturn:
        raise OutboxError(_READ_ONLY)

    async def add(self, events: Sequence[Event], now: float) -> list[Added]:
        raise OutboxError(_READ_ONLY)

    async def add_polled(
        self, events: Sequence[Event], now: float, *, source: str, cursor: str
    ) -> list[Added]:
        raise OutboxError(_READ_ONLY)

    async def requeue_in_flight(self, now: float) -> int:
        raise OutboxError(_READ_ONLY)

    async def release(self, records: Iterable[EventRecord], now: float) -> None:
        raise OutboxError(_READ_ONLY)


async def _refuse(job: Any) -> NoReturn:
    raise OutboxError(_READ_ONLY)
