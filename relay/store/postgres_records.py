"""The PostgreSQL records' writes: rejected inputs and alert state, beside the events.

The same tables as SQLite's migration 4 (``postgres_schema`` migration 3), reached through
the outbox's pool: ``tx`` runs a job in one transaction. Their reads are
``reads.RecordReads``, and the ledger is written by the prune (``transitions``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.errors import OutboxError
from relay.store.contract_records import REJECTED_STORED, AlertState, Rejection
from relay.store.dialect import POSTGRES
from relay.store.postgres_sql import Db
from relay.store.reads import Read, RecordReads

Tx = Callable[[Callable[[Db], Awaitable[Any]]], Awaitable[Any]]


class PostgresRecords(RecordReads):
    """Typed access to the records tables of a PostgreSQL outbox."""

    def __init__(self, tx: Tx, read: Read) -> None:
        super().__init__(read, POSTGRES)
        self._tx = tx

    # -- rejected inputs ---------------------------------------------------------------------

    async def add_rejections(self, rows: Sequence[Rejection], *, keep: int) -> bool:
        """Store rejections and drop all but the newest ``keep``. Their own transaction: a
        failure loses only the record (False), never an event."""

        async def insert(db: Db) -> None:
            await db.executemany(
                f"INSERT INTO rejected ({REJECTED_STORED})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                [r.stored() for r in rows],
            )
            await db.execute(
                "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - $1", keep
            )

        try:
            await self._tx(insert)
        except OutboxError:
            return False
        return True

    # -- alert state -------------------------------------------------------------------------

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

    async def set_mark(self, name: str, value: float) -> None:
        await self._tx(
            lambda db: db.execute(
                "INSERT INTO alert_marks (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET value = $2",
                name,
                value,
            )
        )
