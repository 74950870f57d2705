"""The PostgreSQL outbox's own SQL: ingest, the claim's candidates and lease, the fleet's
shared state; each function runs inside a transaction the caller opened."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from relay.events import Event
from relay.store.contract import (
    INGEST_COLUMNS,
    Added,
    FleetState,
    ingest_values,
)
from relay.store.dialect import POSTGRES
from relay.store.reads import EVENT_COLUMNS
from relay.store.transitions import Steps, Transitions

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# A pooled connection or a plain one: the functions below take either.
Db: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
T = TypeVar("T")


async def touch(db: Db) -> None:
    """A write transaction with nothing in it: proves the database takes writes."""
    await db.execute("SELECT txid_current()")


async def insert(db: Db, events: Sequence[Event], now: float) -> list[Added]:
    results = []
    for ev in events:
        new_id = await db.fetchval(
            f"INSERT INTO events ({INGEST_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
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


# The state changes both backends share, in PostgreSQL's SQL; outcomes are fenced by lease.
TRANSITIONS = Transitions(POSTGRES, fenced=True)
# Finishing wakes the followers of an event (its plan is checked against a large backlog).
WAKE_FOLLOWERS = TRANSITIONS.wake_followers

# Rows whose lease ran out (their replica died, or hangs) fall due again; rows another
# claim is handing back right now are left to it.
REQUEUE_EXPIRED = (
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
# The ready candidates leased to this replica under a new fencing token, as event rows.
TAKE = (
    "UPDATE events SET status = 'in_flight', attempts = attempts + 1, next_attempt_at = $1,"
    " lease_owner = $2, lease = nextval('leases') WHERE id = ANY($3::bigint[])"
    f" RETURNING {EVENT_COLUMNS}, lease"
)


async def release(db: Db, held: list[tuple[int, int]], now: float) -> None:
    """Hand back the rows this replica still holds under these (id, lease) claims."""
    await db.execute(
        "UPDATE events SET status = 'pending', next_attempt_at = $1, lease_owner = NULL"
        " FROM unnest($2::bigint[], $3::bigint[]) AS r(id, lease)"
        " WHERE events.id = r.id AND events.lease = r.lease AND status = 'in_flight'",
        now,
        [event_id for event_id, _ in held],
        [lease for _, lease in held],
    )


async def run_steps(db: Db, steps: Steps[T]) -> T:
    """Drive shared ``steps`` (``transitions``) on ``db``, inside the caller's transaction."""
    result: Any = None
    try:
        while True:
            step = steps.send(result)
            if step.fetch:
                result = await db.fetch(step.sql, *step.params)
            else:  # the row count at the end of a command tag such as ``DELETE 3``
                result = int((await db.execute(step.sql, *step.params)).rsplit(" ", 1)[-1])
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


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
