"""The outbox database's outages, logged once when each starts and once when it ends.

Every part of the relay touches the database (ingest, delivery, the fleet's sync, alerts,
housekeeping, the listener), most of them every second: each reporting its own failure
would bury the one fact an operator needs under a line per part per second.
"""

from __future__ import annotations

import time

import structlog

log = structlog.get_logger("relay.outbox")


class Outage:
    """Whether the database at ``where`` is away, and since when."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.since: float | None = None  # time.monotonic() when it went away; None: reachable

    def down(self, exc: BaseException) -> None:
        """The database could not be reached: logged if that is news. The caller raises
        ``OutboxDown``, which its own callers retry without logging."""
        if self.since is not None:
            return
        self.since = time.monotonic()
        log.error(
            "outbox.lost",
            database=self.where,
            error=f"{type(exc).__name__}: {exc}",
            action="check that PostgreSQL is up and reachable from this host; meanwhile "
            "ingest answers 503 with Retry-After and deliveries wait, nothing already "
            "acknowledged is lost, and the relay reconnects by itself",
        )

    def up(self) -> None:
        """A round trip to the database worked."""
        if self.since is not None:
            log.info(
                "outbox.back", database=self.where, down_s=round(time.monotonic() - self.since, 1)
            )
            self.since = None
