"""The console's reads on PostgreSQL: each bounded whatever the backlog, as on SQLite.

SQLite's tricks have their PostgreSQL equivalents here: ``column || ''`` where SQLite
writes ``+column`` (keep the planner off that column's index, walking ids instead), and
``position(... in body)`` for ``instr``. ``read`` is the outbox's: query, then parameters.
"""

from __future__ import annotations

import re
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
from relay.store.postgres_sql import EVENT_COLUMNS, record

Read = Callable[..., Awaitable[list[Any]]]


def numbered(clause: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``…"""
    numbers = iter(range(1, clause.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", clause)


async def first_ids_at(read: Read, times: Sequence[float]) -> list[int]:
    """For each time, the lowest id such that every event from it on came at or after.

    The binary search over the id of SQLite's version, in one recursive query: about
    twenty index look-ups per time, where filtering on ``created_at`` would read every row.
    """
    if not times:
        return []
    seeds = ", ".join(
        "(?::int, ?::float8, (SELECT min(id) FROM events), (SELECT max(id) + 1 FROM events))"
        for _ in times
    )
    first_at = "(SELECT created_at FROM events WHERE id >= (lo + hi) / 2 ORDER BY id LIMIT 1)"
    rows = await read(
        numbered(
            "WITH RECURSIVE s(k, at, lo, hi) AS ("
            f" VALUES {seeds}"
            " UNION ALL SELECT k, at,"
            f"  CASE WHEN COALESCE({first_at} >= at, TRUE) THEN lo ELSE (SELECT id FROM events"
            "   WHERE id >= (lo + hi) / 2 ORDER BY id LIMIT 1) + 1 END,"
            f"  CASE WHEN COALESCE({first_at} >= at, TRUE) THEN (lo + hi) / 2 ELSE hi END"
            " FROM s WHERE lo < hi)"
            " SELECT k, lo FROM s WHERE lo >= hi OR lo IS NULL ORDER BY k"
        ),
        *[value for k, at in enumerate(times) for value in (k, at)],
    )
    return [1 if lo is None else int(lo) for _, lo in rows]


async def hourly(read: Read, since: float, hours: int) -> list[HourCounts]:
    """Events ingested and attempts delivered or failed, per hour from ``since``."""
    edges = await first_ids_at(read, [since + 3600 * h for h in range(hours + 1)])
    rows = await read(
        "SELECT floor((started_at - $1) / 3600)::int AS hour,"
        " count(*) FILTER (WHERE outcome = ANY($2::text[])), count(*)"
        " FROM attempts WHERE started_at >= $1 GROUP BY hour",
        since,
        list(DELIVERED_OUTCOMES),
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
    """Up to ``limit`` events matching ``where`` among the ``scan`` ids below ``older_than``."""
    if older_than is None:
        rows = await read("SELECT max(id) FROM events")
        older_than = int(rows[0][0] or 0) + 1
    floor = max(0, older_than - scan, (where.after_id or 0) + 1)
    clauses: list[str] = ["id < ?", "id >= ?"]
    params: list[Any] = [older_than, floor]
    sql, values = where.where()
    for clause in sql.split(" AND ")[1:]:
        column, _, rest = clause.partition(" ")
        # "(column || '') = ?" keeps PostgreSQL on the id range; other conditions stay as is.
        plain = rest == "= ?" and column.isidentifier() and column != "id"
        clauses.append(f"({column} || '') {rest}" if plain else clause)
    params.extend(values)
    rows = await read(
        numbered(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
            " ORDER BY id DESC LIMIT ?"
        ),
        *params,
        limit,
    )
    records = tuple(record(r) for r in rows)
    if len(records) == limit:
        return LogPage(records, records[-1].id, floor)
    return LogPage(records, floor if floor > 1 else None, floor)


async def search(read: Read, text: str, limit: int) -> list[EventRecord]:
    """Events whose token or ``server_event_id`` is ``text``, newest first (both indexed)."""
    rows = await read(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE token = $1 OR server_event_id = $1"
        " ORDER BY id DESC LIMIT $2",
        text,
        limit,
    )
    return [record(r) for r in rows]


async def counts_up_to(read: Read, cap: int) -> dict[str, dict[str, int]]:
    """Counts per server and status, each stopped at ``cap + 1``: the servers found by
    skipping along the status index (a loose index scan), each count ``cap`` steps at most."""
    rows = await read(
        "WITH RECURSIVE st(status) AS (SELECT unnest($2::text[])), s(status, server_id) AS ("
        " SELECT status, (SELECT min(server_id) FROM events WHERE status = st.status) FROM st"
        " UNION ALL SELECT status, (SELECT min(server_id) FROM events"
        "  WHERE status = s.status AND server_id > s.server_id)"
        " FROM s WHERE server_id IS NOT NULL)"
        " SELECT server_id, status, (SELECT count(*) FROM (SELECT 1 FROM events AS e"
        "  WHERE e.status = s.status AND e.server_id = s.server_id LIMIT $1) AS c)"
        " FROM s WHERE server_id IS NOT NULL",
        cap + 1,
        list(STATUSES),
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
            "SELECT created_at FROM events WHERE status || '' IN ('pending', 'in_flight')"
            " AND server_id || '' = $1 ORDER BY id LIMIT 1",
            server_id,
        )
        if rows:
            out[server_id] = float(rows[0][0])
    return out
