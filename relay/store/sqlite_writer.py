"""The outbox's single writer: one connection on its own thread, a queue of jobs, group commit.

Whatever is queued when the writer comes round is run in one transaction and committed
once, so a burst of concurrent ingests costs one fsync; each caller is answered only after
the commit that holds its write. SQLite serialises writers anyway, so one queue costs
nothing and keeps every transaction whole.

The writer's thread takes jobs straight from a thread-safe queue: as soon as one commit is
done it starts the next with whatever arrived meanwhile, without waiting for the event
loop, and hands each group's results back in one loop callback. Jobs are plain functions of
the connection; ``Batched`` ones of the same kind run as one call (ingest's one INSERT).

A ``Batched`` write is what a client is acknowledged for, so after its commit, and before
anyone is answered, ``verify`` may refuse the acknowledgement: the outbox file deleted
meanwhile holds the commit where no restart will find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from relay.errors import OutboxError, OutboxUnavailable

log = structlog.get_logger("relay.outbox")
Job = Callable[[sqlite3.Connection], Any]


BatchRun = Callable[[sqlite3.Connection, list[Any]], list[Any]]


@dataclass(frozen=True, slots=True)
class Batched:
    """A write of which every queued instance runs in one call: ``run(db, items)`` gets the
    ``item`` of each, in queue order, and answers each in the same order."""

    run: BatchRun
    item: Any


Queued = tuple[Job | Batched, asyncio.Future[Any]]
GROUP_MAX = 512  # queued jobs folded into one transaction at most


# After a commit: the error the group's ``Batched`` callers get instead of their answer.
Verify = Callable[[], Exception | None]


@dataclass
class _Outcome:
    """What one group's transaction came to, carried from the writer's thread to the loop."""

    results: list[Any] | None = None
    error: BaseException | None = None
    full_handler_error: BaseException | None = None
    refused: Exception | None = None  # committed, but the Batched ones are not acknowledged


class Writer:
    """Runs write jobs on ``db`` in grouped transactions; ``run`` returns a job's result.

    ``db`` is used only on the writer's own thread, which ``close`` stops.
    """

    def __init__(
        self, db: sqlite3.Connection, on_full: Job | None = None, verify: Verify | None = None
    ) -> None:
        self.db = db
        self._on_full = on_full  # run on the writer's thread after a write met a full disk
        self.verify = verify  # run on the writer's thread after a commit of Batched writes
        self.commits = 0  # transactions committed: with group commit, fewer than jobs
        self.jobs = 0
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[Queued | None] = queue.SimpleQueue()  # None: stop
        self._closing = False
        self._stopped: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._work, name="outbox-writer", daemon=True)
        self._thread.start()

    async def run(self, job: Job | Batched) -> Any:
        """Queue a job; return its result once its transaction is committed."""
        if self._closing:
            raise OutboxUnavailable(
                "the outbox is closed; the relay is stopping. Retry in a few seconds.",
                retry_after_s=2,
            )
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((job, future))
        return await future

    @classmethod
    async def open(
        cls, connect: Callable[[], sqlite3.Connection], *, on_full: Job | None = None
    ) -> Writer:
        """Make the connection with ``connect``, off the event loop."""
        # The connection moves to the writer's thread, which is the only one to use it.
        db = await asyncio.to_thread(connect)
        return cls(db, on_full)

    async def close(self) -> None:
        """Commit what is queued, stop, and close the connection."""
        if not self._closing:
            self._closing = True
            self._queue.put(None)
        await asyncio.shield(self._stopped)

    # -- on the writer's thread ------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (group := self._next_group()) is not None:
                outcome = self._transaction([job for job, _ in group])
                self._loop.call_soon_threadsafe(self._settle, group, outcome)
        finally:
            self.db.close()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                self._loop.call_soon_threadsafe(_resolve, self._stopped, None)

    def _next_group(self) -> list[Queued] | None:
        """Wait for a job, then take whatever else is queued; None once told to stop."""
        first = self._queue.get()
        if first is None:
            return None
        group = [first]
        while len(group) < GROUP_MAX:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # stop after this group: put the signal back for the next turn
                self._queue.put(None)
                break
            group.append(item)
        return group

    def _transaction(self, jobs: list[Job | Batched]) -> _Outcome:
        """BEGIN, every job in order (batched ones together, last), COMMIT; ROLLBACK if any
        fails. Reordering is safe: jobs in one group were all queued concurrently."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                results = self._run_jobs(jobs)
                self.db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (disk full) may have ended the transaction already.
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            outcome = _Outcome(error=exc)
            if self._on_full is not None and "full" in str(exc):
                try:
                    self._on_full(self.db)
                except Exception as rescue:  # the writer must outlive a failed rescue
                    outcome.full_handler_error = rescue
            return outcome
        except Exception as exc:  # a bug in a job: fail its callers, keep the writer alive
            return _Outcome(error=exc)
        refused = None
        if self.verify is not None and any(isinstance(job, Batched) for job in jobs):
            refused = self.verify()
        return _Outcome(results=results, refused=refused)

    def _run_jobs(self, jobs: list[Job | Batched]) -> list[Any]:
        results: list[Any] = [None] * len(jobs)
        batches: dict[BatchRun, tuple[list[int], list[Any]]] = {}  # places and items
        for place, job in enumerate(jobs):
            if isinstance(job, Batched):
                places, items = batches.setdefault(job.run, ([], []))
                places.append(place)
                items.append(job.item)
            else:
                results[place] = job(self.db)
        for run, (places, items) in batches.items():
            for place, answer in zip(places, run(self.db, items), strict=True):
                results[place] = answer
        return results

    # -- back on the event loop ------------------------------------------------------------

    def _settle(self, group: list[Queued], outcome: _Outcome) -> None:
        """Answer every caller of the group: its result, or why nothing was stored."""
        if outcome.results is not None:
            self.commits += 1
            self.jobs += len(group)
            for (job, future), result in zip(group, outcome.results, strict=True):
                if outcome.refused is not None and isinstance(job, Batched):
                    _fail([(job, future)], outcome.refused)
                else:
                    _resolve(future, result)
            return
        error = outcome.error
        if isinstance(error, sqlite3.Error):
            log.error("outbox.write_failed", error=str(error), writes=len(group))
            if outcome.full_handler_error is not None:
                log.error("outbox.disk_full_handler_failed", error=repr(outcome.full_handler_error))
            _fail(group, _unavailable(error))
            return
        log.error("outbox.write_crashed", writes=len(group), exc_info=error)
        _fail(
            group,
            OutboxError(
                f"the outbox write failed unexpectedly ({error!r}) and was rolled back; this "
                "is a relay bug: report the log line."
            ),
        )


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # its caller may have given up (cancelled) meanwhile
        future.set_result(result)


def _fail(group: list[Queued], error: Exception) -> None:
    for _, future in group:
        if not future.done():
            future.set_exception(error)


def _unavailable(exc: sqlite3.Error) -> OutboxUnavailable:
    """Translate a failed write into what ingest answers: 503 with a fitting Retry-After."""
    text = str(exc)
    if "full" in text:
        return OutboxUnavailable(
            "the disk holding the outbox is full; the event was not stored. Retry later.",
            retry_after_s=30,
        )
    if "locked" in text or "busy" in text:
        return OutboxUnavailable(
            "the outbox is locked by another process; the event was not stored. Retry in a "
            "few seconds.",
            retry_after_s=2,
        )
    return OutboxUnavailable(
        f"the outbox could not store the event ({text}); it was not stored. Retry later.",
        retry_after_s=5,
    )
