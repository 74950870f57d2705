"""The watchers: each ``[[sources]]`` entry polls its game database and stores the events it
finds through the same ``validate`` and outbox as ``POST /v1/events``.

A registration watcher reads the rows after its cursor (``:cursor``, ``:limit``) and stores
their events with the new cursor in one outbox transaction, so a crash at any moment neither
skips nor doubles a row: the cursor the outbox holds is always that of the events it holds.
A milestone watcher asks about the players the relay saw registered and not yet qualified
(``IN (:players)``, in chunks). Keys are the examples' (``reg-<player>``,
``qual-<player>-<milestone>``), so an event the web page POSTs and a watcher also sees is
stored once. A bad row is a rejected input that names its source, and the rows after it go on.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal

import structlog

from relay.config.sources import SourceConfig
from relay.errors import InvalidEvent, OutboxError, SourceError
from relay.events import Event, validate
from relay.metrics import Metrics
from relay.sources.database import SourceDatabase, connect
from relay.sources.state import POLL_RESULTS, SourceState
from relay.store.contract import Outbox
from relay.store.contract_records import BODY_KEPT_BYTES, Rejection

log = structlog.get_logger("relay.sources")

ROWS_PER_POLL = 500  # :limit; a backlog drains at this many rows per interval... or faster:
# a full page is followed at once by the next, so only a caught-up watcher waits.
PLAYERS_PER_QUERY = 500  # :players per statement: short IN lists keep each poll on the index
TOKEN_LIFE_S = 90 * 86400  # a referral token's 90 days: past them, a player is not watched
MAX_BACKOFF_S = 300.0
Connect = Callable[..., Awaitable[SourceDatabase]]
Note = Callable[[Rejection], None]


@dataclass(frozen=True, slots=True)
class Found:
    """What one read of a source came to: the events, the bad rows, the next cursor."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    cursor: str | None = None  # JSON text; None: unchanged (or a milestone watcher)
    rows: int = 0
    full: bool = False  # a whole :limit page: more rows are waiting


def text(value: object) -> str:
    """An identity, token or cursor as text: account 7842 is the player "7842"."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    return str(value)


def cursor_json(value: object) -> str:
    """A row's cursor as the outbox keeps it: a number stays a number, the rest is text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return json.dumps(int(value))
    return json.dumps(text(value))


def _ts(value: object) -> object:
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, Decimal):
        return float(value)
    return value


