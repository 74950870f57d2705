"""What the overview shows: each server's delivery state and counts, from the store and the
dispatcher's snapshot.

The snapshot and the live settings are read here and nowhere else in the console.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from relay import utc
from relay.alerts.rules import RULES
from relay.appkeys import DELIVERY_STATE, INGEST, OUTBOX
from relay.config.settings import Settings
from relay.snapshot import CIRCUIT_OPEN, DELIVERING, HELD, PAUSED, DeliverySnapshot
from relay.sources.state import SOURCES, SourceState
from relay.store.contract import STATUSES
from relay.store.contract_records import AlertState

# Counts stop here (shown as "100,000+"): exact counts of a million-event backlog take a
# scan that would blow the page's time budget; `mmolove-relay status` gives them exactly.
COUNT_CAP = 100_000


@dataclass(frozen=True)
class ServerView:
    """One MMOLove server as the overview shows it."""

    server_id: str
    state: str  # delivering, paused, circuit open, not configured
    detail: str | None  # why paused, or until when the circuit is open
    counts: Mapping[str, int]
    oldest_pending_age_s: float | None
    last_error: str | None
    last_error_at: float | None


@dataclass(frozen=True)
class Overview:
    in_flight: int
    circuit: str
    servers: tuple[ServerView, ...]
    totals: Mapping[str, int]
    sources: tuple[SourceState, ...] = ()  # the game databases watched, as they fare now


def settings(request: web.Request) -> Settings:
    """The settings in force now: SIGHUP replaces them while the relay runs."""
    return request.config_dict[INGEST].settings


def delivery_view(request: web.Request) -> DeliverySnapshot:
    """The dispatcher's state, as the player view reads it."""
    return request.config_dict[DELIVERY_STATE]()


def firing_alerts(request: web.Request) -> tuple[AlertState, ...] | None:
    """The alerts firing now, oldest first; None when no alert target is configured."""
    rules = request.config_dict.get(RULES)
    if rules is None:
        return None
    return tuple(sorted(rules.firing.values(), key=lambda a: a.since))


async def overview(request: web.Request) -> Overview:
    outbox = request.config_dict[OUTBOX]
    snapshot = request.config_dict[DELIVERY_STATE]()
    counts = await outbox.counts_up_to(COUNT_CAP)
    waiting = [
        server_id
        for server_id, by_status in counts.items()
        if by_status["pending"] + by_status["in_flight"]
    ]
    oldest = await outbox.oldest_pending_by_server(waiting)
    now = time.time()
    servers: list[ServerView] = []
    for server in snapshot.servers:
        server_id = server.server_id
        state, detail = _STATES.get(server.state, server.state), server.reason
        if server.state == CIRCUIT_OPEN:
            until = server.next_attempt_at
            detail = None if until is None else f"until {utc.stamp(until)}"
        elif server.state == DELIVERING:
            detail = None
        servers.append(
            ServerView(
                server_id,
                state,
                detail,
                counts.get(server_id, dict.fromkeys(STATUSES, 0)),
                round(now - oldest[server_id], 1) if server_id in oldest else None,
                server.last_error,
                server.last_error_at,
            )
        )
    configured = {s.server_id for s in servers}
    for server_id, by_status in counts.items():
        if server_id not in configured:
            # Its events wait until the server is configured again.
            age = round(now - oldest[server_id], 1) if server_id in oldest else None
            servers.append(
                ServerView(server_id, "not configured", None, by_status, age, None, None)
            )
    totals: dict[str, int] = {status: sum(s.counts[status] for s in servers) for status in STATUSES}
    watched: list[SourceState] = request.config_dict.get(SOURCES, [])
    sources = tuple(watched)
    return Overview(snapshot.in_flight, snapshot.circuit, tuple(servers), totals, sources)


# How each delivery state reads on the overview.
_STATES = {PAUSED: "paused", CIRCUIT_OPEN: "circuit open", HELD: "not configured"}


def count(n: int) -> str:
    return f"{COUNT_CAP:,}+" if n > COUNT_CAP else f"{n:,}"
