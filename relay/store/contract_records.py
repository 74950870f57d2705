"""The records contract: rejected inputs, the ledger and alert state, beside the events.

Each backend keeps them in its own database; both read them alike (``reads.RecordReads``)
and write them their own way (``sqlite_records``, ``postgres_records``). Callers reach them
as ``outbox.records`` and see only these dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass
from typing import Any, Protocol

BODY_KEPT_BYTES = 512
# The columns both backends read of the records tables (decoded by name).
REJECTED_COLUMNS = (
    "at, http_status, code, message, field, server_event_id, token, referee_identity, peer, "
    "body, id"
)
# What a backend stores of a rejection (``Rejection.stored``): the database assigns the id.
REJECTED_STORED = REJECTED_COLUMNS.removesuffix(", id")
LEDGER_COLUMNS = (
    "event_id, server_id, token, event, server_event_id, referee_identity, test, outcome, "
    "referral_id, state, attempts, created_at, finished_at, reported_by"
)
# The events table's columns as a ledger entry: what the prune copies, and how a delivered
# event not yet pruned is read as one.
EVENT_AS_LEDGER = LEDGER_COLUMNS.replace("event_id", "id", 1)


@dataclass(frozen=True, slots=True)
class Rejection:
    """One input ingest refused with a 4xx; ``id`` is 0 until it is stored."""

    at: float
    http_status: int
    code: str
    message: str
    field: str | None
    server_event_id: str | None
    token: str | None
    referee_identity: str | None
    peer: str | None
    body: bytes  # the first BODY_KEPT_BYTES of what the client sent
    id: int = 0

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["body"] = self.body.decode("utf-8", "replace")
        return out

    def stored(self) -> tuple[Any, ...]:
        """The values of ``REJECTED_STORED``, the body cut to its first ``BODY_KEPT_BYTES``."""
        *kept, _body, _id = astuple(self)  # the fields in column order: body, then id, last
        return (*kept, self.body[:BODY_KEPT_BYTES])


@dataclass(frozen=True, slots=True)
class RejectedFilter:
    """Which rejected inputs to list; None matches everything."""

    since: float | None = None
    code: str | None = None
    token: str | None = None
    referee_identity: str | None = None
    before_id: int | None = None  # the page's cursor: only rows older than this id

    def conditions(self) -> list[tuple[str, str, Any]]:
        """(column, operator, value) for each criterion set; each backend adds placeholders."""
        return [
            (column, op, value)
            for column, op, value in (
                ("at", ">=", self.since),
                ("code", "=", self.code),
                ("token", "=", self.token),
                ("referee_identity", "=", self.referee_identity),
                ("id", "<", self.before_id),
            )
            if value is not None
        ]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """The compact record of a delivered event, kept after its body and attempts are pruned."""

    event_id: int
    server_id: str
    token: str
    event: str
    server_event_id: str
    referee_identity: str | None
    test: bool
    outcome: str | None
    referral_id: str | None
    state: str | None
    attempts: int
    created_at: float
    finished_at: float
    reported_by: str | None  # the source that read it from the game's database

    @classmethod
    def from_row(cls, row: Any) -> LedgerEntry:
        """The entry from a row with named columns (``sqlite3.Row``, ``asyncpg.Record``)."""
        values = {name: row[name] for name in row.keys()}  # noqa: SIM118 - a row, not a dict
        return cls(**values | {"test": bool(values["test"])})  # an integer on SQLite


@dataclass(frozen=True, slots=True)
class AlertState:
    """A condition that is firing: since when, when it was last told, and what was said."""

    key: str
    since: float
    last_sent: float
    summary: str


@dataclass(frozen=True, slots=True)
class DeadCount:
    """Events that died for one reason, and when the latest of them did."""

    outcome: str
    count: int
    latest: float


class Records(Protocol):
    """Typed access to the records tables of one outbox."""

    async def add_rejections(self, rows: Sequence[Rejection], *, keep: int) -> bool:
        """Store rejections and drop all but the newest ``keep``; False if they did not store
        (only the record is lost, never an event)."""

    async def rejections(self, where: RejectedFilter, limit: int = 50) -> list[Rejection]:
        """Rejected inputs matching ``where``, newest first."""

    async def count_rejections(self, since: float) -> int: ...

    async def rejections_per_hour(self, since: float, hours: int) -> list[int]:
        """Rejected inputs in each of ``hours`` hours from ``since``, for the console's chart."""

    async def ledger(
        self, *, token: str | None = None, referee_identity: str | None = None
    ) -> list[LedgerEntry]:
        """Ledger entries of a token, or of the ``registered`` naming a player; oldest first."""

    async def first_delivered(self, event: str, *, test: bool = False) -> LedgerEntry | None:
        """The lowest-id delivered event of a type, from the ledger or, not yet pruned, the
        outbox (for the console's "Getting started"); None if none was delivered."""

    async def dead_since(self, finished_after: float) -> list[DeadCount]:
        """Events that died after a time, counted by why."""

    async def alert_states(self) -> dict[str, AlertState]: ...

    async def save_alert(self, state: AlertState) -> None: ...

    async def clear_alert(self, key: str) -> None: ...

    async def mark(self, name: str) -> float | None:
        """A value the alert rules keep across restarts (e.g. the last dead id told)."""

    async def set_mark(self, name: str, value: float) -> None: ...
