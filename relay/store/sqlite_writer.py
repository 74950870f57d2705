"""The outbox's single writer: one connection on its own thread, a queue of jobs, group commit.

Whatever is queued when the writer comes round is run in one transaction and committed
once, so a burst of concurrent ingests costs one fsync; each caller is answered only after
the commit that holds its write. SQLite serialises writers anyway, so one queue costs
nothing and keeps every transaction whole. Jobs are plain functions of the connection: a
whole group (BEGIN, every job, COMMIT) runs in one hop to the writer's thread, so the event
loop pays one wake-up per transaction, not one per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from relay.errors import OutboxError, OutboxUnavailable

log = structlog.get_logger("relay.outbox")
Job = Callable[[sqlite3.Connection], Any]
GROUP_MAX = 512  # queued jobs folded into one transaction at most


class Writer:
    """Runs write jobs on ``db`` in grouped transactions; ``run`` returns a job's result.

    ``db`` is used only on ``thread`` (one worker), which the writer owns and shuts down.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        thread: ThreadPoolExecutor,
        on_full: Job | None = None,
    ) -> None:
        self.db = db
        self._thread = thread
        self._on_full = on_full  # run on the writer's thread after a write met a full disk
        self.commits = 0  # transactions committed: with group commit, fewer than jobs
        self.jobs = 0
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="outbox-writer")

    async def run(self, job: Job) -> Any:
        """Queue a job; return its result once its transaction is committed."""
        if self._task.done():
            raise OutboxUnavailable(
                "the outbox is closed; the relay is stopping. Retry in a few seconds.",
                retry_after_s=2,
            )
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    @classmethod
    async def open(
        cls, connect: Callable[[], sqlite3.Connection], *, on_full: Job | None = None
    ) -> Writer:
        """Make the connection on the writer's own thread with ``connect``."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")
        try:
            db = await asyncio.get_running_loop().run_in_executor(thread, connect)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(db, thread, on_full)

    async def close(self) -> None:
        """Commit what is queued, stop, and close the connection."""
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.get_running_loop().run_in_executor(self._thread, self.db.close)
        self._thread.shutdown()

    async def _loop(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < GROUP_MAX and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                await self._commit(group)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _commit(self, group: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        """One transaction for the group: all its jobs commit, or none and all hear why."""
        jobs = [job for job, _ in group]
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._transaction, jobs
            )
        except sqlite3.Error as exc:
            log.error("outbox.write_failed", error=str(exc), writes=len(group))
            if self._on_full is not None and "full" in str(exc):
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        self._thread, self._on_full, self.db
                    )
                except Exception:  # the writer must outlive a failed rescue
                    log.exception("outbox.disk_full_handler_failed")
            _fail(group, _unavailable(exc))
            return
        except Exception as exc:  # a bug in a job: fail its callers, keep the writer alive
            log.exception("outbox.write_crashed", writes=len(group))
            _fail(
                group,
                OutboxError(
                    f"the outbox write failed unexpectedly ({exc!r}) and was rolled back; this "
                    "is a relay bug: report the log line."
                ),
            )
            return
        self.commits += 1
        self.jobs += len(group)
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _transaction(self, jobs: list[Job]) -> list[Any]:
        """On the writer's thread: BEGIN, every job in order, COMMIT; ROLLBACK if any fails."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            results = [job(self.db) for job in jobs]
            self.db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full) may have ended the transaction already.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return results


def _fail(group: list[tuple[Job, asyncio.Future[Any]]], error: Exception) -> None:
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
