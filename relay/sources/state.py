"""What each source watcher has done, kept in memory for ``/v1/status``, ``mmolove-relay
sources`` and the metric: its last poll, cursor, counts and, while it fails, why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from relay.config.sources import SourceConfig

# The result label values of mmolove_relay_source_polls_total: ok, or how a poll failed.
POLL_RESULTS: tuple[str, ...] = (
    "ok",
    "unavailable",
    "credentials",
    "timeout",
    "write",
    "query",
    "outbox",
)


@dataclass(slots=True)
class SourceState:
    """One source's story since the relay started (the cursor is the outbox's)."""

    name: str
    produces: str
    url: str  # masked
    server_id: str
    milestone: str | None = None
    polls: int = 0
    last_poll: float | None = None  # when the last poll ended, well or not
    last_ok: float | None = None
    cursor: str | None = None  # JSON text, as stored
    rows_read: int = 0
    events_stored: int = 0  # new rows only: a row seen again is a duplicate, not counted
    rejected: int = 0
    players_watched: int | None = None  # milestone watchers only
    standby: bool = False  # another replica of the fleet holds the lease and polls it
    failing_since: float | None = None
    reason: str | None = None  # a SourceFailure, or "outbox" when the outbox refused
    last_error: str | None = None

    @classmethod
    def of(cls, config: SourceConfig) -> SourceState:
        return cls(
            name=config.name,
            produces=config.produces,
            url=config.masked_url,
            server_id=config.server_id,
            milestone=config.milestone,
        )

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def succeeded(self, now: float) -> None:
        self.polls += 1
        self.last_poll = self.last_ok = now
        self.failing_since = None
        self.reason = None

    def failed(self, now: float, reason: str, message: str) -> None:
        self.polls += 1
        self.last_poll = now
        if self.failing_since is None:
            self.failing_since = now
        self.reason = reason
        self.last_error = message

    @property
    def condition(self) -> str:
        """failing, standby (another replica polls it), ok, or starting (no poll yet)."""
        if self.failing:
            return "failing"
        if self.standby:
            return "standby"
        return "ok" if self.last_ok else "starting"

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.condition
        return out


# The running relay's sources, in configuration order, for /v1/status and the console.
SOURCES = web.AppKey("sources", list[SourceState])
