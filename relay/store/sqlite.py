"""The SQLite outbox: durable events, delivery claims and the attempt log. All SQL lives here.

Writes are jobs handed to the ``Writer``, which commits whatever is queued in one transaction
(group commit); reads use a second connection, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from relay.errors import OutboxError, OutboxUnavailable
from relay.events import Event
from relay.fileguard import identities, vanished
from relay.reserve import DiskReserve, short_of_space
from relay.store import sqlite_console as console
from relay.store.contract import (
    STATUSES,
    WAITING_FOR_REGISTERED,
    Added,
    Attempt,
    EventFilter,
    EventRecord,
    FleetState,
    Health,
    HourCounts,
    LogPage,
    Outcome,
    Retried,
    claim_rule,
)
from relay.store.sqlite_ingest import insert_events
from relay.store.sqlite_records import SqliteRecords, prune_ledger, to_ledger
from relay.store.sqlite_schema import EVENT_COLUMNS, migrate
from relay.store.sqlite_writer import Batched, Writer

log = structlog.get_logger("relay.outbox")

_DISK_CHECK_EVERY_S = 1.0


class SqliteOutbox:
    """The outbox file: one writer connection behind a group-commit queue, one reader."""

    def __init__(
        self,
        path: Path,
        writer: Writer,
        reader: aiosqlite.Connection,
        lock_fd: int,
        *,
        min_free_bytes: int,
        max_outbox_bytes: int = 0,
        reserve: DiskReserve,
    ) -> None:
        self.path = path
        self.writer = writer
        self._write = self.writer.run
        self._reader = reader
        self._lock_fd = lock_fd
        self._min_free_bytes = min_free_bytes
        self._max_outbox_bytes = max_outbox_bytes  # 0: unlimited
        self.records = SqliteRecords(self._write, self._read)
        self._disk_checked_at = 0.0
        self._size_ok = True
        self._free_bytes = 0
        self._disk_lock = asyncio.Lock()  # one check at a time; the others read its result
        self.reserve = reserve
        self._identities = identities(lock_fd, path)
        # Why the file this relay writes is no longer the one at its path; None while it is.
        self.lost: str | None = None
        self._losing = threading.Lock()  # the writer's thread and a check thread may both see it
        writer.verify = self._refusal_after_commit
        # Set after every commit that added events, so the dispatcher sends them at once.
        self.new_events = asyncio.Event()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        min_free_bytes: int = 0,
        lock_timeout_s: float = 5.0,
        reserve_bytes: int = 8 * 1024 * 1024,
        max_outbox_bytes: int = 0,
    ) -> SqliteOutbox:
        """Open (creating, 0600) and migrate the outbox; only one relay may hold a file."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not await asyncio.to_thread(path.exists)  # removed if this start fails
            lock_fd = _lock(path)
        except OSError as exc:
            raise _unopenable(path, exc) from exc
        try:
            reserve = DiskReserve(path.with_name(path.name + ".reserve"), reserve_bytes)
            await asyncio.to_thread(reserve.make_at_start)
            reader = await _connect(path)
            try:
                await migrate(reader)
                writer = await Writer.open(
                    functools.partial(_connect_writer, path, lock_timeout_s),
                    on_full=reserve.release,
                )
            except BaseException:
                await reader.close()
                raise
        except BaseException as exc:
            if new:  # what this start made goes with it; an outbox that was there stays
                for made in ("", "-wal", "-shm", ".reserve"):
                    path.with_name(path.name + made).unlink(missing_ok=True)
            os.close(lock_fd)
            if isinstance(exc, sqlite3.Error | OSError):
                raise _unopenable(path, exc) from exc
            raise
        return cls(
            path,
            writer,
            reader,
            lock_fd,
            min_free_bytes=min_free_bytes,
            max_outbox_bytes=max_outbox_bytes,
            reserve=reserve,
        )

    @property
    def location(self) -> str:
        return str(self.path)

    async def close(self) -> None:
        """Finish queued writes, then close both connections and release the file."""
        await self.writer.close()
        await self._reader.close()
        os.close(self._lock_fd)

    # -- writes ----------------------------------------------------------------------------

    async def add(self, events: Sequence[Event], now: float) -> list[Added]:
        """Store events durably in one transaction; an existing key is reported, not stored."""
        await self._check_disk()
        if (refused := self._refusal()) is not None:
            raise refused

        results: list[Added] = await self.writer.run(Batched(insert_events, (events, now)))
        if any(r.created for r in results):
            self.new_events.set()
        return results

    async def requeue_in_flight(self, now: float) -> int:
        """Make every in-flight row pending again (start-up: a crash left them); how many."""

        def requeue(db: sqlite3.Connection) -> int:
            return _requeue(db, now, expired_only=False)

        count: int = await self._write(requeue)
        return count

    async def claim(
        self, now: float, limit: int, *, servers: Sequence[str], lease_s: float, max_age_s: float
    ) -> list[EventRecord]:
        """Lease up to ``limit`` due events of these servers, oldest due first.

        Per-referral order is decided here: a due event whose (server, token) still has an
        undelivered event of a lower rank is not claimed but deferred until that one is due
        (finishing it wakes this one sooner), and one whose predecessor is dead is
        dead-lettered too, naming it. Test events take no part in ordering. Expired events
        are dead-lettered on the way, and in-flight rows whose lease ran out (an attempt
        that died without recording its outcome) become pending again first.
        """
        if not servers:
            return []
        # One index range per server: a paused server's backlog is never walked.
        due = " UNION ALL ".join(
            "SELECT * FROM (SELECT id, token, server_id, rank, test, next_attempt_at, outcome,"
            " COALESCE(replayed_at, created_at) AS age_from"
            " FROM events WHERE status = 'pending' AND server_id = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?)"
            for _ in servers
        )
        params = [value for server_id in servers for value in (server_id, now, limit)]

        def claim(db: sqlite3.Connection) -> list[EventRecord]:
            _requeue(db, now, expired_only=True)
            # Each due event with the predecessor that decides its fate, if it has one:
            # the same server and token, a lower rank, not delivered; a dead one first.
            candidates = db.execute(
                "SELECT e.id, e.age_from, e.outcome, b.id AS blocker, b.status AS blocker_status,"
                " b.outcome AS blocker_outcome, b.next_attempt_at AS blocker_due"
                f" FROM ({due}) AS e"
                " LEFT JOIN events AS b ON b.id = ("
                "   SELECT p.id FROM events AS p WHERE p.token = e.token"
                "   AND p.server_id = e.server_id AND p.status != 'delivered'"
                "   AND p.rank < e.rank AND p.test = 0 AND e.test = 0"
                "   ORDER BY p.status = 'dead' DESC, p.rank, p.id LIMIT 1)"
                " ORDER BY e.next_attempt_at LIMIT ?",
                (*params, limit),
            ).fetchall()
            ready: list[int] = []
            for candidate in candidates:
                verdict = claim_rule(candidate, now, max_age_s)
                if verdict is None:
                    ready.append(candidate["id"])
                elif isinstance(verdict, Outcome):
                    _finish_row(db, candidate["id"], verdict, now)
                else:
                    db.execute(
                        "UPDATE events SET next_attempt_at = ? WHERE id = ?",
                        (verdict, candidate["id"]),
                    )
            if not ready:
                return []
            rows = db.execute(
                "UPDATE events SET status = 'in_flight', attempts = attempts + 1,"
                f" next_attempt_at = ? WHERE id IN ({', '.join('?' * len(ready))})"
                f" RETURNING {EVENT_COLUMNS}",
                (now + lease_s, *ready),
            ).fetchall()
            return sorted((EventRecord.from_row(r) for r in rows), key=lambda r: ready.index(r.id))

        claimed: list[EventRecord] = await self._write(claim)
        return claimed

    async def finish(self, record: EventRecord, outcome: Outcome, attempt: Attempt) -> None:
        """Record one attempt and what it decided; a finished event wakes its followers."""

        def finish(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO attempts (event_id, started_at, duration_ms, http_status, outcome,"
                " detail) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    attempt.event_id,
                    attempt.started_at,
                    attempt.duration_ms,
                    attempt.http_status,
                    attempt.outcome,
                    attempt.detail,
                ),
            )
            _finish_row(db, record.id, outcome, attempt.started_at)
            if outcome.status in ("delivered", "dead"):
                # "+status" keeps SQLite on the token index: the status index would walk
                # the whole pending backlog to find one referral's events.
                db.execute(
                    "UPDATE events SET next_attempt_at = ? WHERE token = ? AND server_id = ?"
                    " AND +status = 'pending' AND attempts = 0 AND id != ?",
                    (time.time(), record.token, record.server_id, record.id),
                )
            if (
                outcome.status in ("delivered", "dead")
                and record.event == "registered"
                and not record.test
            ):
                # The events that overtook this registered may go now (or die with it).
                db.execute(
                    "UPDATE events SET next_attempt_at = ? WHERE token = ? AND server_id = ?"
                    " AND +status = 'pending' AND outcome = ?",
                    (time.time(), record.token, record.server_id, WAITING_FOR_REGISTERED),
                )

        await self._write(finish)
        if outcome.status in ("delivered", "dead"):
            self.new_events.set()

    async def release(self, records: Iterable[EventRecord], now: float) -> None:
        """Hand leased events back as pending (shutdown cancelled their attempt)."""
        ids = [r.id for r in records]
        if not ids:
            return

        def release(db: sqlite3.Connection) -> None:
            db.execute(
                f"UPDATE events SET status = 'pending', next_attempt_at = ? WHERE id IN"
                f" ({', '.join('?' * len(ids))}) AND status = 'in_flight'",
                (now, *ids),
            )

        await self._write(release)

    async def prune(self, before: float, ledger_before: float = 0.0) -> tuple[int, int]:
        """Delete delivered events finished and attempt rows started before ``before``.

        Each pruned event leaves its compact ledger entry, kept until ``ledger_before``.
        """

        def prune(db: sqlite3.Connection) -> tuple[int, int]:
            to_ledger(db, before)
            prune_ledger(db, ledger_before)
            events = db.execute(
                "DELETE FROM events WHERE finished_at < ? AND +status = 'delivered'", (before,)
            )
            attempts = db.execute("DELETE FROM attempts WHERE started_at < ?", (before,))
            return events.rowcount, attempts.rowcount

        pruned: tuple[int, int] = await self._write(prune)
        return pruned

    async def retry(
        self, ids: Sequence[int] | EventFilter, now: float, *, limit: int = 500
    ) -> list[Retried]:
        """Re-queue dead events (and the followers that died with them) to be sent now.

        ``ids`` names events, or a filter picks up to ``limit`` of them, lowest id first. A
        pending event is made due now; delivered and in-flight ones are left alone.
        """

        def retry(db: sqlite3.Connection) -> list[Retried]:
            if isinstance(ids, EventFilter):
                where, params = ids.where()
                rows = db.execute(
                    f"SELECT id FROM events WHERE {where} ORDER BY id LIMIT ?", (*params, limit)
                ).fetchall()
                chosen = [row[0] for row in rows]
            else:
                chosen = list(ids)
            results: list[Retried] = []
            requeued_as_followers: set[int] = set()
            for event_id in chosen:
                if event_id not in requeued_as_followers:
                    results.append(_retry_one(db, event_id, now))
                    requeued_as_followers.update(results[-1].followers)
            return results

        results: list[Retried] = await self._write(retry)
        if any(r.result in ("requeued", "due_now") for r in results):
            self.new_events.set()
        return results

    async def purge(self, status: str, before: float, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` dead or delivered events finished before ``before``."""
        if status not in ("dead", "delivered"):
            raise ValueError(f"only dead or delivered events can be purged, not {status}")

        def purge(db: sqlite3.Connection) -> int:
            rows = list(
                db.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE status = ?"
                    " AND finished_at < ? ORDER BY id LIMIT ?) RETURNING id",
                    (status, before, limit),
                ).fetchall()
            )
            ids = [row[0] for row in rows]
            if ids:
                db.execute(
                    f"DELETE FROM attempts WHERE event_id IN ({', '.join('?' * len(ids))})", ids
                )
            return len(ids)

        purged: int = await self._write(purge)
        return purged

    # -- reads -----------------------------------------------------------------------------

    async def select(self, where: EventFilter, limit: int = 50) -> list[EventRecord]:
        """Events matching ``where``, newest first."""
        sql, params = where.where()
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {sql} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [EventRecord.from_row(r) for r in rows]

    async def count(self, where: EventFilter) -> int:
        sql, params = where.where()
        rows = await self._read(f"SELECT COUNT(*) FROM events WHERE {sql}", params)
        return int(rows[0][0])

    async def counts_by_server(self) -> dict[str, dict[str, int]]:
        """How many events each server has in each status."""
        rows = await self._read(
            "SELECT server_id, status, COUNT(*) FROM events GROUP BY server_id, status", ()
        )
        out: dict[str, dict[str, int]] = {}
        for server_id, status, count in rows:
            by_status = out.setdefault(server_id, dict.fromkeys(STATUSES, 0))
            by_status[status] = count
        return out

    async def dead_by_reason(self) -> list[dict[str, Any]]:
        """Dead events grouped by server and outcome, each with its latest error."""
        # SQLite takes a bare column (last_error) from the row that gave MAX(id).
        rows = await self._read(
            "SELECT server_id, outcome, COUNT(*), MAX(id), last_error FROM events"
            " WHERE status = 'dead' GROUP BY server_id, outcome ORDER BY MAX(id) DESC",
            (),
        )
        keys = ("server_id", "reason", "count", "latest_id", "latest_error")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def size_bytes(self) -> int:
        """The outbox on disk: the database file and its write-ahead log."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    async def get(self, event_id: int) -> EventRecord | None:
        rows = await self._read(f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?", (event_id,))
        return EventRecord.from_row(rows[0]) if rows else None

    async def attempts(self, event_id: int, limit: int = 50) -> list[Attempt]:
        """The delivery log of one event, newest first."""
        rows = await self._read(
            "SELECT event_id, started_at, duration_ms, http_status, outcome, detail FROM attempts"
            " WHERE event_id = ? ORDER BY id DESC LIMIT ?",
            (event_id, limit),
        )
        return [Attempt(**{name: r[name] for name in r.keys()}) for r in rows]  # noqa: SIM118

    async def next_due(self, servers: Sequence[str]) -> float | None:
        """When the earliest pending event of these servers falls due; None if none is."""
        if not servers:
            return None
        per_server = " UNION ALL ".join(
            "SELECT MIN(next_attempt_at) AS due FROM events"
            " WHERE status = 'pending' AND server_id = ?"
            for _ in servers
        )
        rows = await self._read(f"SELECT MIN(due) FROM ({per_server})", tuple(servers))
        value = rows[0][0] if rows else None
        return float(value) if value is not None else None

    async def registered_delivered_at(self, server_id: str, token: str) -> float | None:
        """When the attempt that delivered this token's registered started; None if none did."""
        rows = await self._read(
            "SELECT MIN(finished_at) FROM events WHERE token = ? AND server_id = ?"
            " AND event = 'registered' AND test = 0 AND +status = 'delivered'",
            (token, server_id),
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def oldest_pending_created(self) -> float | None:
        """When the oldest undelivered event was ingested (ids grow with ingest time)."""
        rows = await self._read(
            "SELECT created_at FROM events WHERE +status IN ('pending', 'in_flight')"
            " ORDER BY id LIMIT 1",
            (),
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    # -- the console's reads (relay/store/sqlite_console.py) --------------------------------

    async def first_ids_at(self, times: Sequence[float]) -> list[int]:
        return await console.first_ids_at(self._read, times)

    async def hourly(self, since: float, hours: int) -> list[HourCounts]:
        return await console.hourly(self._read, since, hours)

    async def log_page(
        self,
        where: EventFilter,
        *,
        older_than: int | None,
        scan: int,
        limit: int,
    ) -> LogPage:
        return await console.log_page(
            self._read,
            where,
            older_than=older_than,
            scan=scan,
            limit=limit,
        )

    async def search(self, text: str, limit: int) -> list[EventRecord]:
        return await console.search(self._read, text, limit)

    async def counts_up_to(self, cap: int) -> dict[str, dict[str, int]]:
        return await console.counts_up_to(self._read, cap)

    async def oldest_pending_by_server(self, servers: Sequence[str]) -> dict[str, float]:
        return await console.oldest_pending_by_server(self._read, servers)

    async def share(self, mine: FleetState, now: float) -> FleetState:
        """One relay per file: there is nobody to share with."""
        return FleetState()

    # -- plumbing --------------------------------------------------------------------------

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise OutboxError(
                f"reading the outbox failed ({exc}); check that the outbox "
                "file and its disk are healthy."
            ) from exc

    async def health(self) -> Health:
        """Whether events can be stored now: the write lock is free, the disk has room (its
        reserve kept) and the outbox is under its cap."""
        problems: list[str] = []
        try:
            await self._write(_nothing)
        except OutboxError as exc:
            problems.append(f"outbox not writable: {exc}")
        free = await asyncio.to_thread(self.reserve.refresh)
        if (short := short_of_space(free, self._min_free_bytes)) is not None:
            problems.append(short)
        cap = self._max_outbox_bytes
        if cap and self.size_bytes() >= cap:
            problems.append(f"outbox full: {self.size_bytes()} bytes, max_outbox_bytes is {cap}")
        if self.reserve.full:
            problems.append("disk full: the reserve is released; ingest and new deliveries wait")
        return Health(tuple(problems), free)

    async def check_file(self) -> str | None:
        """Whether the outbox was deleted or replaced under the relay: why, or None.

        Once lost it stays lost: the relay's descriptors still reach the old, unlinked file,
        so nothing stored from then on would survive a restart.
        """
        if self.lost is None:
            self._lose(await asyncio.to_thread(vanished, self._lock_fd, self._identities))
        return self.lost

    def _refusal_after_commit(self) -> OutboxUnavailable | None:
        """On the writer's thread, after ingest's commit and before its 202s: whether the
        file it went to is still the outbox. Three stat calls: the latest, cheapest check."""
        if self.lost is None:
            self._lose(vanished(self._lock_fd, self._identities))
        return self._refusal()

    def _lose(self, problem: str | None) -> None:
        with self._losing:
            if problem is None or self.lost is not None:
                return
            self.lost = problem
        log.critical(
            "outbox.file_lost",
            path=str(self.path),
            problem=problem,
            action="ingest refused; restart the relay, and restore the outbox from a "
            "backup if you have one: undelivered events in it are gone",
        )

    def _refusal(self) -> OutboxUnavailable | None:
        if self.lost is None:
            return None
        return OutboxUnavailable(
            f"the outbox file is gone ({self.lost}): events stored now would be lost at "
            "the next restart, so none are taken; the operator must restart the relay. "
            "Retry later.",
            retry_after_s=30,
        )

    async def disk_free_bytes(self) -> int | None:
        return (await asyncio.to_thread(shutil.disk_usage, self.path.parent)).free

    async def can_deliver(self) -> bool:
        """Whether an attempt started now could record its outcome: not while the disk is
        full, when the reserve is kept for the attempts already in flight."""
        await self._refresh_disk()
        return not self.reserve.full

    async def _refresh_disk(self) -> None:
        if time.monotonic() - self._disk_checked_at < _DISK_CHECK_EVERY_S:
            return  # checked within the second: the common case costs no lock
        async with self._disk_lock:
            if time.monotonic() - self._disk_checked_at >= _DISK_CHECK_EVERY_S:
                self._free_bytes = await asyncio.to_thread(self.reserve.refresh)
                self._size_ok = (
                    not self._max_outbox_bytes or self.size_bytes() < self._max_outbox_bytes
                )
                self._disk_checked_at = time.monotonic()

    async def _check_disk(self) -> None:
        await self._refresh_disk()
        if self.reserve.full:
            raise OutboxUnavailable(
                "the disk holding the outbox is full; the event was not stored, and the relay "
                "keeps its reserve for recording deliveries until space is freed. Retry later.",
                retry_after_s=30,
            )
        if not self._size_ok:
            raise OutboxUnavailable(
                f"the outbox has reached max_outbox_bytes ({self._max_outbox_bytes} bytes); "
                "the relay takes no new events until deliveries or a purge shrink it. Retry "
                "later.",
                retry_after_s=30,
            )
        if self._free_bytes < self._min_free_bytes:
            raise OutboxUnavailable(
                f"the disk holding the outbox has less than {self._min_free_bytes} bytes free; "
                "the relay takes no new events until space is freed. Retry later.",
                retry_after_s=30,
            )


def _nothing(db: sqlite3.Connection) -> None:
    """A write transaction with nothing in it: proves the write lock can be taken."""


def _requeue(db: sqlite3.Connection, now: float, *, expired_only: bool) -> int:
    lease_clause = " AND next_attempt_at <= ?" if expired_only else ""
    cursor = db.execute(
        "UPDATE events SET status = 'pending', next_attempt_at = ?"
        f" WHERE status = 'in_flight'{lease_clause}",
        (now, now) if expired_only else (now,),
    )
    return cursor.rowcount


def _retry_one(db: sqlite3.Connection, event_id: int, now: float) -> Retried:
    rows = list(
        db.execute(
            "SELECT status, server_id, token, rank, test FROM events WHERE id = ?", (event_id,)
        ).fetchall()
    )
    if not rows:
        return Retried(event_id, "not_found")
    status, server_id, token, rank, test = rows[0]
    if status == "pending":
        db.execute("UPDATE events SET next_attempt_at = ? WHERE id = ?", (now, event_id))
        return Retried(event_id, "due_now")
    if status != "dead":
        return Retried(event_id, status)
    requeue = (
        "UPDATE events SET status = 'pending', outcome = NULL, next_attempt_at = ?,"
        " finished_at = NULL, replayed_at = ? WHERE "
    )
    db.execute(requeue + "id = ?", (now, now, event_id))
    followers: list[Any] = []
    if not test:
        followers = list(
            db.execute(
                requeue + "token = ? AND server_id = ? AND +status = 'dead'"
                " AND outcome = 'predecessor_dead' AND rank > ? AND test = 0 RETURNING id",
                (now, now, token, server_id, rank),
            ).fetchall()
        )
    return Retried(event_id, "requeued", tuple(sorted(row[0] for row in followers)))


def _finish_row(db: sqlite3.Connection, event_id: int, outcome: Outcome, now: float) -> None:
    finished = now if outcome.status in ("delivered", "dead") else None
    db.execute(
        "UPDATE events SET status = ?, outcome = ?, next_attempt_at = ?, last_error = ?,"
        " last_http_status = COALESCE(?, last_http_status), response = COALESCE(?, response),"
        " referral_id = COALESCE(?, referral_id), state = COALESCE(?, state), finished_at = ?"
        " WHERE id = ?",
        (
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
        ),
    )


# WAL lets the reader run beside the writer; FULL makes each commit survive power loss.
_PRAGMAS = ("journal_mode = WAL", "synchronous = FULL", "busy_timeout = 5000")


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row  # columns are read by name, wherever they sit in a SELECT
    try:
        for pragma in _PRAGMAS:
            await db.execute(f"PRAGMA {pragma}")
    except BaseException:
        # Its thread is not a daemon: left open, it would keep the process from exiting.
        await db.close()
        raise
    return db


def _connect_writer(path: Path, lock_timeout_s: float) -> sqlite3.Connection:
    """The writer's connection, made off the event loop and then used on the writer's thread
    only.

    Every write queues behind the one before, so the writer's wait for a foreign lock is
    what bounds an ingest's wait: ``lock_timeout_s`` replaces SQLite's 5 s here.
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    try:
        for pragma in (*_PRAGMAS, f"busy_timeout = {round(lock_timeout_s * 1000)}"):
            db.execute(f"PRAGMA {pragma}")
    except BaseException:
        db.close()
        raise
    return db


def _unopenable(path: Path, exc: sqlite3.Error | OSError) -> OutboxError:
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "full" in cause:
        free = shutil.disk_usage(path.parent).free
        return OutboxError(
            f"cannot open the outbox {path}: {cause}; its disk has {free} bytes free. Free "
            "space on that disk, then start the relay again."
        )
    return OutboxError(
        f"cannot open the outbox {path}: {cause}; point MMOLOVE_RELAY_DB (or [outbox] path) "
        "at a file in a writable directory the relay's user owns."
    )


def _lock(path: Path) -> int:
    """Create the file (0600) and lock the file itself, so no second relay can open it.

    Keyed by the file, not its name: a second relay reaching it through a symlink or a
    hard link would otherwise start, and its start-up recovery would turn the first one's
    in-flight events back to pending, to be sent twice. flock is separate from SQLite's
    POSIX locks; the descriptor stays open until both connections are closed, because
    closing any descriptor of the file drops the process's POSIX locks on it.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise OutboxError(
            f"another relay is already using the outbox {path} (the same file, maybe through "
            "a symlink or a hard link); stop it or point MMOLOVE_RELAY_DB at another file."
        ) from exc
    return fd
