"""The outbox contract: what the dispatcher, the API, admin and the CLI may ask of an outbox.

Two backends keep it: ``sqlite`` (one relay, one file) and ``postgres`` (a fleet of relays
on one database). Callers hold an ``Outbox`` and never learn which one they have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay.events import Event

STATUSES = ("pending", "in_flight", "delivered", "dead")


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One outbox row as operators and the dispatcher see it."""

    id: int
    server_id: str
    token: str
    event: str
    server_event_id: str
    test: bool
    status: str
    outcome: str | None
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None
    last_http_status: int | None
    response: str | None
    referral_id: str | None
    state: str | None
    finished_at: float | None
    replayed_at: float | None  # the last operator retry of this event, if any
    body: bytes
    # The fencing token of the claim that leased this row (PostgreSQL; 0 on SQLite, where
    # one process holds the file): an outcome is written only under the lease it was sent on.
    lease: int = 0

    @property
    def age_from(self) -> float:
        """Where ``max_age_s`` counts from: ingest, or the last operator retry."""
        return self.replayed_at or self.created_at

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> EventRecord:
        values = list(row)
        values[5] = bool(values[5])
        return cls(*values)

    def as_json(self) -> dict[str, Any]:
        out = {n: getattr(self, n) for n in self.__slots__ if n not in ("body", "lease")}
        if self.status in ("delivered", "dead"):
            out["next_attempt_at"] = None
        out["body"] = self.body.decode("utf-8")
        return out


@dataclass(frozen=True, slots=True)
class Added:
    """What became of one event handed to ``Outbox.add``."""

    id: int
    status: str
    created: bool  # False: the key was already there
    conflict: bool  # the existing row's client payload differs


@dataclass(frozen=True, slots=True)
class Attempt:
    """One row of the delivery log."""

    event_id: int
    started_at: float
    duration_ms: float
    http_status: int | None
    outcome: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt decided for its event; written by ``Outbox.finish``."""

    status: str  # pending (retry), delivered or dead
    outcome: str | None = None
    next_attempt_at: float = 0.0
    error: str | None = None
    http_status: int | None = None
    response: str | None = None
    referral_id: str | None = None
    state: str | None = None


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events an operator means; every field left None matches everything."""

    status: str | None = None
    event: str | None = None
    token: str | None = None
    server_id: str | None = None
    server_event_id: str | None = None
    outcome: str | None = None  # for dead events: why they died
    since: float | None = None  # ingested at or after
    finished_before: float | None = None
    after_id: int | None = None  # for walking a large set in chunks

    # The fields matched by equality; the rest are numbers compared as ``where`` says.
    TEXT = ("status", "event", "token", "server_id", "server_event_id", "outcome")
    NUMBER = ("since", "finished_before", "after_id")

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        clauses, params = ["TRUE"], []
        for column in self.TEXT:
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        for column, op, value in (
            ("created_at", ">=", self.since),
            ("finished_at", "<", self.finished_before),
            ("id", ">", self.after_id),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        return " AND ".join(clauses), params


@dataclass(frozen=True, slots=True)
class Retried:
    """What an operator's retry did to one event."""

    id: int
    result: str  # requeued, due_now, not_found, delivered, in_flight
    followers: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FleetState:
    """Delivery decisions replicas share: the breaker's open circuit and paused servers."""

    circuit_open_until: float | None = None
    paused: tuple[tuple[str, str], ...] = ()  # (server_id, reason)
    replicas: int = 1  # live replicas, this one included (in what ``share`` returns)


class Outbox(Protocol):
    """One outbox, whichever backend keeps it. Every write is committed before it returns."""

    # Set after every commit that added or freed events, so the dispatcher sends at once.
    new_events: asyncio.Event

    @property
    def location(self) -> str:
        """Where the outbox lives, for operators: a file path, or a URL without password."""

    async def close(self) -> None: ...

    async def check_writable(self) -> None:
        """Raise ``OutboxError`` unless a write transaction can be committed now."""

    async def disk_free_bytes(self) -> int | None:
        """Free bytes on the outbox's disk; None where the relay cannot see that disk."""

    def size_bytes(self) -> int:
        """The outbox's size on disk, as last measured."""

    async def add(self, events: Sequence[Event], now: float) -> list[Added]: ...

    async def requeue_in_flight(self, now: float) -> int:
        """Start-up: hand back what this relay held when it stopped; how many."""

    async def claim(
        self, now: float, limit: int, *, servers: Sequence[str], lease_s: float, max_age_s: float
    ) -> list[EventRecord]: ...

    async def finish(self, record: EventRecord, outcome: Outcome, attempt: Attempt) -> None: ...

    async def release(self, records: Iterable[EventRecord], now: float) -> None: ...

    async def prune(self, before: float) -> tuple[int, int]: ...

    async def retry(
        self, ids: Sequence[int] | EventFilter, now: float, *, limit: int = 500
    ) -> list[Retried]: ...

    async def purge(self, status: str, before: float, *, limit: int = 1000) -> int: ...

    async def select(self, where: EventFilter, limit: int = 50) -> list[EventRecord]: ...

    async def count(self, where: EventFilter) -> int: ...

    async def counts_by_server(self) -> dict[str, dict[str, int]]: ...

    async def dead_by_reason(self) -> list[dict[str, Any]]: ...

    async def get(self, event_id: int) -> EventRecord | None: ...

    async def attempts(self, event_id: int, limit: int = 50) -> list[Attempt]: ...

    async def next_due(self, servers: Sequence[str]) -> float | None: ...

    async def oldest_pending_created(self) -> float | None: ...

    async def share(self, mine: FleetState, now: float) -> FleetState:
        """Publish what this replica decided; return what the other live replicas decided."""
