"""The SQLite records: rejected inputs, the ledger and alert state, in the outbox file.

Beside ``sqlite`` (which owns events and attempts) and sharing its writer and reader.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.store.contract_records import (
    BODY_KEPT_BYTES,
    EVENT_AS_LEDGER,
    LEDGER_COLUMNS,
    REJECTED_COLUMNS,
    AlertState,
    DeadCount,
    LedgerEntry,
    RejectedFilter,
    Rejection,
)

Write = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]
Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


class SqliteRecords:
    """Typed access to the records tables through the outbox's writer and reader."""

    def __init__(self, write: Write, read: Read) -> None:
        self._write = write
        self._read = read

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

    async def rejections(self, where: RejectedFilter, limit: int = 50) -> list[Rejection]:
        """Rejected inputs matching ``where``, newest first."""
        conditions = where.conditions()
        clauses = ["1", *(f"{column} {op} ?" for column, op, _ in conditions)]
        params = [value for _, _, value in conditions]
        rows = await self._read(
            f"SELECT {REJECTED_COLUMNS} FROM rejected WHERE {' AND '.join(clauses)}"
            " ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [Rejection(*row) for row in rows]

    async def count_rejections(self, since: float) -> int:
        # The table is bounded (10,000 rows by default), so this scan stays cheap.
        rows = await self._read("SELECT COUNT(*) FROM rejected WHERE at >= ?", (since,))
        return int(rows[0][0])

    async def rejections_per_hour(self, since: float, hours: int) -> list[int]:
        """Rejected inputs in each of ``hours`` hours from ``since``, for the console's chart."""
        rows = await self._read(
            "SELECT CAST((at - ?) / 3600 AS INTEGER) AS hour, COUNT(*) FROM rejected"
            " WHERE at >= ? GROUP BY hour",
            (since, since),
        )
        counts = {int(hour): int(n) for hour, n in rows}
        return [counts.get(hour, 0) for hour in range(hours)]

    # -- the ledger --------------------------------------------------------------------------

    async def ledger(
        self, *, token: str | None = None, referee_identity: str | None = None
    ) -> list[LedgerEntry]:
        """Ledger entries of a token, or of the ``registered`` naming a player; oldest first."""
        column, value = (
            ("token", token) if token is not None else ("referee_identity", referee_identity)
        )
        rows = await self._read(
            f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE {column} = ? ORDER BY event_id", (value,)
        )
        return [LedgerEntry.from_row(row) for row in rows]

    async def first_delivered(self, event: str, *, test: bool = False) -> LedgerEntry | None:
        # Primary-key walks that stop at the first match (the + keeps SQLite off events_due,
        # which would sort every delivered event).
        rows = await self._read(
            f"SELECT * FROM (SELECT {LEDGER_COLUMNS} FROM ledger WHERE event = ? AND test = ?"
            " ORDER BY event_id LIMIT 1) UNION ALL"
            f" SELECT * FROM (SELECT {EVENT_AS_LEDGER} FROM events WHERE +event = ?"
            " AND +test = ? AND +status = 'delivered' ORDER BY id LIMIT 1) ORDER BY 1 LIMIT 1",
            (event, test, event, test),
        )
        return LedgerEntry.from_row(rows[0]) if rows else None

    async def dead_since(self, finished_after: float) -> list[DeadCount]:
        """Events that died after a time, counted by why (the events_finished index)."""
        rows = await self._read(
            "SELECT outcome, COUNT(*), MAX(finished_at) FROM events WHERE finished_at > ?"
            " AND +status = 'dead' GROUP BY outcome ORDER BY COUNT(*) DESC",
            (finished_after,),
        )
        return [DeadCount(str(row[0]), int(row[1]), float(row[2])) for row in rows]

    # -- alert state -------------------------------------------------------------------------

    async def alert_states(self) -> dict[str, AlertState]:
        rows = await self._read("SELECT key, since, last_sent, summary FROM alert_state", ())
        return {row[0]: AlertState(*row) for row in rows}

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

    async def mark(self, name: str) -> float | None:
        """A value the alert rules keep across restarts (e.g. the last dead id told)."""
        rows = await self._read("SELECT value FROM alert_marks WHERE name = ?", (name,))
        return float(rows[0][0]) if rows else None

    async def set_mark(self, name: str, value: float) -> None:
        def save(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO alert_marks (name, value) VALUES (?, ?)", (name, value)
            )

        await self._write(save)


def to_ledger(db: sqlite3.Connection, finished_before: float) -> None:
    """Copy delivered events about to be pruned into the ledger (same transaction as prune)."""
    db.execute(
        f"INSERT OR REPLACE INTO ledger ({LEDGER_COLUMNS})"
        " SELECT id, server_id, token, event, server_event_id, referee_identity, test, outcome,"
        " referral_id, state, attempts, created_at, finished_at FROM events"
        " WHERE finished_at < ? AND +status = 'delivered'",
        (finished_before,),
    )


def prune_ledger(db: sqlite3.Connection, finished_before: float) -> int:
    return db.execute("DELETE FROM ledger WHERE finished_at < ?", (finished_before,)).rowcount


def _insert_rejections(db: sqlite3.Connection, rows: Sequence[Rejection], keep: int) -> None:
    db.executemany(
        "INSERT INTO rejected (at, http_status, code, message, field, server_event_id,"
        " token, referee_identity, peer, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.at,
                r.http_status,
                r.code,
                r.message,
                r.field,
                r.server_event_id,
                r.token,
                r.referee_identity,
                r.peer,
                r.body[:BODY_KEPT_BYTES],
            )
            for r in rows
        ],
    )
    db.execute("DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?", (keep,))
