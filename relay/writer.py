"""The outbox's single writer: one connection, a queue of jobs, and group commit.

Whatever is queued when the writer comes round is run in one transaction and committed
once, so a burst of concurrent ingests costs one fsync; each caller is answered only after
the commit that holds its write. SQLite serialises writers anyway, so one queue costs
nothing and keeps every transaction whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
import structlog

from relay.errors import OutboxError, OutboxUnavailable

log = structlog.get_logger("relay.outbox")
Job = Callable[[aiosqlite.Connection], Awaitable[Any]]
GROUP_MAX = 512  # queued jobs folded into one transaction at most


class Writer:
    """Runs write jobs on ``db`` in grouped transactions; ``run`` returns a job's result."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
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

    async def close(self) -> None:
        """Commit what is queued, stop, and close the connection."""
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.db.close()

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
        results: list[Any] = []
        try:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for job, _ in group:
                    results.append(await job(self.db))
                await self.db.commit()
            except BaseException:
                await self.db.rollback()
                raise
        except sqlite3.Error as exc:
            log.error("outbox.write_failed", error=str(exc), writes=len(group))
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
