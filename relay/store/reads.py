"""Every read of the outbox, the console and the records, written once for both backends.

A backend hands in how it reads (``Read``: a query, then its parameters; rows with named
columns) and its ``Dialect``; rows are decoded by column name on both. Each console read is
bounded whatever the backlog. The writes stay with each backend (SQLite's run as jobs on its
writer thread, PostgreSQL's are async); the logic they share is in ``transitions``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from typing import Any

from relay.store import polled
from relay.store.contract import (
    DELIVERED_OUTCOMES,
    STATUSES,
    Attempt,
    EventFilter,
    EventRecord,
    HourCounts,
    LogPage,
)
from relay.store.contract_records import (
    EVENT_AS_LEDGER,
    LEDGER_COLUMNS,
    REJECTED_COLUMNS,
    AlertState,
    DeadCount,
    LedgerEntry,
    RejectedFilter,
    Rejection,
)
from relay.store.dialect import Dialect

Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]

# An event's stored columns as operators see them: the record's fields but the lease, which
# ``Dialect.lease`` adds (PostgreSQL's claims carry one; one process holds a SQLite file).
EVENT_COLUMNS = ", ".join(f.name for f in fields(EventRecord) if f.name != "lease")
_ATTEMPT_COLUMNS = ", ".join(f.name for f in fields(Attempt))


class OutboxReads:
    """The outbox's reads over one backend's connection."""

    def __init__(self, read: Read, dialect: Dialect, *, due: Sequence[str] = ("pending",)):
        self._query = read
        self.dialect = dialect
        self.event_columns = f"{EVENT_COLUMNS}, {dialect.lease}"
        # Which statuses ``next_due`` watches: on PostgreSQL in-flight rows too, whose lease
        # falls due when another replica died holding it.
        self._due = tuple(due)

    async def _rows(self, query: str, *params: Any) -> list[Any]:
        return await self._query(self.dialect.sql(query), params)

    async def _number(self, query: str, *params: Any) -> float | None:
        """The first column of the first row, as a float; None if there is none."""
        rows = await self._rows(query, *params)
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def select(self, where: EventFilter, limit: int = 50) -> list[EventRecord]:
        """Events matching ``where``, newest first."""
        clause, params = where.where()
        rows = await self._rows(
            f"SELECT {self.event_columns} FROM events WHERE {clause} ORDER BY id DESC LIMIT ?",
            *params,
            limit,
        )
        return [EventRecord.from_row(r) for r in rows]

    async def count(self, where: EventFilter) -> int:
        clause, params = where.where()
        rows = await self._rows(f"SELECT COUNT(*) FROM events WHERE {clause}", *params)
        return int(rows[0][0])

    async def counts_by_server(self) -> dict[str, dict[str, int]]:
        """How many events each server has in each status."""
        rows = await self._rows(
            "SELECT server_id, status, COUNT(*) AS n FROM events GROUP BY server_id, status"
        )
        out: dict[str, dict[str, int]] = {}
        for row in rows:
            out.setdefault(row["server_id"], dict.fromkeys(STATUSES, 0))[row["status"]] = int(
                row["n"]
            )
        return out

    async def dead_by_reason(self) -> list[dict[str, Any]]:
        """Dead events grouped by server and outcome, each with its latest error."""
        rows = await self._rows(
            "SELECT g.server_id, g.reason, g.n, g.latest_id, e.last_error FROM"
            " (SELECT server_id, outcome AS reason, COUNT(*) AS n, MAX(id) AS latest_id"
            "  FROM events WHERE status = 'dead' GROUP BY server_id, outcome) AS g"
            " JOIN events AS e ON e.id = g.latest_id ORDER BY g.latest_id DESC"
        )
        return [
            {
                "server_id": r["server_id"],
                "reason": r["reason"],
                "count": int(r["n"]),
                "latest_id": r["latest_id"],
                "latest_error": r["last_error"],
            }
            for r in rows
        ]

    async def get(self, event_id: int) -> EventRecord | None:
        rows = await self._rows(f"SELECT {self.event_columns} FROM events WHERE id = ?", event_id)
        return EventRecord.from_row(rows[0]) if rows else None

    async def attempts(self, event_id: int, limit: int = 50) -> list[Attempt]:
        """The delivery log of one event, newest first."""
        rows = await self._rows(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE event_id = ? ORDER BY id DESC LIMIT ?",
            event_id,
            limit,
        )
        return [Attempt(**{name: r[name] for name in r.keys()}) for r in rows]  # noqa: SIM118

    async def next_due(self, servers: Sequence[str]) -> float | None:
        """When the earliest watched event of these servers falls due; None if none is.

        One index range per (status, server): a paused server's backlog is never walked.
        """
        if not servers:
            return None
        per_range = " UNION ALL ".join(
            "SELECT (SELECT MIN(next_attempt_at) FROM events WHERE status = ?"
            " AND server_id = ?) AS due"
            for _ in servers
            for _ in self._due
        )
        params = [value for server in servers for status in self._due for value in (status, server)]
        return await self._number(f"SELECT MIN(due) FROM ({per_range}) AS d", *params)

    async def registered_delivered_at(self, server_id: str, token: str) -> float | None:
        """When this token's (non-test) registered was delivered; None if it was not."""
        return await self._number(
            "SELECT MIN(finished_at) FROM events WHERE token = ? AND server_id = ?"
            " AND event = 'registered' AND NOT test"
            f" AND {self.dialect.hinted('status')} = 'delivered'",
            token,
            server_id,
        )

    async def source_cursor(self, source: str) -> str | None:
        rows = await self._rows(polled.GET_CURSOR, source)
        return str(rows[0][0]) if rows else None

    async def watched_players(self, server_id: str, since: float) -> list[tuple[str, str]]:
        rows = await self._rows(polled.WATCHED, server_id, since, server_id, since)
        return [(str(row[0]), str(row[1])) for row in rows]

    async def oldest_pending_created(self) -> float | None:
        """When the oldest undelivered event was ingested (ids grow with ingest time)."""
        return await self._number(
            f"SELECT created_at FROM events WHERE {self.dialect.hinted('status')}"
            " IN ('pending', 'in_flight')"
            " ORDER BY id LIMIT 1"
        )

    # -- the console's reads: each bounded, whatever the backlog ----------------------------

    async def first_ids_at(self, times: Sequence[float]) -> list[int]:
        """For each time, the lowest id such that every event from it on came at or after.

        A binary search over the id in one recursive query, all times at once: about twenty
        index look-ups per time, where filtering on ``created_at`` (which has no index) would
        read every row.
        """
        if not times:
            return []
        seeds = ", ".join(
            "(CAST(? AS INTEGER), CAST(? AS DOUBLE PRECISION), (SELECT MIN(id) FROM events),"
            " (SELECT MAX(id) + 1 FROM events))"
            for _ in times
        )
        first_at = "(SELECT created_at FROM events WHERE id >= (lo + hi) / 2 ORDER BY id LIMIT 1)"
        rows = await self._rows(
            # At each step: the first event at or after the middle id came before ``at``,
            # so the answer lies above it; or it did not, so the answer is at most the middle.
            "WITH RECURSIVE s(k, at, lo, hi) AS ("
            f" VALUES {seeds}"
            " UNION ALL SELECT k, at,"
            f"  CASE WHEN COALESCE({first_at} >= at, TRUE) THEN lo ELSE (SELECT id FROM events"
            "   WHERE id >= (lo + hi) / 2 ORDER BY id LIMIT 1) + 1 END,"
            f"  CASE WHEN COALESCE({first_at} >= at, TRUE) THEN (lo + hi) / 2 ELSE hi END"
            " FROM s WHERE lo < hi)"
            " SELECT k, lo FROM s WHERE lo >= hi OR lo IS NULL ORDER BY k",
            *[value for k, at in enumerate(times) for value in (k, at)],
        )
        return [1 if row["lo"] is None else int(row["lo"]) for row in rows]

    async def hourly(self, since: float, hours: int) -> list[HourCounts]:
        """Events ingested and attempts delivered or failed, per hour from ``since``.

        Ingested is a difference of ids, so events pruned since still count for their hour.
        """
        edges = await self.first_ids_at([since + 3600 * h for h in range(hours + 1)])
        rows = await self._rows(
            f"SELECT {self.dialect.hours_since('started_at')} AS hour,"
            f" COUNT(*) FILTER (WHERE outcome IN ({', '.join('?' * len(DELIVERED_OUTCOMES))}))"
            " AS ok, COUNT(*) AS total FROM attempts WHERE started_at >= ? GROUP BY hour",
            since,
            *DELIVERED_OUTCOMES,
            since,
        )
        attempts = {int(r["hour"]): (int(r["ok"]), int(r["total"])) for r in rows}
        out = []
        for hour in range(hours):
            ok, total = attempts.get(hour, (0, 0))
            ingested = edges[hour + 1] - edges[hour]
            out.append(HourCounts(since + 3600 * hour, ingested, ok, total - ok))
        return out

    async def log_page(
        self, where: EventFilter, *, older_than: int | None, scan: int, limit: int
    ) -> LogPage:
        """Up to ``limit`` events matching ``where`` among the ``scan`` ids below ``older_than``.

        The filters apply to that id window only (the unindexed form keeps the database
        walking the ids instead of sorting a whole status), so a rare filter over a million
        events answers "none in this window, look older" at once instead of reading every row.
        """
        if older_than is None:
            rows = await self._rows("SELECT MAX(id) FROM events")
            older_than = int(rows[0][0] or 0) + 1
        # Rows above after_id only: the live log asks for the few newest.
        floor = max(0, older_than - scan, (where.after_id or 0) + 1)
        clauses: list[str] = ["id < ?", "id >= ?"]
        params: list[Any] = [older_than, floor]
        sql, values = where.where()
        for clause in sql.split(" AND ")[1:]:
            column, _, rest = clause.partition(" ")
            plain = rest == "= ?" and column.isidentifier() and column != "id"
            clauses.append(f"{self.dialect.unindexed(column)} {rest}" if plain else clause)
        params.extend(values)
        rows = await self._rows(
            f"SELECT {self.event_columns} FROM events WHERE {' AND '.join(clauses)}"
            " ORDER BY id DESC LIMIT ?",
            *params,
            limit,
        )
        records = tuple(EventRecord.from_row(r) for r in rows)
        if len(records) == limit:
            return LogPage(records, records[-1].id, floor)
        return LogPage(records, floor if floor > 1 else None, floor)

    async def search(self, text: str, limit: int) -> list[EventRecord]:
        """Events whose token or ``server_event_id`` is ``text``, newest first (both indexed)."""
        rows = await self._rows(
            f"SELECT {self.event_columns} FROM events WHERE token = ? OR server_event_id = ?"
            " ORDER BY id DESC LIMIT ?",
            text,
            text,
            limit,
        )
        return [EventRecord.from_row(r) for r in rows]

    async def counts_up_to(self, cap: int) -> dict[str, dict[str, int]]:
        """Like ``counts_by_server``, but each count stops at ``cap + 1`` (read: more than
        ``cap``), so the cost is bounded at any backlog: ``cap`` index steps at most per
        (server, status), and the servers found by skipping along the status index (a loose
        index scan), not scanning.
        """
        rows = await self._rows(
            "WITH RECURSIVE st(status) AS (VALUES "
            + ", ".join(f"('{status}')" for status in STATUSES)
            + "), s(status, server_id) AS ("
            " SELECT status, (SELECT MIN(server_id) FROM events WHERE status = st.status) FROM st"
            " UNION ALL SELECT status, (SELECT MIN(server_id) FROM events"
            "  WHERE status = s.status AND server_id > s.server_id)"
            " FROM s WHERE server_id IS NOT NULL)"
            " SELECT server_id, status, (SELECT COUNT(*) FROM (SELECT 1 FROM events AS e"
            "  WHERE e.status = s.status AND e.server_id = s.server_id LIMIT ?) AS c) AS n"
            " FROM s WHERE server_id IS NOT NULL",
            cap + 1,
        )
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["server_id"], dict.fromkeys(STATUSES, 0))[r["status"]] = int(r["n"])
        return out

    async def oldest_pending_by_server(self, servers: Sequence[str]) -> dict[str, float]:
        """When each server's oldest undelivered event was ingested; servers with none left out."""
        out: dict[str, float] = {}
        for server_id in servers:
            created = await self._number(
                f"SELECT created_at FROM events WHERE {self.dialect.unindexed('status')}"
                f" IN ('pending', 'in_flight') AND {self.dialect.unindexed('server_id')} = ?"
                " ORDER BY id LIMIT 1",
                server_id,
            )
            if created is not None:
                out[server_id] = created
        return out


