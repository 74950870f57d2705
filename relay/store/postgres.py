"""The PostgreSQL outbox: one database shared by a fleet of relays.

Claims take rows with ``FOR UPDATE SKIP LOCKED``, so replicas never wait on each other's
claims nor take the same row. Every claim stamps its rows with the claiming replica and a
fencing token from the ``leases`` sequence, and an outcome is written only while that token
still holds: a replica back after its lease ran out cannot overwrite the new owner's result.
A replica that dies keeps nothing: its rows fall due again when their lease runs out.

Each write is one transaction on a pooled connection; the server does its own group commit.
After a commit that adds or frees events a NOTIFY, sent outside the transaction, wakes every
replica, not only the one that took the request. The reads and state changes it shares with
SQLite are in ``base``; its own SQL is in ``postgres_sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog

from relay.errors import OutboxDown, OutboxError, OutboxUnavailable
from relay.events import Event
from relay.store import polled
from relay.store import postgres_sql as sql
from relay.store.base import OutboxBase
from relay.store.contract import Added, EventRecord, FleetState, Health
from relay.store.dialect import POSTGRES
from relay.store.outage import Outage
from relay.store.postgres_records import PostgresRecords
from relay.store.postgres_schema import migrate
from relay.store.transitions import Step, Steps

log = structlog.get_logger("relay.outbox")
T = TypeVar("T")

CHANNEL = "mmolove_relay_events"
_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 30.0
_LISTEN_PING_S = 10.0
# A replica frozen or cut off in the middle of a transaction would hold its row locks, and
# SKIP LOCKED would pass those rows by until TCP gave up (hours). The server ends a session
# idle in a transaction after _IDLE_IN_TX_MS; one frozen between the messages of a statement
# shows as active instead, so every replica's heartbeat also ends relay transactions older
# than STALE_TX_S. The relay's own transactions last well under a second.
APPLICATION = "mmolove-relay"
_IDLE_IN_TX_MS = "10000"
STALE_TX_S = 30.0
# What a database that is down, restarting or unreachable raises: ingest answers 503.
_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection cut mid-operation can leave this behind
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)
# A replica silent this long is gone (dead, or cut off): its decisions no longer hold.
FLEET_STALE_S = 10.0
_TRIES = 3  # a deadlock between two replicas' transactions is retried, then reported


class PostgresOutbox(OutboxBase):
    """A pool of connections to the shared database, and a listener for the fleet's wake-ups."""

    def __init__(self, pool: asyncpg.Pool, connect: Callable[[], Awaitable[Any]], where: str):
        # In-flight rows count for ``next_due``: a replica that died holding one leaves it to
        # fall due when its lease runs out.
        super().__init__(self._read, sql.TRANSITIONS, due=("pending", "in_flight"))
        self._pool = pool
        self._connect = connect
        self.location = where
        # Who holds a lease: unique per process, so a restarted relay never mistakes another
        # live replica's claims (or its own past ones) for rows it may hand back at once.
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self.closing = False
        self.new_events = asyncio.Event()
        self.lost: str | None = None  # nothing to lose: the database is not a file we hold
        self._outage = Outage(where)
        self._records = PostgresRecords(self._tx, self._read)
        self._size = 0
        self._announcer: asyncio.Task[None] | None = None
        self._announce_again = False
        self._listener = asyncio.create_task(self._listen(), name="outbox-listener")

    @classmethod
    async def open(cls, url: str, *, where: str, password: str | None = None) -> PostgresOutbox:
        """Connect, and migrate the schema (replicas starting together take turns).

        ``where`` is the URL as operators may see it (no password); ``password``, when given,
        overrides libpq's usual sources (PGPASSWORD, ~/.pgpass).
        """
        options: dict[str, Any] = {
            "password": password,
            "timeout": _CONNECT_TIMEOUT_S,
            "server_settings": {
                "application_name": APPLICATION,
                "idle_in_transaction_session_timeout": _IDLE_IN_TX_MS,
            },
        }
        # No floor of idle connections: asyncpg would log a traceback for every failed
        # attempt to restore it while the database is away, which ``Outage`` reports once.
        pool = asyncpg.create_pool(
            url, min_size=0, max_size=10, command_timeout=_COMMAND_TIMEOUT_S, **options
        )
        try:
            await pool
            async with pool.acquire() as db:
                await migrate(db)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, (*_DOWN, asyncpg.PostgresError)):
                raise OutboxError(
                    f"cannot connect to the outbox database {where}: {exc}; check that "
                    "PostgreSQL is up, and the URL, user and password "
                    "(MMOLOVE_RELAY_DB_PASSWORD_FILE)."
                ) from exc
            raise

        async def connect() -> Any:
            return await asyncpg.connect(url, **options)

        return cls(pool, connect, where)

    async def close(self) -> None:
        self.closing = True
        for task in (self._listener, self._announcer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._pool.close()

    @property
    def records(self) -> PostgresRecords:
        return self._records

    async def health(self) -> Health:
        """Whether the database takes a write now; its disk is its server's to report."""
        try:
            await self._tx(sql.touch)
        except OutboxError as exc:
            return Health((f"outbox not writable: {exc}",), None)
        return Health((), None)

    async def check_file(self) -> str | None:
        return None  # no file of ours to lose: the database server keeps the data

    async def disk_free_bytes(self) -> int | None:
        return None  # the database server's disk is its operator's to watch

    async def can_deliver(self) -> bool:
        return True  # no local reserve: a write that fails is the database's error to report

    def size_bytes(self) -> int:
        return self._size  # measured by counts_by_server, which every summary calls first

    # -- writes ----------------------------------------------------------------------------

    async def add(self, events: Sequence[Event], now: float) -> list[Added]:
        """Store events durably in one transaction; an existing key is reported, not stored."""
        if self.closing:
            raise OutboxUnavailable(
                "the relay is shutting down; send again in a few seconds "
                "(another instance may be starting)."
            )
        results: list[Added] = await self._tx(
            lambda db: sql.insert(db, events, now), single=len(events) == 1
        )
        if any(r.created for r in results):
            self._announce()
        return results

    async def add_polled(
        self, events: Sequence[Event], now: float, *, source: str, cursor: str
    ) -> list[Added]:
        """``add`` and the source's cursor in one transaction: a crash keeps both or neither."""
        if self.closing:
            raise OutboxUnavailable("the relay is shutting down; the source polls again later.")

        async def job(db: sql.Db) -> list[Added]:
            added = await sql.insert(db, events, now)
            await db.execute(POSTGRES.sql(polled.SET_CURSOR), source, cursor, now)
            return added

        results: list[Added] = await self._tx(job)
        if any(r.created for r in results):
            self._announce()
        return results

    async def claim_source(self, source: str, lease_s: float, now: float) -> bool:
        """The fleet's lease on a source: one replica polls it at a time."""
        owner = await self._tx(
            lambda db: db.fetchval(
                POSTGRES.sql(polled.CLAIM), source, self.owner, now + lease_s, now
            ),
            single=True,
        )
        return owner is not None

    async def requeue_in_flight(self, now: float) -> int:
        """Nothing to hand back: a new process owns no lease, and what an earlier one held
        may be in another replica's hands now; unfinished rows return when their lease ends."""
        return 0

    def _claim_steps(
        self, now: float, limit: int, servers: Sequence[str], lease_s: float, max_age_s: float
    ) -> Steps[list[EventRecord]]:
        """Rows another replica is claiming at this moment are skipped, not waited for."""
        return self.transitions.claim(
            Step(sql.REQUEUE_EXPIRED, (now,)),
            Step(sql.CANDIDATES, (list(servers), now, limit), fetch=True),
            lambda ready: Step(sql.TAKE, (now + lease_s, self.owner, ready), fetch=True),
            now,
            max_age_s,
        )

    async def release(self, records: Iterable[EventRecord], now: float) -> None:
        """Hand leased events back as pending (shutdown cancelled their attempt)."""
        held = [(r.id, r.lease) for r in records]
        if held:
            await self._tx(lambda db: sql.release(db, held, now))

    async def counts_by_server(self) -> dict[str, dict[str, int]]:
        """``OutboxReads.counts_by_server``, measuring ``size_bytes`` on the way."""
        counts = await super().counts_by_server()
        size = await self._read(
            "SELECT pg_total_relation_size('events') + pg_total_relation_size('attempts')", ()
        )
        self._size = int(size[0][0])
        return counts

    async def share(self, mine: FleetState, now: float) -> FleetState:
        """Publish this replica's decisions, heartbeat included; merge the live others'."""
        theirs: list[Any] = await self._tx(
            lambda db: sql.share(db, self.owner, mine, now, stale_s=FLEET_STALE_S)
        )
        ended = await self._read(sql.END_STALE_TRANSACTIONS, (APPLICATION, STALE_TX_S))
        if ended:
            log.warning("outbox.stale_transactions_ended", sessions=len(ended))
        opens = [r[0] for r in theirs if r[0] is not None]
        paused = {server: why for r in theirs for server, why in json.loads(r[1])}
        return FleetState(
            circuit_open_until=max(opens) if opens else None,
            paused=tuple(sorted(paused.items())),
            replicas=len(theirs) + 1,
        )

    # -- plumbing --------------------------------------------------------------------------

    async def _tx(self, job: Callable[[sql.Db], Awaitable[T]], *, single: bool = False) -> T:
        """Run ``job`` in one transaction; it has committed when this returns.

        ``single``: the job's only write is one statement, which commits by itself; that
        saves the BEGIN and COMMIT round trips.
        """
        for attempt in range(1, _TRIES + 1):
            try:
                async with self._pool.acquire() as db:
                    if single:
                        done = await job(db)
                    else:
                        async with db.transaction():
                            done = await job(db)
                self._outage.up()
                return done
            except asyncpg.exceptions.TransactionRollbackError as exc:
                if attempt == _TRIES:
                    raise _unavailable(exc) from exc
            except _DOWN as exc:
                self._outage.down(exc)
                raise _unavailable(exc, OutboxDown) from exc
            except asyncpg.PostgresError as exc:
                raise _unavailable(exc) from exc
        raise AssertionError("unreachable: the last try returns or raises")

    async def _run(self, steps: Callable[[], Steps[T]]) -> T:
        # A fresh run of the steps on each try: a deadlock's retry starts them over.
        return await self._tx(lambda db: sql.run_steps(db, steps()))

    def _wake(self) -> None:
        self._announce()

    async def _read(self, query: str, params: Sequence[Any]) -> list[Any]:
        try:
            async with self._pool.acquire() as db:
                rows = list(await db.fetch(query, *params))
        except (*_DOWN, asyncpg.PostgresError) as exc:
            message = (
                f"reading the outbox database failed ({exc}); check that PostgreSQL is up "
                "and reachable."
            )
            if isinstance(exc, _DOWN):
                self._outage.down(exc)
                raise OutboxDown(message) from exc
            raise OutboxError(message) from exc
        self._outage.up()
        return rows

    def _announce(self) -> None:
        """Wake this replica now and the others soon: one NOTIFY at a time, after the commit.

        A NOTIFY inside the writing transaction would serialise every commit on the
        server's notification lock, and with it every fsync: ingest fell to ~200/s.
        """
        self.new_events.set()
        self._announce_again = True
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._notify(), name="outbox-notify")

    async def _notify(self) -> None:
        while self._announce_again:
            self._announce_again = False
            try:
                async with self._pool.acquire() as db:
                    await db.execute("SELECT pg_notify($1, '')", CHANNEL)
            except _DOWN as exc:
                self._outage.down(exc)  # the others still look every few seconds
                return
            except asyncpg.PostgresError as exc:
                # The others still look every few seconds (next_due, the idle wait).
                log.warning("outbox.notify_failed", error=str(exc))
                return

    async def _listen(self) -> None:
        """Hold a LISTEN connection for as long as the relay runs, reconnecting when it drops."""
        while True:
            try:
                await self._listen_once()
            except _DOWN as exc:
                self._outage.down(exc)  # reconnects below, every second, quietly
            except asyncpg.PostgresError as exc:
                log.warning("outbox.listener_lost", error=str(exc), retry_in_s=1)
            await asyncio.sleep(1)

    async def _listen_once(self) -> None:
        lost = asyncio.Event()
        db = await self._connect()
        self._outage.up()
        try:
            db.add_termination_listener(lambda *_: lost.set())
            await db.add_listener(CHANNEL, lambda *_: self.new_events.set())
            self.new_events.set()  # whatever was added while nobody listened
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _LISTEN_PING_S)
                if not lost.is_set():
                    await db.execute("SELECT 1")  # notice a silently dead link
        finally:
            with contextlib.suppress(*_DOWN, asyncpg.PostgresError):
                await db.close(timeout=1)


def _unavailable(
    exc: BaseException, kind: type[OutboxUnavailable] = OutboxUnavailable
) -> OutboxUnavailable:
    """A write that did not commit: ingest answers 503 and the client sends again."""
    return kind(
        f"the outbox database could not store the change ({type(exc).__name__}: {exc}); "
        "nothing was stored. Retry in a few seconds.",
        retry_after_s=5,
    )
