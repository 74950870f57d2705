"""The PostgreSQL outbox's transactions: each function runs inside one the caller opened."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from relay.events import Event
from relay.store.contract import (
    INGEST_COLUMNS,
    WAITING_FOR_REGISTERED,
    Added,
    Attempt,
    EventRecord,
    FleetState,
    Outcome,
    Retried,
    claim_rule,
    ingest_values,
)
from relay.store.contract_records import LEDGER_COLUMNS

# Columns of an event as the API and CLI show it, then the claim's fencing token.
EVENT_COLUMNS = (
    "id, server_id, token, event, server_event_id, test, status, outcome, attempts, "
    "created_at, next_attempt_at, last_error, last_http_status, response, referral_id, "
    "state, finished_at, replayed_at, body, referee_identity, lease"
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# A pooled connection or a plain one: the functions below take either.
Db: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


def record(row: asyncpg.Record | Sequence[Any]) -> EventRecord:
    return EventRecord(*row)


async def touch(db: Db) -> None:
    """A write transaction with nothing in it: proves the database takes writes."""
    await db.execute("SELECT txid_current()")


async def insert(db: Db, events: Sequence[Event], now: float) -> list[Added]:
    results = []
    for ev in events:
        new_id = await db.fetchval(
            f"INSERT INTO events ({INGEST_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT DO NOTHING RETURNING id",
            *ingest_values(ev, now),
        )
        if new_id is not None:
            results.append(Added(id=new_id, status="pending", created=True, conflict=False))
            continue
        row = await db.fetchrow(  # ON CONFLICT did nothing: the row is there, committed
            "SELECT id, status, fingerprint FROM events WHERE token = $1 AND server_id = $2"
            " AND event = $3 AND server_event_id = $4",
            ev.token,
            ev.server_id,
            ev.event,
            ev.server_event_id,
        )
        assert row is not None
        results.append(
            Added(id=row[0], status=row[1], created=False, conflict=row[2] != ev.fingerprint)
        )
    return results


# Rows whose lease ran out (their replica died, or hangs) fall due again; rows another
# claim is handing back right now are left to it.
_REQUEUE_EXPIRED = (
    "UPDATE events SET status = 'pending', next_attempt_at = $1, lease_owner = NULL"
    " WHERE id IN (SELECT id FROM events WHERE status = 'in_flight' AND next_attempt_at <= $1"
    " FOR UPDATE SKIP LOCKED)"
)
# Due rows no other replica is claiming (one index range per server, as on SQLite, so a
# paused server's backlog is never walked nor sorted), each with the first undelivered event
# of a lower rank for its (server, token), whoever holds that one: the ordering rule's blocker.
CANDIDATES = (
    "WITH e AS MATERIALIZED (SELECT d.* FROM unnest($1::text[]) AS s(server_id),"
    "  LATERAL (SELECT id, token, server_id, rank, test, next_attempt_at, outcome,"
    "  COALESCE(replayed_at, created_at) AS age_from FROM events"
    "  WHERE status = 'pending' AND server_id = s.server_id AND next_attempt_at <= $2"
    "  ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) AS d"
    "  ORDER BY d.next_attempt_at LIMIT $3)"
    " SELECT e.id, e.age_from, e.outcome, b.id AS blocker, b.status AS blocker_status,"
    " b.outcome AS blocker_outcome, b.next_attempt_at AS blocker_due FROM e"
    " LEFT JOIN LATERAL (SELECT p.id, p.status, p.outcome, p.next_attempt_at FROM events p"
    "   WHERE p.token = e.token AND p.server_id = e.server_id AND p.status != 'delivered'"
    "   AND p.rank < e.rank AND NOT p.test AND NOT e.test"
    "   ORDER BY p.status = 'dead' DESC, p.rank, p.id LIMIT 1) b ON TRUE"
    " ORDER BY e.next_attempt_at"
)


async def claim(
    db: Db,
    now: float,
    limit: int,
    *,
    servers: list[str],
    lease_until: float,
    max_age_s: float,
    owner: str,
) -> list[EventRecord]:
    """The claim rules (``claim_rule``: expiry, order, dead predecessors) over SKIP LOCKED
    rows."""
    await db.execute(_REQUEUE_EXPIRED, now)
    ready: list[int] = []
    for candidate in await db.fetch(CANDIDATES, servers, now, limit):
        verdict = claim_rule(candidate, now, max_age_s)
        if verdict is None:
            ready.append(candidate["id"])
        elif isinstance(verdict, Outcome):
            await finish_row(db, candidate["id"], verdict, now)
        else:
            await db.execute(
                "UPDATE events SET next_attempt_at = $1 WHERE id = $2", verdict, candidate["id"]
            )
    if not ready:
        return []
    rows = await db.fetch(
        "UPDATE events SET status = 'in_flight', attempts = attempts + 1, next_attempt_at = $1,"
        " lease_owner = $2, lease = nextval('leases') WHERE id = ANY($3::bigint[])"
        f" RETURNING {EVENT_COLUMNS}",
        lease_until,
        owner,
        ready,
    )
    return sorted((record(r) for r in rows), key=lambda r: ready.index(r.id))


# "status || ''" keeps the planner on the token index, as "+status" does on SQLite: the
# status index would walk the server's whole pending backlog (21 ms at 20,000).
WAKE_FOLLOWERS = (
    "UPDATE events SET next_attempt_at = $1 WHERE token = $2 AND server_id = $3"
    " AND status || '' = 'pending' AND attempts = 0 AND id != $4"
)


async def finish(db: Db, rec: EventRecord, outcome: Outcome, attempt: Attempt) -> bool:
    """Log the attempt; write its outcome only under the lease it was sent on. Held or not."""
    await db.execute(
        "INSERT INTO attempts (event_id, started_at, duration_ms, http_status, outcome, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        attempt.event_id,
        attempt.started_at,
        attempt.duration_ms,
        attempt.http_status,
        attempt.outcome,
        attempt.detail,
    )
    if not await finish_row(db, rec.id, outcome, attempt.started_at, lease=rec.lease):
        return False
    if outcome.status in ("delivered", "dead"):
        await db.execute(
            WAKE_FOLLOWERS,
            time.time(),
            rec.token,
            rec.server_id,
            rec.id,
        )
    if outcome.status in ("delivered", "dead") and rec.event == "registered" and not rec.test:
        # The events that overtook this registered may go now (or die with it).
        await db.execute(
            "UPDATE events SET next_attempt_at = $1 WHERE token = $2 AND server_id = $3"
            " AND status || '' = 'pending' AND outcome = $4",
            time.time(),
            rec.token,
            rec.server_id,
            WAITING_FOR_REGISTERED,
        )
    return True


async def release(db: Db, held: list[tuple[int, int]], now: float) -> None:
    await db.execute(
        "UPDATE events SET status = 'pending', next_attempt_at = $1, lease_owner = NULL"
        " FROM unnest($2::bigint[], $3::bigint[]) AS r(id, lease)"
        " WHERE events.id = r.id AND events.lease = r.lease AND status = 'in_flight'",
        now,
        [event_id for event_id, _ in held],
        [lease for _, lease in held],
    )


async def prune(db: Db, before: float, ledger_before: float) -> tuple[int, int]:
    """Delete delivered events finished and attempt rows started before ``before``, each
    event leaving its ledger entry; drop ledger entries finished before ``ledger_before``."""
    await db.execute(
        f"INSERT INTO ledger ({LEDGER_COLUMNS})"
        " SELECT id, server_id, token, event, server_event_id, referee_identity, test, outcome,"
        " referral_id, state, attempts, created_at, finished_at FROM events"
        " WHERE finished_at < $1 AND status = 'delivered' ON CONFLICT (event_id) DO NOTHING",
        before,
    )
    await db.execute("DELETE FROM ledger WHERE finished_at < $1", ledger_before)
    events = await db.execute(
        "DELETE FROM events WHERE finished_at < $1 AND status = 'delivered'", before
    )
    attempts = await db.execute("DELETE FROM attempts WHERE started_at < $1", before)
    return _rowcount(events), _rowcount(attempts)


async def purge(db: Db, status: str, before: float, limit: int) -> int:
    rows = await db.fetch(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE status = $1"
        " AND finished_at < $2 ORDER BY id LIMIT $3) RETURNING id",
        status,
        before,
        limit,
    )
    ids = [row[0] for row in rows]
    if ids:
        await db.execute("DELETE FROM attempts WHERE event_id = ANY($1::bigint[])", ids)
    return len(ids)


async def retry_one(db: Db, event_id: int, now: float) -> Retried:
    row = await db.fetchrow(
        "SELECT status, server_id, token, rank, test FROM events WHERE id = $1 FOR UPDATE",
        event_id,
    )
    if row is None:
        return Retried(event_id, "not_found")
    status, server_id, token, rank, test = row
    if status == "pending":
        await db.execute("UPDATE events SET next_attempt_at = $1 WHERE id = $2", now, event_id)
        return Retried(event_id, "due_now")
    if status != "dead":
        return Retried(event_id, status)
    requeue = (
        "UPDATE events SET status = 'pending', outcome = NULL, next_attempt_at = $1,"
        " finished_at = NULL, replayed_at = $1 WHERE "
    )
    await db.execute(requeue + "id = $2", now, event_id)
    followers: list[Any] = []
    if not test:
        followers = await db.fetch(
            requeue + "token = $2 AND server_id = $3 AND status = 'dead'"
            " AND outcome = 'predecessor_dead' AND rank > $4 AND NOT test RETURNING id",
            now,
            token,
            server_id,
            rank,
        )
    return Retried(event_id, "requeued", tuple(sorted(r[0] for r in followers)))


async def finish_row(
    db: Db, event_id: int, outcome: Outcome, now: float, *, lease: int | None = None
) -> bool:
    """Write an outcome; with ``lease``, only if that claim still holds the row. Written?"""
    finished = now if outcome.status in ("delivered", "dead") else None
    fence = "" if lease is None else " AND status = 'in_flight' AND lease = $11"
    result = await db.execute(
        "UPDATE events SET status = $1, outcome = $2, next_attempt_at = $3, last_error = $4,"
        " last_http_status = COALESCE($5, last_http_status), response = COALESCE($6, response),"
        " referral_id = COALESCE($7, referral_id), state = COALESCE($8, state),"
        " finished_at = $9"
        f" WHERE id = $10{fence}",
        outcome.status,
        outcome.outcome,
        outcome.next_attempt_at or now,
        outcome.error,
        outcome.http_status,
        outcome.response,
        outcome.referral_id,
        outcome.state,
        finished,
        event_id,
        *(() if lease is None else (lease,)),
    )
    return _rowcount(result) > 0


def _rowcount(status: str) -> int:
    """The row count at the end of a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


async def share(db: Db, owner: str, mine: FleetState, now: float, *, stale_s: float) -> list[Any]:
    """Upsert this replica's row; the other live replicas' (circuit_open_until, paused)."""
    await db.execute(
        "INSERT INTO replicas (owner, seen_at, circuit_open_until, paused)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (owner) DO UPDATE SET seen_at = $2,"
        " circuit_open_until = $3, paused = $4",
        owner,
        now,
        mine.circuit_open_until,
        json.dumps(mine.paused),
    )
    await db.execute("DELETE FROM replicas WHERE seen_at < $1", now - 3600)  # long gone
    return list(
        await db.fetch(
            "SELECT circuit_open_until, paused FROM replicas WHERE owner != $1 AND seen_at >= $2",
            owner,
            now - stale_s,
        )
    )


# Sessions of relays (any replica) holding a transaction open far longer than any of ours.
END_STALE_TRANSACTIONS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name = $1 AND pid != pg_backend_pid()"
    " AND xact_start < now() - make_interval(secs => $2)"
)
