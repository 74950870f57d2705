"""The console's reads on SQLite: each bounded whatever the backlog.

``read`` is the outbox's reader: query, then parameters. PostgreSQL's versions are in
``postgres_console``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.store.contract import (
    DELIVERED_OUTCOMES,
    STATUSES,
    EventFilter,
    EventRecord,
    HourCounts,
    LogPage,
)
from relay.store.sqlite_schema import EVENT_COLUMNS

Read = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]


async def first_ids_at(read: Read, times: Sequence[float]) -> list[int]:
    """For each time, the lowest id such that every event from it on came at or after.

    A binary search over the rowid in one recursive query, all times at once: about
    twenty index look-ups per time, where filtering on ``created_at`` (which has no
    index) would read every row.
    """
    if not times:
        return []
    seeds = ", ".join(
        "(?, ?, (SELECT MIN(id) FROM events), (SELECT MAX(id) + 1 FROM events))" for _ in times
    )
    rows = await read(
        # At each step: the first event at or after the middle id came before ``at``,
        # so the answer lies above it; or it did not, so the answer is at most the middle.
        "WITH RECURSIVE s(k, at, lo, hi) AS ("
        f" VALUES {seeds}"
        " UNION ALL SELECT k, at,"
        "  CASE WHEN COALESCE((SELECT created_at FROM events WHERE id >= (lo + hi) / 2"
        "   ORDER BY id LIMIT 1) >= at, 1) THEN lo ELSE (SELECT id FROM events"
        "   WHERE id >= (lo + hi) / 2 ORDER BY id LIMIT 1) + 1 END,"
        "  CASE WHEN COALESCE((SELECT created_at FROM events WHERE id >= (lo + hi) / 2"
        "   ORDER BY id LIMIT 1) >= at, 1) THEN (lo + hi) / 2 ELSE hi END"
        " FROM s WHERE lo < hi)"
        " SELECT k, lo FROM s WHERE lo >= hi OR lo IS NULL ORDER BY k",
        [value for k, at in enumerate(times) for value in (k, at)],
    )
    return [1 if lo is None else int(lo) for _, lo in rows]


async def hourly(read: Read, since: float, hours: int) -> list[HourCounts]:
    """Events ingested and attempts delivered or failed, per hour from ``since``.

    Ingested is a difference of ids, so events pruned since still count for their hour.
    """
    edges = await first_ids_at(read, [since + 3600 * h for h in range(hours + 1)])
    rows = await read(
        "SELECT CAST((started_at - ?) / 3600 AS INTEGER) AS hour,"
        f" SUM(outcome IN ({', '.join('?' * len(DELIVERED_OUTCOMES))})), COUNT(*)"
        " FROM attempts WHERE started_at >= ? GROUP BY hour",
        (since, *DELIVERED_OUTCOMES, since),
    )
    attempts = {int(hour): (int(ok), int(total)) for hour, ok, total in rows}
    out = []
    for hour in range(hours):
        ok, total = attempts.get(hour, (0, 0))
        ingested = edges[hour + 1] - edges[hour]
        out.append(HourCounts(since + 3600 * hour, ingested, ok, total - ok))
    return out


async def log_page(
    read: Read,
    where: EventFilter,
    *,
    older_than: int | None,
    scan: int,
    limit: int,
) -> LogPage:
    """Up to ``limit`` events matching ``where`` among the ``scan`` ids below ``older_than``.

    The filters apply to that id window only (the unary ``+`` keeps SQLite walking the
    rowid instead of sorting a whole status), so a rare filter over a million events
    answers "none in this window, look older" at once instead of reading every row.
    """
    if older_than is None:
        rows = await read("SELECT MAX(id) FROM events", ())
        older_than = int(rows[0][0] or 0) + 1
    # Rows above after_id only: the live log asks for the few newest.
    floor = max(0, older_than - scan, (where.after_id or 0) + 1)
    clauses: list[str] = ["id < ?", "id >= ?"]
    params: list[Any] = [older_than, floor]
    sql, values = where.where()
    for clause in sql.split(" AND ")[1:]:
        column, _, rest = clause.partition(" ")
        # "+column = ?" keeps SQLite off that column's index; other conditions stay as is.
        plain = rest == "= ?" and column.isidentifier() and column != "id"
        clauses.append("+" + clause if plain else clause)
    params.extend(values)
    rows = await read(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
        " ORDER BY id DESC LIMIT ?",
        (*params, limit),
    )
    records = tuple(EventRecord.from_row(r) for r in rows)
    if len(records) == limit:
        return LogPage(records, records[-1].id, floor)
    return LogPage(records, floor if floor > 1 else None, floor)


async def search(read: Read, text: str, limit: int) -> list[EventRecord]:
    """Events whose token or ``server_event_id`` is ``text``, newest first (both indexed)."""
    rows = await read(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE token = ? OR server_event_id = ?"
        " ORDER BY id DESC LIMIT ?",
        (text, text, limit),
    )
    return [EventRecord.from_row(r) for r in rows]


async def counts_up_to(read: Read, cap: int) -> dict[str, dict[str, int]]:
    """Like ``counts_by_server``, but each count stops at ``cap + 1`` (read: more than
    ``cap``), so the cost is bounded at any backlog: ``cap`` index steps at most per
    (server, status), and the servers found by seeking the status index, not scanning.
    """
    rows = await read(
        "WITH RECURSIVE st(status) AS (VALUES "
        + ", ".join(f"('{status}')" for status in STATUSES)
        + "), s(status, server_id) AS ("
        " SELECT status, (SELECT MIN(server_id) FROM events WHERE status = st.status) FROM st"
        " UNION ALL SELECT status, (SELECT MIN(server_id) FROM events"
        "  WHERE status = s.status AND server_id > s.server_id)"
        " FROM s WHERE server_id IS NOT NULL)"
        " SELECT server_id, status, (SELECT COUNT(*) FROM (SELECT 1 FROM events AS e"
        "  WHERE e.status = s.status AND e.server_id = s.server_id LIMIT ?))"
        " FROM s WHERE server_id IS NOT NULL",
        (cap + 1,),
    )
    out: dict[str, dict[str, int]] = {}
    for server_id, status, count in rows:
        out.setdefault(server_id, dict.fromkeys(STATUSES, 0))[status] = int(count)
    return out


async def oldest_pending_by_server(read: Read, servers: Sequence[str]) -> dict[str, float]:
    """When each server's oldest undelivered event was ingested; servers with none left out."""
    out: dict[str, float] = {}
    for server_id in servers:
        rows = await read(
            "SELECT created_at FROM events WHERE +status IN ('pending', 'in_flight')"
            " AND +server_id = ? ORDER BY id LIMIT 1",
            (server_id,),
        )
        if rows:
            out[server_id] = float(rows[0][0])
    return out