class Watcher:
    """One source: ``poll`` reads and stores once, ``run`` polls until told to stop."""

    def __init__(
        self,
        config: SourceConfig,
        outbox: Outbox,
        metrics: Metrics,
        *,
        note: Note,
        server_ids: Sequence[str],
        connect: Connect = connect,
    ) -> None:
        self.config = config
        self.state = SourceState.of(config)
        self._outbox = outbox
        self._metrics = metrics
        self._note = note
        self._server_ids = tuple(server_ids)
        self._connect = connect
        self._db: SourceDatabase | None = None
        self._asked_up_to: str | None = None  # the last watched player the last poll asked about
        for result in POLL_RESULTS:  # every series exists from the start, at 0
            metrics.source_polls.labels(config.name, result)

    async def run(self) -> None:
        """Poll every interval_s until cancelled; after a failure, back off (doubling).

        Cancelled mid-poll, nothing is lost: the events and the cursor commit together."""
        try:
            await self._polls()
        finally:
            await self.close()

    async def _polls(self) -> None:
        failures = 0
        # Long enough to outlast an interval and a slow poll; a replica killed mid-poll
        # hands the source over when it runs out.
        lease_s = 3 * self.config.interval_s + 2 * self.config.statement_timeout_s + 1
        while True:
            more = False
            try:
                self.state.standby = not await self._outbox.claim_source(
                    self.config.name, lease_s, time.time()
                )
                if not self.state.standby:
                    more = await self.poll()
                failures = 0
            except (SourceError, OutboxError) as exc:
                failures += 1
                self._failed(exc)
            except Exception as exc:  # a bug must not end the watcher: say it, back off
                failures += 1
                log.exception("source.poll_crashed", source=self.config.name)
                self._failed(SourceError(f"source {self.config.name}: {exc!r}", "query"))
            wait = 0.0 if more else self.config.interval_s
            if failures:
                wait = min(self.config.interval_s * 2 ** (failures - 1), MAX_BACKOFF_S)
            await asyncio.sleep(wait)  # 0 between full pages: ingest and delivery go between

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def poll(self) -> bool:
        """Read once and store what was found; True when more rows are already waiting."""
        found = await self.read(time.time())
        now = time.time()
        if self.config.produces == "registered" and found.cursor is not None:
            added = await self._outbox.add_polled(
                found.events, now, source=self.config.name, cursor=found.cursor
            )
            self.state.cursor = found.cursor
        else:
            added = await self._outbox.add(found.events, now) if found.events else []
            if self.state.players_watched is not None:  # the qualified are watched no more
                self.state.players_watched -= sum(a.created for a in added)
        for rejection in found.rejected:
            self._note(rejection)
        self.state.rows_read += found.rows
        self.state.rejected += len(found.rejected)
        self.state.events_stored += sum(a.created for a in added)
        if self.state.failing:
            log.info("source.back", source=self.config.name)
        self.state.succeeded(time.time())
        self._metrics.source_polls.labels(self.config.name, "ok").inc()
        return found.full

    async def read(self, now: float, *, every_player: bool = False) -> Found:
        """Run the query once, read-only, and turn its rows into events; stores nothing.

        A milestone watcher asks about its next ``players_per_poll`` watched players, or
        about all of them with ``every_player``."""
        db = await self._database()
        if self.config.produces == "registered":
            # Read each time: in a fleet, another replica may have polled it last.
            self.state.cursor = await self._stored_cursor()
            cursor = json.loads(self.state.cursor)
            rows = await db.fetch(self.config.query, {"cursor": cursor, "limit": ROWS_PER_POLL})
            return self._registrations(rows, now)
        since = now - TOKEN_LIFE_S
        players = dict(await self._outbox.watched_players(self.config.server_id, since))
        self.state.players_watched = len(players)
        names = sorted(players) if every_player else self._turn(sorted(players))
        found = Found()
        for start in range(0, len(names), PLAYERS_PER_QUERY):
            chunk = names[start : start + PLAYERS_PER_QUERY]
            rows = await db.fetch(self.config.query, {"players": chunk})
            more = self._milestones(rows, players, now)
            found = Found(
                found.events + more.events,
                found.rejected + more.rejected,
                rows=found.rows + len(rows),
            )
        return found

    def _turn(self, names: list[str]) -> list[str]:
        """This poll's share of the watched players (sorted): the next ``players_per_poll``
        after the last one asked about, back at the start once the end is reached. The
        database's work per poll stays bounded however many players are watched; each is
        asked about once every ceil(watched / players_per_poll) polls. The place is kept in
        memory: a restart, or a fleet replica taking over, starts again at the first player."""
        start = bisect.bisect_right(names, self._asked_up_to) if self._asked_up_to else 0
        if start >= len(names):
            start = 0
        turn = names[start : start + self.config.players_per_poll]
        self._asked_up_to = turn[-1] if start + len(turn) < len(names) else None
        return turn

    async def _stored_cursor(self) -> str:
        stored = await self._outbox.source_cursor(self.config.name)
        return stored if stored is not None else json.dumps(self.config.start_cursor)

    async def _database(self) -> SourceDatabase:
        if self._db is None:
            self._db = await self._connect(
                self.config.url,
                password=self.config.password,
                statement_timeout_s=self.config.statement_timeout_s,
                name=self.config.name,
            )
        return self._db

    def _registrations(self, rows: list[dict[str, object]], now: float) -> Found:
        made: list[Event | Rejection] = []
        cursor = None
        for row in rows:
            if row.get("cursor") is None:
                raise SourceError(
                    f"the query of source {self.config.name} returned a row without a cursor "
                    f"(columns: {', '.join(row) or 'none'}); return one, e.g. id AS cursor.",
                    "query",
                )
            cursor = cursor_json(row["cursor"])
            player = row.get("referee_identity")
            data: dict[str, object] = {
                "event": "registered",
                "token": text(row["token"]) if row.get("token") is not None else None,
                "referee_identity": text(player) if player is not None else None,
                "server_event_id": f"reg-{text(player)}" if player is not None else None,
            }
            if row.get("ts") is not None:
                data["ts"] = _ts(row["ts"])
            made.append(self._event(data, row, now))
        return _found(made, cursor, len(rows), full=len(rows) >= ROWS_PER_POLL)

    def _milestones(
        self, rows: list[dict[str, object]], players: Mapping[str, str], now: float
    ) -> Found:
        made: list[Event | Rejection] = []
        for row in rows:
            player = text(row.get("referee_identity"))
            token = players.get(player)
            if token is None:  # not one we asked about: the query ignores :players
                log.warning("source.unasked_player", source=self.config.name, player=player)
                continue
            data: dict[str, object] = {
                "event": "qualified",
                "token": token,
                "referee_identity": player,
                "server_event_id": f"qual-{player}-{self.config.milestone}",
            }
            if row.get("ts") is not None:
                data["ts"] = _ts(row["ts"])
            made.append(self._event(data, row, now))
        return _found(made, None, len(rows))

    def _event(
        self, data: dict[str, object], row: Mapping[str, object], now: float
    ) -> Event | Rejection:
        """The row's event through ingest's own validation, or its rejection naming us."""
        data = {k: v for k, v in data.items() if v is not None}
        data["server_id"] = self.config.server_id
        try:
            event = validate(data, server_ids=self._server_ids, allow_extra_fields=False, now=now)
            return replace(event, reported_by=self.config.name)
        except InvalidEvent as exc:
            body = json.dumps({k: text(v) for k, v in row.items()}, ensure_ascii=False)
            return Rejection(
                at=now,
                http_status=exc.status,
                code=exc.code,
                message=f"source {self.config.name}: {exc.message}",
                field=exc.field,
                server_event_id=_short(data.get("server_event_id")),
                token=_short(data.get("token")),
                referee_identity=_short(data.get("referee_identity")),
                peer=f"source {self.config.name}",
                body=body.encode()[:BODY_KEPT_BYTES],
            )

    def _failed(self, exc: Exception) -> None:
        reason = exc.reason if isinstance(exc, SourceError) else "outbox"
        first = not self.state.failing
        self.state.failed(time.time(), reason, str(exc))
        self._metrics.source_polls.labels(self.config.name, reason).inc()
        if first:
            log.error("source.failing", source=self.config.name, reason=reason, error=str(exc))


def _found(
    made: list[Event | Rejection], cursor: str | None, rows: int, *, full: bool = False
) -> Found:
    events = [m for m in made if isinstance(m, Event)]
    rejected = [m for m in made if isinstance(m, Rejection)]
    return Found(events, rejected, cursor, rows, full)


def _short(value: object) -> str | None:
    return None if value is None else str(value)[:200]


async def try_once(
    config: SourceConfig, outbox: Outbox, server_ids: Sequence[str]
) -> tuple[Watcher, Found]:
    """``mmolove-relay sources try``: one read of the source, nothing stored."""
    watcher = Watcher(config, outbox, Metrics(), note=lambda _: None, server_ids=server_ids)
    try:
        return watcher, await watcher.read(time.time(), every_player=True)
    finally:
        await watcher.close()
