"""The SQLite outbox: one relay's events in one file, its disk and its file watched.

Writes are jobs handed to the ``Writer``, which commits whatever is queued in one transaction
(group commit); reads use a second connection, which WAL lets run beside the writer. The
reads and the state changes both backends share are in ``base``; here are ingest, the claim's
candidates, and what only a file has (its lock, its disk, its reserve).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from relay.errors import OutboxError, OutboxUnavailable
from relay.events import Event
from relay.fileguard import identities, vanished
from relay.reserve import DiskReserve, short_of_space
from relay.store import polled
from relay.store.base import OutboxBase
from relay.store.contract import Added, EventRecord, FleetState, Health
from relay.store.dialect import SQLITE
from relay.store.sqlite_file import connect, connect_writer, file_bytes, lock, unopenable
from relay.store.sqlite_ingest import insert_events
from relay.store.sqlite_records import SqliteRecords
from relay.store.sqlite_schema import migrate
from relay.store.sqlite_writer import Batched, Writer
from relay.store.transitions import Step, Steps, Transitions

log = structlog.get_logger("relay.outbox")
T = TypeVar("T")

_DISK_CHECK_EVERY_S = 1.0
# One process holds the file: outcomes need no fencing.
_TRANSITIONS = Transitions(SQLITE, fenced=False)


class SqliteOutbox(OutboxBase):
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
        super().__init__(self._read, _TRANSITIONS)
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
            lock_fd = lock(path)
        except OSError as exc:
            raise unopenable(path, exc) from exc
        try:
            reserve = DiskReserve(path.with_name(path.name + ".reserve"), reserve_bytes)
            await asyncio.to_thread(reserve.make_at_start)
            reader = await connect(path)
            try:
                await migrate(reader)
                writer = await Writer.open(
                    functools.partial(connect_writer, path, lock_timeout_s),
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
                raise unopenable(path, exc) from exc
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

    async def add_polled(
        self, events: Sequence[Event], now: float, *, source: str, cursor: str
    ) -> list[Added]:
        """``add`` and the source's cursor in one transaction: a crash keeps both or neither."""
        await self._check_disk()
        if (refused := self._refusal()) is not None:
            raise refused

        def job(db: sqlite3.Connection) -> list[Added]:
            added = insert_events(db, [(events, now)])[0] if events else []
            db.execute(polled.SET_CURSOR, (source, cursor, now))
            return added

        results: list[Added] = await self._write(job)
        if any(r.created for r in results):
            self.new_events.set()
        return results

    async def requeue_in_flight(self, now: float) -> int:
        """Make every in-flight row pending again (start-up: a crash left them); how many."""

        def requeue(db: sqlite3.Connection) -> int:
            return db.execute(_REQUEUE_ALL, (now,)).rowcount

        count: int = await self._write(requeue)
        return count

    def _claim_steps(
        self, now: float, limit: int, servers: Sequence[str], lease_s: float, max_age_s: float
    ) -> Steps[list[EventRecord]]:
        """In-flight rows whose lease ran out (an attempt that died without recording its
        outcome) become pending again, then the claim rules run over the due events."""
        # One index range per server: a paused server's backlog is never walked.
        due = " UNION ALL ".join(
            "SELECT * FROM (SELECT id, token, server_id, rank, test, next_attempt_at, outcome,"
            " COALESCE(replayed_at, created_at) AS age_from"
            " FROM events WHERE status = 'pending' AND server_id = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at LIMIT ?)"
            for _ in servers
        )
        params = [value for server_id in servers for value in (server_id, now, limit)]
        # Each due event with the predecessor that decides its fate, if it has one:
        # the same server and token, a lower rank, not delivered; a dead one first.
        candidates = Step(
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
            fetch=True,
        )

        def take(ready: list[int]) -> Step:
            return Step(
                "UPDATE events SET status = 'in_flight', attempts = attempts + 1,"
                f" next_attempt_at = ? WHERE id IN ({', '.join('?' * len(ready))})"
                f" RETURNING {self.event_columns}",
                (now + lease_s, *ready),
                fetch=True,
            )

        requeue = Step(_REQUEUE, (now, now))
        return self.transitions.claim(requeue, candidates, take, now, max_age_s)

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

    def size_bytes(self) -> int:
        return file_bytes(self.path)

    async def share(self, mine: FleetState, now: float) -> FleetState:
        """One relay per file: there is nobody to share with."""
        return FleetState()

    # -- plumbing --------------------------------------------------------------------------

    async def _run(self, steps: Callable[[], Steps[T]]) -> T:
        # Made here, on the event loop (the claim builds its SQL then): only the statements
        # run on the writer's thread. The writer runs a job once, so one run of the steps.
        result: T = await self._write(functools.partial(run_steps, steps=steps()))
        return result

    def _wake(self) -> None:
        self.new_events.set()

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


def run_steps(db: sqlite3.Connection, steps: Steps[T]) -> T:
    """Drive shared ``steps`` (``transitions``) inside the writer's transaction."""
    result: Any = None
    try:
        while True:
            step = steps.send(result)
            cursor = db.execute(step.sql, step.params)
            result = cursor.fetchall() if step.fetch else cursor.rowcount
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


_REQUEUE_ALL = (
    "UPDATE events SET status = 'pending', next_attempt_at = ? WHERE status = 'in_flight'"
)
_REQUEUE = _REQUEUE_ALL + " AND next_attempt_at <= ?"
