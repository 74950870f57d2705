"""The outbox contract: what the dispatcher, the API, admin, the CLI, the console, the alert
rules and the player view may ask of an outbox.

Two backends keep it: ``sqlite`` (one relay, one file) and ``postgres`` (a fleet of relays
on one database). Callers hold an ``Outbox`` and never learn which one they have; the
records beside the events (rejected inputs, the ledger, alert state) are ``outbox.records``
(``contract_records``).

Just over STYLE.md's 400 lines on purpose: the Protocol's docstrings carry the claim, finish,
retry and purge rules both backends keep, and they read best in one place.

What is a file's concern only is trivial on PostgreSQL, whose server minds its own disk and
whose data no relay holds as a file:

- ``check_file`` is always None and ``lost`` stays None (nothing can be deleted under us);
- ``can_deliver`` is always True (no local disk reserve; a write that fails is an error);
- ``disk_free_bytes`` is None, and so is ``health().free_bytes``; ``health`` only proves a
  write can commit;
- ``size_bytes`` is the events and attempts tables' size, as last measured;
- ``share`` is where replicas meet; on SQLite it returns an empty ``FleetState``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from relay.events import Event
from relay.store.contract_records import Records

Status = Literal["pending", "in_flight", "delivered", "dead"]
STATUSES: tuple[Status, ...] = get_args(Status)
FINISHED: tuple[Status, ...] = ("delivered", "dead")  # no attempt follows, unless replayed
# A qualified or reversed that MMOLove refused as illegal before any registered for its
# token was delivered: pending until one is, dead as "orphaned" at max_age_s.
WAITING_FOR_REGISTERED = "waiting_for_registered"
# Outcomes of an attempt MMOLove took; any other outcome is a failed attempt.
# A failed attempt's outcome is open-ended (``http_<status>``, ``timeout``...): a ``str``.
DeliveredOutcome = Literal["accepted", "duplicate", "ignored", "test"]
DELIVERED_OUTCOMES: tuple[DeliveredOutcome, ...] = get_args(DeliveredOutcome)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One outbox row as operators and the dispatcher see it."""

    id: int
    server_id: str
    token: str
    event: str
    server_event_id: str
    test: bool
    status: Status
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
    referee_identity: str | None = None  # on registered events: the player
    reported_by: str | None = None  # the source that read it from the game's database
    # The fencing token of the claim that leased this row (PostgreSQL; 0 on SQLite, where
    # one process holds the file): an outcome is written only under the lease it was sent on.
    lease: int = 0

    @property
    def age_from(self) -> float:
        """Where ``max_age_s`` counts from: ingest, or the last operator retry."""
        return self.replayed_at or self.created_at

    @classmethod
    def from_row(cls, row: Any) -> EventRecord:
        """The record from a row with named columns (``sqlite3.Row``, ``asyncpg.Record``)."""
        values = {name: row[name] for name in row.keys()}  # noqa: SIM118 - a row, not a dict
        return cls(**values | {"test": bool(values["test"])})

    def as_json(self) -> dict[str, Any]:
        out = {n: getattr(self, n) for n in self.__slots__ if n not in ("body", "lease")}
        if self.status in FINISHED:
            out["next_attempt_at"] = None
        out["body"] = self.body.decode("utf-8")
        return out


# What ingest stores of one event, in this column order, on either backend.
INGEST_COLUMNS = (
    "server_id, token, event, server_event_id, rank, test, body, fingerprint, created_at,"
    " next_attempt_at, referee_identity, reported_by"
)


def ingest_values(ev: Event, now: float) -> tuple[Any, ...]:
    """The values of ``INGEST_COLUMNS`` for one event received at ``now``."""
    referee = ev.referee_identity if ev.event == "registered" else None
    return (ev.server_id, ev.token, ev.event, ev.server_event_id, ev.rank, ev.test, ev.body,
            ev.fingerprint, now, now, referee, ev.reported_by)  # fmt: skip


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

    status: Status  # pending (retry), delivered or dead
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
    player: str | None = None  # every event of the referral whose registered names this player
    since: float | None = None  # ingested at or after
    finished_before: float | None = None
    after_id: int | None = None  # for walking a large set in chunks

    # The fields matched by equality; the rest are numbers compared as ``where`` says.
    TEXT = ("status", "event", "token", "server_id", "server_event_id", "outcome", "player")
    NUMBER = ("since", "finished_before", "after_id")

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition and its parameters."""
        clauses, params = ["TRUE"], []
        for column in self.TEXT:
            value = getattr(self, column)
            if value is not None and column == "player":
                clauses.append(
                    "(token, server_id) IN (SELECT token, server_id FROM events"
                    " WHERE referee_identity = ?)"
                )
                params.append(value)
            elif value is not None:
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
class Health:
    """What ``/readyz`` needs of the outbox: what stops ingest now, and the disk's free bytes."""

    problems: tuple[str, ...]
    free_bytes: int | None  # None where the relay cannot see the disk (PostgreSQL)


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


