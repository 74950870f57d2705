"""One breaker, one set of pauses and one send rate for a fleet of relays on one outbox.

Every ``SYNC_S`` each replica publishes, through the outbox, what it decided itself (its
circuit open until when, the servers it paused and why) and follows what the others
decided: a circuit opened elsewhere holds here until the same moment; a server paused
elsewhere is paused here too, without probes of its own, so the replica that paused it is
the only one probing and N replicas probe MMOLove like one; and ``max_send_rate_per_s`` is
divided among the live replicas. A replica that stops publishing (killed, or cut off from
the database) drops out after ``FLEET_STALE_S``, and its pauses with it. On SQLite the fleet
is one relay and nothing changes.

Per replica still: the breaker's count of failures in a row (each replica opens on its own
``breaker_failures``, the others then follow), the clock offset a 401 taught it, the
pacer's burst, and the drain on shutdown.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import structlog

from relay.dispatcher import Dispatcher
from relay.errors import OutboxDown, OutboxError
from relay.store.contract import FleetState, Outbox

log = structlog.get_logger("relay.fleet")

SYNC_S = 1.0
_ELSEWHERE = " (paused by another replica of the fleet, which probes)"


class FleetSync:
    """Keeps one dispatcher in step with the rest of the fleet."""

    def __init__(
        self, outbox: Outbox, dispatcher: Dispatcher, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._outbox = outbox
        self._dispatcher = dispatcher
        self._clock = clock
        self._adopted_open_until: float | None = None
        self._adopted_pauses: set[str] = set()
        self.replicas = 1

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except OutboxDown:
                pass  # the database is away, logged once by the outbox: keep our own decisions
            except OutboxError as exc:
                log.warning("fleet.sync_failed", error=str(exc))
            await asyncio.sleep(SYNC_S)

    async def sync_once(self) -> None:
        now = self._clock()
        d = self._dispatcher
        breaker = d.breaker
        own_open = breaker.open_until if breaker.open_until != self._adopted_open_until else None
        mine = FleetState(
            circuit_open_until=own_open,
            paused=tuple(
                (server_id, state.paused_reason)
                for server_id, state in d.servers.items()
                if state.paused_reason and server_id not in self._adopted_pauses
            ),
        )
        fleet = await self._outbox.share(mine, now)
        until = fleet.circuit_open_until
        if until is not None and until > now and (breaker.open_until or 0.0) < until:
            # A little past the other's moment, so its probe goes first and, if it fails,
            # its longer cool-down reaches us before we probe too.
            until += 2 * SYNC_S
            breaker.hold_open(until)
            self._adopted_open_until = until
            log.info("fleet.circuit_held_open", reopen_in_s=round(until - now, 1))
        self._follow_pauses(dict(fleet.paused))
        if fleet.replicas != self.replicas:
            log.info("fleet.replicas", live=fleet.replicas)
            self.replicas = fleet.replicas
        d.share_rate(fleet.replicas)

    def _follow_pauses(self, paused_elsewhere: dict[str, str]) -> None:
        for server_id, state in self._dispatcher.servers.items():
            reason = paused_elsewhere.get(server_id)
            if reason is not None and state.paused_reason is None:
                state.paused_reason = reason + _ELSEWHERE
                state.probe_at = math.inf  # the replica that paused it probes
                self._adopted_pauses.add(server_id)
                log.warning("fleet.server_paused", server_id=server_id, reason=reason)
            elif reason is None and server_id in self._adopted_pauses:
                self._adopted_pauses.discard(server_id)
                if state.paused_reason and state.paused_reason.endswith(_ELSEWHERE):
                    state.paused_reason = None
                    log.info("fleet.server_resumed", server_id=server_id)
                    self._dispatcher.wake()
