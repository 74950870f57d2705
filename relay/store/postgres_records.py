"""The PostgreSQL records: rejected inputs, the ledger and alert state, beside the events.

The same tables as SQLite's migration 4 (``postgres_schema`` migration 3), reached through
the outbox's pool: ``tx`` runs a job in one transaction, ``read`` fetches rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.errors import OutboxError
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
from relay.store.postgres_sql import Db

Tx = Callable[[Callable[[Db], Awaitable[Any]]], Awaitable[Any]]
Read = Callable[..., Awaitable[list[Any]]]


class PostgresRecords:
    """Typed access to the records tables of a PostgreSQL outbox."""

    def __init__(self, tx: Tx, read: Read) -> None:
        self._tx = tx
        self._read = read

    # -- rejected inputs ---------------------------------------------------------------------

    async def add_rejections(self, rows: Sequence[Rejection], *, keep: int) -> bool:
        """Store rejections and drop all but the newest ``keep``. Their own transaction: a
        failure loses only the record (False), never an event."""

        async def insert(db: Db) -> None:
            await db.executemany(
                "INSERT INTO rejected (at, http_status, code, message, field, server_event_id,"
                " token, referee_identity, peer, body)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
            await db.execute(
                "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - $1", keep
            )

        try:
            await self._tx(insert)
        except OutboxError:
            return False
        return True

    async def rejections(self, where: RejectedFilter, limit: int = 50) -> list[Rejection]:
        """Rejected inputs matching ``where``, newest first."""
        conditions = where.conditions()
        clauses = ["TRUE"] + [
            f"{column} {op} ${n}" for n, (column, op, _) in enumerate(conditions, start=1)
        ]
        params = [value for _, _, value in conditions]
        rows = await self._read(
            f"SELECT {REJECTED_COLUMNS} FROM rejected WHERE {' AND '.join(clauses)}"
            f" ORDER BY id DESC LIMIT ${len(params) + 1}",
            *params,
            limit,
        )
        return [Rejection(*row) for row in rows]

    async def count_rejections(self, since: float) -> int:
        rows = await self._read("SELECT count(*) FROM rejected WHERE at >= $1", since)
        return int(rows[0][0])

    async def rejections_per_hour(self, since: float, hours: int) -> list[int]:
        rows = await self._read(
            "SELECT floor((at - $1) / 3600)::int AS hour, count(*) FROM rejected"
            " WHERE at >= $1 GROUP BY hour",
            since,
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
            f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE {column} = $1 ORDER BY event_id", value
        )
        return [LedgerEntry.from_row(row) for row in rows]

    async def first_delivered(self, event: str, *, test: bool = False) -> LedgerEntry | None:
        rows = await self._read(
            f"SELECT * FROM (SELECT {LEDGER_COLUMNS} FROM ledger WHERE event = $1 AND test = $2"
            " ORDER BY event_id LIMIT 1) l UNION ALL"
            f" SELECT * FROM (SELECT {EVENT_AS_LEDGER} FROM events WHERE event = $1"
            " AND test = $2 AND status = 'delivered' ORDER BY id LIMIT 1) e ORDER BY 1 LIMIT 1",
            event,
            test,
        )
        return LedgerEntry.from_row(rows[0]) if rows else None

    async def dead_since(self, finished_after: float) -> list[DeadCount]:
        """Events that died after a time, counted by why (the events_finished index)."""
        rows = await self._read(
            "SELECT outcome, count(*), max(finished_at) FROM events WHERE finished_at > $1"
            " AND status = 'dead' GROUP BY outcome ORDER BY count(*) DESC",
            finished_after,
        )
        return [DeadCount(str(row[0]), int(row[1]), float(row[2])) for row in rows]

    # -- alert state -------------------------------------------------------------------------

    async def alert_states(self) -> dict[str, AlertState]:
        rows = await self._read("SELECT key, since, last_sent, summary FROM alert_state")
        return {row[0]: AlertState(*row) for row in rows}

    async def save_alert(self, state: AlertState) -> None:
        await self._tx(
            lambda db: db.execute(
                "INSERT INTO alert_state (key, since, last_sent, summary) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (key) DO UPDATE SET since = $2, last_sent = $3, summary = $4",
                state.key,
                state.since,
                state.last_sent,
                state.summary,
            )
        )

    async def clear_alert(self, key: str) -> None:
        await self._tx(lambda db: db.execute("DELETE FROM alert_state WHERE key = $1", key))

    async def mark(self, name: str) -> float | None:
        """A value the alert rules keep across restarts (e.g. the last dead id told)."""
        rows = await self._read("SELECT value FROM alert_marks WHERE name = $1", name)
        return float(rows[0][0]) if rows else None

    async def set_mark(self, name: str, value: float) -> None:
        await self._tx(
            lambda db: db.execute(
                "INSERT INTO alert_marks (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET value = $2",
                name,
                value,
            )
        )