@dataclass(frozen=True, slots=True)
class HourCounts:
    """One hour of the console's chart."""

    start: float
    ingested: int
    delivered: int  # attempts MMOLove took
    failed: int  # attempts that did not deliver (retried or dead-lettered)


@dataclass(frozen=True, slots=True)
class LogPage:
    """A page of the delivery log, newest first, and where the next (older) page starts."""

    records: tuple[EventRecord, ...]
    older_than: int | None  # the cursor of the next page; None: nothing older
    scanned_from: int  # the lowest id this page looked at


def claim_rule(candidate: Any, now: float, max_age_s: float) -> Outcome | float | None:
    """What claiming does with one due event; the first rule that applies decides.

    ``candidate`` is a row with named columns (both backends select the same names): id,
    age_from, outcome, and its blocker's blocker, blocker_status, blocker_outcome, blocker_due.

    1. Older than ``max_age_s`` (from ingest, or its last replay): dead, ``expired``, or
       ``orphaned`` if it was waiting for a registered that never came.
    2. No undelivered predecessor for its referral: claimed, sent now (None).
    3. Its predecessor is dead: dead too, ``predecessor_dead``, naming it, so the order
       MMOLove sees is never broken; an operator replays both.
    4. Its predecessor is still to be sent: deferred until that one is due (the time
       returned), and at least a second, so an unclaimed predecessor cannot spin the loop.
    """
    if candidate["age_from"] + max_age_s <= now:
        error = f"not delivered within max_age_s={max_age_s:g} of ingest"
        if candidate["outcome"] == WAITING_FOR_REGISTERED:
            error += "; no registered for its token was delivered in that time"
            return Outcome(status="dead", outcome="orphaned", error=error)
        return Outcome(status="dead", outcome="expired", error=error)
    if candidate["blocker"] is None:
        return None
    if candidate["blocker_status"] == "dead":
        error = (
            f"held back: event {candidate['blocker']} for this token is dead "
            f"({candidate['blocker_outcome']}); this one was not sent, to keep the order. "
            "Replay both once the cause is fixed."
        )
        return Outcome(status="dead", outcome="predecessor_dead", error=error)
    return float(max(candidate["blocker_due"], now + 1.0))


