""" "Retry all of this reason": a background walk over the dead events of one reason, in
short chunks, with progress the dead-letters page polls.

The jobs belong to the console app: cancelled and awaited when it shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import structlog
from aiohttp import web

from relay.errors import OutboxError
from relay.store.contract import EventFilter, Outbox

log = structlog.get_logger("relay.console")
CHUNK = 500  # events per transaction: ingest and delivery commit between chunks


@dataclass
class RetryJob:
    """Progress of one reason's retry; ``done`` when the walk has ended."""

    server_id: str
    reason: str
    total: int
    requeued: int = 0  # events of this reason
    followers: int = 0  # events held back behind them, re-queued with them
    done: bool = False
    error: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.server_id, self.reason)


class RetryJobs:
    """The running and finished jobs, one per (server, reason) at a time."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.jobs: dict[tuple[str, str], RetryJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, server_id: str, reason: str) -> RetryJob:
        running = self.jobs.get((server_id, reason))
        if running is not None and not running.done:
            return running
        where = EventFilter(status="dead", server_id=server_id, outcome=reason)
        job = RetryJob(server_id, reason, total=await self._outbox.count(where))
        self.jobs[job.key] = job
        task = asyncio.create_task(self._walk(job, where), name=f"console-retry-{reason}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _walk(self, job: RetryJob, where: EventFilter) -> None:
        last_id = 0
        try:
            while True:
                chunk = EventFilter(
                    status="dead",
                    server_id=where.server_id,
                    outcome=where.outcome,
                    after_id=last_id,
                )
                results = await self._outbox.retry(chunk, time.time(), limit=CHUNK)
                if not results:
                    break
                job.requeued += sum(r.result == "requeued" for r in results)
                job.followers += sum(len(r.followers) for r in results)
                last_id = max(r.id for r in results)
        except OutboxError as exc:
            job.error = str(exc)
            log.error("console.retry_failed", reason=job.reason, error=str(exc))
        finally:
            job.done = True
        log.info(
            "console.retried",
            server_id=job.server_id,
            reason=job.reason,
            requeued=job.requeued,
            followers=job.followers,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


JOBS = web.AppKey("console_jobs", RetryJobs)