class RecordReads:
    """The reads of the records tables (rejected inputs, the ledger, alert state)."""

    def __init__(self, read: Read, dialect: Dialect) -> None:
        self._query = read
        self.dialect = dialect

    async def _rows(self, query: str, *params: Any) -> list[Any]:
        return await self._query(self.dialect.sql(query), params)

    async def rejections(self, where: RejectedFilter, limit: int = 50) -> list[Rejection]:
        """Rejected inputs matching ``where``, newest first."""
        conditions = where.conditions()
        clauses = ["TRUE", *(f"{column} {op} ?" for column, op, _ in conditions)]
        rows = await self._rows(
            f"SELECT {REJECTED_COLUMNS} FROM rejected WHERE {' AND '.join(clauses)}"
            " ORDER BY id DESC LIMIT ?",
            *(value for _, _, value in conditions),
            limit,
        )
        return [Rejection(**{name: r[name] for name in r.keys()}) for r in rows]  # noqa: SIM118

    async def count_rejections(self, since: float) -> int:
        # The table is bounded (10,000 rows by default), so this scan stays cheap.
        rows = await self._rows("SELECT COUNT(*) FROM rejected WHERE at >= ?", since)
        return int(rows[0][0])

    async def rejections_per_hour(self, since: float, hours: int) -> list[int]:
        """Rejected inputs in each of ``hours`` hours from ``since``, for the console's chart."""
        rows = await self._rows(
            f"SELECT {self.dialect.hours_since('at')} AS hour, COUNT(*) AS n FROM rejected"
            " WHERE at >= ? GROUP BY hour",
            since,
            since,
        )
        counts = {int(r["hour"]): int(r["n"]) for r in rows}
        return [counts.get(hour, 0) for hour in range(hours)]

    async def ledger(
        self, *, token: str | None = None, referee_identity: str | None = None
    ) -> list[LedgerEntry]:
        """Ledger entries of a token, or of the ``registered`` naming a player; oldest first."""
        column, value = (
            ("token", token) if token is not None else ("referee_identity", referee_identity)
        )
        rows = await self._rows(
            f"SELECT {LEDGER_COLUMNS} FROM ledger WHERE {column} = ? ORDER BY event_id", value
        )
        return [LedgerEntry.from_row(row) for row in rows]

    async def first_delivered(self, event: str, *, test: bool = False) -> LedgerEntry | None:
        """The first delivered event of a type: from the ledger, or from the outbox before it
        is copied there. Primary-key walks that stop at the first match (SQLite is kept off
        events_due, which would sort every delivered event)."""
        rows = await self._rows(
            f"SELECT * FROM (SELECT {LEDGER_COLUMNS} FROM ledger WHERE event = ? AND test = ?"
            " ORDER BY event_id LIMIT 1) AS l UNION ALL"
            f" SELECT * FROM (SELECT {EVENT_AS_LEDGER} FROM events"
            f" WHERE {self.dialect.hinted('event')} = ? AND {self.dialect.hinted('test')} = ?"
            f" AND {self.dialect.hinted('status')} = 'delivered' ORDER BY id LIMIT 1) AS e"
            " ORDER BY 1 LIMIT 1",
            event,
            test,
            event,
            test,
        )
        return LedgerEntry.from_row(rows[0]) if rows else None

    async def dead_since(self, finished_after: float) -> list[DeadCount]:
        """Events that died after a time, counted by why (the events_finished index)."""
        rows = await self._rows(
            "SELECT outcome, COUNT(*) AS n, MAX(finished_at) AS latest FROM events"
            f" WHERE finished_at > ? AND {self.dialect.hinted('status')} = 'dead'"
            " GROUP BY outcome ORDER BY COUNT(*) DESC",
            finished_after,
        )
        return [DeadCount(str(r["outcome"]), int(r["n"]), float(r["latest"])) for r in rows]

    async def alert_states(self) -> dict[str, AlertState]:
        rows = await self._rows("SELECT key, since, last_sent, summary FROM alert_state")
        return {
            r["key"]: AlertState(r["key"], r["since"], r["last_sent"], r["summary"]) for r in rows
        }

    async def mark(self, name: str) -> float | None:
        """A value the alert rules keep across restarts (e.g. the last dead id told)."""
        rows = await self._rows("SELECT value FROM alert_marks WHERE name = ?", name)
        return float(rows[0][0]) if rows else None