class Outbox(Protocol):
    """One outbox, whichever backend keeps it. Every write is committed before it returns."""

    # Set after every commit that added or freed events, so the dispatcher sends at once.
    new_events: asyncio.Event
    # Why the outbox is lost (see ``check_file``); None while it is fine.
    lost: str | None

    @property
    def records(self) -> Records:
        """Rejected inputs, the ledger and the alert state, in the same database."""

    @property
    def location(self) -> str:
        """Where the outbox lives, for operators: a file path, or a URL without password."""

    async def close(self) -> None: ...

    async def health(self) -> Health:
        """Whether events can be stored now, and why not."""

    async def check_file(self) -> str | None:
        """Why the outbox was lost under the relay (its file deleted or replaced), or None."""

    async def disk_free_bytes(self) -> int | None:
        """Free bytes on the outbox's disk; None where the relay cannot see that disk."""

    async def can_deliver(self) -> bool:
        """Whether an attempt started now could record its outcome."""

    def size_bytes(self) -> int:
        """The outbox's size on disk, as last measured."""

    async def add(self, events: Sequence[Event], now: float) -> list[Added]: ...

    async def add_polled(
        self, events: Sequence[Event], now: float, *, source: str, cursor: str
    ) -> list[Added]:
        """``add``, and the source's cursor (JSON text) in the same transaction."""

    async def claim_source(self, source: str, lease_s: float, now: float) -> bool:
        """Take or renew the lease to poll a source for ``lease_s``; False while another
        replica of a fleet holds it (it hands over when its lease runs out)."""

    async def source_cursor(self, source: str) -> str | None:
        """The cursor a source's last stored poll reached (JSON text); None before its first."""

    async def watched_players(self, server_id: str, since: float) -> list[tuple[str, str]]:
        """(referee_identity, token) of players registered since ``since``, not yet qualified."""

    async def requeue_in_flight(self, now: float) -> int:
        """Start-up: hand back what this relay held when it stopped; how many."""

    async def claim(
        self, now: float, limit: int, *, servers: Sequence[str], lease_s: float, max_age_s: float
    ) -> list[EventRecord]:
        """Lease up to ``limit`` due events of these servers for ``lease_s``, oldest due first.

        In-flight rows whose lease ran out (an attempt that died without recording its
        outcome) become pending again first. Then ``claim_rule`` decides each due event: an
        expired one is dead-lettered; one whose (server, token) still has an undelivered
        event of a lower rank is not claimed but deferred until that one is due (finishing
        it wakes this one sooner); one whose predecessor is dead is dead-lettered too,
        naming it. Test events take no part in ordering. A paused server's backlog is never
        walked; on PostgreSQL, rows another replica is claiming are skipped, not waited for,
        and each claim carries a fresh fencing ``lease``.
        """

    async def finish(self, record: EventRecord, outcome: Outcome, attempt: Attempt) -> None:
        """Log ``attempt`` and write its ``outcome`` in one transaction.

        The outcome is written only while the claim ``record`` came from still holds its
        lease (PostgreSQL; on SQLite one process holds the file, so always): a replica back
        after its lease ran out cannot overwrite the new owner's result. A delivered or dead
        event makes its referral's untried followers due now, and a registered one the
        events that waited for it (``WAITING_FOR_REGISTERED``); ``new_events`` is set.
        """

    async def release(self, records: Iterable[EventRecord], now: float) -> None:
        """Hand leased events back as pending, due at ``now`` (shutdown cancelled their
        attempt); on PostgreSQL only those this claim still holds."""

    async def prune(self, before: float, ledger_before: float = 0.0) -> tuple[int, int]:
        """Delete delivered events and attempts before ``before``, each delivered event
        leaving its ledger entry; drop ledger entries finished before ``ledger_before``."""

    async def retry(
        self, ids: Sequence[int] | EventFilter, now: float, *, limit: int = 500
    ) -> list[Retried]:
        """Re-queue dead events to be sent now, in one transaction.

        ``ids`` names events, or a filter picks up to ``limit`` of them, lowest id first. A
        dead event becomes pending with its ``max_age_s`` clock restarted (``replayed_at``),
        and so do the followers that died with it (``predecessor_dead``), listed in its
        ``Retried``; they are not retried again on their own. A pending event is made due
        now; delivered and in-flight ones are left alone, and reported as such.
        """

    async def purge(self, status: str, before: float, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` dead or delivered events finished before ``before``, and
        their attempts; how many events. Any other status is a ``ValueError``."""

    async def select(self, where: EventFilter, limit: int = 50) -> list[EventRecord]: ...

    async def count(self, where: EventFilter) -> int: ...

    async def counts_by_server(self) -> dict[str, dict[str, int]]: ...

    async def dead_by_reason(self) -> list[dict[str, Any]]: ...

    async def get(self, event_id: int) -> EventRecord | None: ...

    async def attempts(self, event_id: int, limit: int = 50) -> list[Attempt]: ...

    async def next_due(self, servers: Sequence[str]) -> float | None: ...

    async def registered_delivered_at(self, server_id: str, token: str) -> float | None:
        """When this token's (non-test) registered was delivered; None if it was not."""

    async def oldest_pending_created(self) -> float | None: ...

    # -- the console's reads: each bounded, whatever the backlog ----------------------------

    async def first_ids_at(self, times: Sequence[float]) -> list[int]:
        """For each time, the lowest id such that every event from it on came at or after."""

    async def hourly(self, since: float, hours: int) -> list[HourCounts]: ...

    async def log_page(
        self,
        where: EventFilter,
        *,
        older_than: int | None,
        scan: int,
        limit: int,
    ) -> LogPage:
        """Up to ``limit`` events matching ``where`` among the ``scan`` ids below ``older_than``."""

    async def search(self, text: str, limit: int) -> list[EventRecord]: ...

    async def counts_up_to(self, cap: int) -> dict[str, dict[str, int]]:
        """``counts_by_server`` with each count stopped at ``cap + 1``."""

    async def oldest_pending_by_server(self, servers: Sequence[str]) -> dict[str, float]: ...

    async def share(self, mine: FleetState, now: float) -> FleetState:
        """Publish what this replica decided; return what the other live replicas decided."""
