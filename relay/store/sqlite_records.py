"""The SQLite records' writes: rejected inputs and alert state, in the outbox file.

Beside ``sqlite`` (which owns events and attempts) and sharing its writer and reader; their
reads are ``reads.RecordReads``, and the ledger is written by the prune (``transitions``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.store.contract_records import REJECTED_STORED, AlertState, Rejection
from relay.store.dialect import SQLITE
from relay.store.reads import Read, RecordReads

Write = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]


class SqliteRecords(RecordReads):
    """Typed access to the records tables: reads through the outbox's reader (``reads``),
    writes as jobs on its writer."""

    def __init__(self, write: Write, read: Read) -> None:
        super().__init__(read, SQLITE)
        self._write = write

    # -- rejected inputs ---------------------------------------------------------------------

    async def add_rejections(self, rows: Sequence[Rejection], *, keep: int) -> bool:
        """Store rejections and drop all but the newest ``keep`` (a range delete on the key).

        Runs in a savepoint: should a row not store, only the record is lost (False),
        never the events that share its group commit.
        """

        def insert(db: sqlite3.Connection) -> bool:
            db.execute("SAVEPOINT rejected")
            try:
                _insert_rejections(db, rows, keep)
            except (sqlite3.Error, ValueError):
                db.execute("ROLLBACK TO rejected")
                return False
            finally:
                db.execute("RELEASE rejected")
            return True

        stored: bool = await self._write(insert)
        return stored

    # -- alert state -------------------------------------------------------------------------

    async def save_alert(self, state: AlertState) -> None:
        def save(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO alert_state (key, since, last_sent, summary)"
                " VALUES (?, ?, ?, ?)",
                (state.key, state.since, state.last_sent, state.summary),
            )

        await self._write(save)

    async def clear_alert(self, key: str) -> None:
        def clear(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM alert_state WHERE key = ?", (key,))

        await self._write(clear)

    async def set_mark(self, name: str, value: float) -> None:
        def save(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO alert_marks (name, value) VALUES (?, ?)", (name, value)
            )

        await self._write(save)


def _insert_rejections(db: sqlite3.Connection, rows: Sequence[Rejection], keep: int) -> None:
    db.executemany(
        f"INSERT INTO rejected ({REJECTED_STORED}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [r.stored() for r in rows],
    )
    db.execute("DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?", (keep,))
