"""What every outbox does alike, whichever backend keeps it: the reads, and the bookkeeping
around each state change. A backend supplies ``_run`` (run ``Steps`` in one of its
transactions), ``_wake`` (tell the dispatchers that events may be sent) and ``_claim_steps``
(its candidate query and lease); ``Transitions`` holds the logic between them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TypeVar

import structlog

from relay.store.contract import Attempt, EventFilter, EventRecord, Outcome, Retried
from relay.store.reads import OutboxReads, Read
from relay.store.transitions import Steps, Transitions

log = structlog.get_logger("relay.outbox")
T = TypeVar("T")


class OutboxBase(OutboxReads, ABC):
    """The shared half of an ``Outbox``; see ``Outbox`` for what each member promises."""

    def __init__(
        self, read: Read, transitions: Transitions, *, due: Sequence[str] = ("pending",)
    ) -> None:
        super().__init__(read, transitions.dialect, due=due)
        self.transitions = transitions

    # -- the backend's part ------------------------------------------------------------------

    @abstractmethod
    async def _run(self, steps: Callable[[], Steps[T]]) -> T:
        """Run the steps ``steps()`` makes in one transaction, committed when this returns
        (a backend that retries a transaction makes them again)."""

    @abstractmethod
    def _wake(self) -> None:
        """Events may be sent now: wake the dispatcher (on PostgreSQL, the fleet's)."""

    @abstractmethod
    def _claim_steps(
        self, now: float, limit: int, servers: Sequence[str], lease_s: float, max_age_s: float
    ) -> Steps[list[EventRecord]]:
        """The claim in this backend's SQL, ending in ``Transitions.claim``."""

    # -- the shared part ---------------------------------------------------------------------

    async def claim_source(self, source: str, lease_s: float, now: float) -> bool:
        """One process holds a SQLite file (its lock), so its watchers always poll."""
        return True

    async def claim(
        self, now: float, limit: int, *, servers: Sequence[str], lease_s: float, max_age_s: float
    ) -> list[EventRecord]:
        if not servers:
            return []
        return await self._run(lambda: self._claim_steps(now, limit, servers, lease_s, max_age_s))

    async def finish(self, record: EventRecord, outcome: Outcome, attempt: Attempt) -> None:
        held = await self._run(lambda: self.transitions.finish(record, outcome, attempt))
        if not held:
            # Our lease ran out and the row moved on; the new owner's result stands.
            log.warning("outbox.lease_lost", outbox_id=record.id, lease=record.lease)
        elif outcome.status in ("delivered", "dead"):
            self._wake()  # its followers may go now

    async def retry(
        self, ids: Sequence[int] | EventFilter, now: float, *, limit: int = 500
    ) -> list[Retried]:
        results = await self._run(lambda: self.transitions.retry(ids, now, limit))
        if any(r.result in ("requeued", "due_now") for r in results):
            self._wake()
        return results

    async def prune(self, before: float, ledger_before: float = 0.0) -> tuple[int, int]:
        return await self._run(lambda: self.transitions.prune(before, ledger_before))

    async def purge(self, status: str, before: float, *, limit: int = 1000) -> int:
        if status not in ("dead", "delivered"):
            raise ValueError(f"only dead or delivered events can be purged, not {status}")
        return await self._run(lambda: self.transitions.purge(status, before, limit))
