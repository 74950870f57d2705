"""Alert rules: conditions over the delivery state and the outbox, and their state machine.

Evaluated on a timer. A condition fires once when it starts (or has lasted long enough),
reminds at most every ``alert_reminder_s``, and resolves only after it has stayed clear for
``alert_resolve_after_s``, so a flapping condition sends one message, not twenty. Firing
conditions are kept in the outbox, so a restart mid-incident is not a new incident.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import structlog
from aiohttp import web

from relay import utc
from relay.alerts.targets import Message, quoted
from relay.config.settings import Settings
from relay.errors import OutboxDown, OutboxError
from relay.snapshot import DeliverySnapshot, Live
from relay.sources.state import SourceState
from relay.store.contract import Outbox
from relay.store.contract_records import AlertState

log = structlog.get_logger("relay.alerts")

# New dead events are told once deaths pause for DEAD_QUIET_S (a burst is one message), or
# at the latest DEAD_BATCH_S after the first untold one (a steady trickle still is told).
DEAD_QUIET_S = 2.0
SLOW_EVERY = 5  # rounds between reads of the outbox and the disk
DEAD_BATCH_S = 30.0
_DEAD_MARK = "dead_finished_at"


@dataclass(frozen=True, slots=True)
class Observation:
    """One condition as seen now; it fires once active for ``after_s``."""

    key: str
    active: bool
    cause: str = ""
    command: str = "mmolove-relay status"
    after_s: float = 0.0


class Rules:
    """Watches and decides; ``send`` queues a message to the targets and returns at once."""

    def __init__(
        self,
        outbox: Outbox,
        delivery_state: Callable[[], DeliverySnapshot],
        live: Live,
        send: Callable[[Message], None],
        *,
        clock: Callable[[], float] = time.time,
        sources: Sequence[SourceState] = (),
    ) -> None:
        self._outbox = outbox
        self._sources = sources  # the watchers' live states: read, never changed
        self._state = delivery_state
        self._live = live
        self._send = send
        self._clock = clock
        self._host = socket.gethostname()
        self.firing: dict[str, AlertState] = {}
        self._active_since: dict[str, float] = {}
        self._clear_since: dict[str, float] = {}
        self._dead_seen_at: float | None = None  # when untold dead events were first seen
        self._rounds = 0
        self._slow: list[Observation] = []

    @property
    def _s(self) -> Settings:
        """The settings in force now: SIGHUP replaces them while the relay runs."""
        return self._live.settings

    async def run(self) -> None:
        """Load the firing conditions, then evaluate every ``alert_every_s`` until cancelled."""
        self.firing = await self._outbox.records.alert_states()
        while True:
            try:
                await self.evaluate()
            except OutboxDown:
                pass  # logged once by the outbox; the next round may read fine
            except OutboxError as exc:  # the next round may read fine
                log.error("alert.rules_failed", error=str(exc))
            await asyncio.sleep(self._s.alert_every_s)

    async def evaluate(self) -> None:
        now = self._clock()
        # The dispatcher's state is in memory and read every round (a pause alerts within
        # seconds); what needs the outbox or the disk is read every SLOW_EVERY rounds, so
        # the reader connection delivery also uses stays nearly idle.
        if self._rounds % SLOW_EVERY == 0:
            self._slow = await self._observe_outbox(now)
            await self._dead(now)
        self._rounds += 1
        seen = {o.key: o for o in [*self._observe_delivery(), *self._slow]}
        for key in seen.keys() | self.firing.keys():
            await self._step(seen.get(key, Observation(key, active=False)), now)

    def _observe_delivery(self) -> list[Observation]:
        s = self._s
        view = self._state()
        found = [
            Observation(
                f"paused:{server}",
                server in view.paused,
                # The reason quotes MMOLove's answer, or whatever answered in its place.
                f"deliveries for MMOLove server {server} are paused and its referrals held: "
                f"{quoted(view.paused.get(server) or '')}",
                "mmolove-relay status; fix the secret, then: systemctl reload mmolove-relay",
            )
            for server in (s.server_id for s in view.servers)
        ]
        found += [
            Observation(
                f"source:{source.name}",
                source.failing,
                f"source {source.name} has failed to poll for over {_span(s.alert_after_s)}: "
                f"{quoted(source.last_error or '')}",
                "mmolove-relay sources",
                after_s=s.alert_after_s,
            )
            for source in self._sources
        ]
        found.append(
            Observation(
                "circuit",
                view.mmolove_failing,
                f"the circuit to MMOLove has been open for over {_span(s.alert_after_s)}: "
                "MMOLove is failing or unreachable, events wait in the outbox",
                after_s=s.alert_after_s,
            )
        )
        return found

    async def _observe_outbox(self, now: float) -> list[Observation]:
        s, outbox = self._s, self._outbox
        found = []
        oldest = await outbox.oldest_pending_created()
        age = now - oldest if oldest is not None else 0.0
        found.append(
            Observation(
                "backlog",
                age > s.alert_pending_age_s,
                f"the oldest pending event is {_span(age)} old (alerting above "
                f"{_span(s.alert_pending_age_s)})",
            )
        )
        window = s.alert_rejected_window_s
        rejected = await outbox.records.count_rejections(now - window)
        found.append(
            Observation(
                "rejected",
                rejected >= s.alert_rejected_count,
                f"ingest rejected {rejected} inputs in the last {_span(window)}: the game "
                "server is probably sending malformed events",
                f"mmolove-relay rejected --since {int(window)}s",
            )
        )
        free = await outbox.disk_free_bytes()
        if free is not None:  # None on PostgreSQL: the database server minds its own disk
            found.append(
                Observation(
                    "disk",
                    free < 2 * s.min_free_bytes,
                    f"the disk holding the outbox has {free} bytes free; below "
                    f"{s.min_free_bytes} ingest answers 503",
                    "df -h; mmolove-relay purge --delivered --older-than 1d",
                )
            )
        if s.max_outbox_bytes:
            size = outbox.size_bytes()
            found.append(
                Observation(
                    "outbox_full",
                    size >= 0.9 * s.max_outbox_bytes,
                    f"the outbox holds {size} bytes of its max_outbox_bytes "
                    f"{s.max_outbox_bytes}; at the cap ingest answers 503",
                    "mmolove-relay status; mmolove-relay purge --delivered --older-than 1d",
                )
            )
        return found

    async def _step(self, o: Observation, now: float) -> None:
        state = self.firing.get(o.key)
        if o.active:
            self._clear_since.pop(o.key, None)
            since = self._active_since.setdefault(o.key, now)
            if state is None and now - since >= o.after_s:
                text = f"{o.cause}. Since {utc.stamp(since)}. Run: `{o.command}`"
                state = AlertState(o.key, since, now, text)
                await self._outbox.records.save_alert(state)
                self.firing[o.key] = state
                self._tell(o.key, "firing", "🔴", text, since, now)
            elif state is not None and now - state.last_sent >= self._s.alert_reminder_s:
                state = replace(state, last_sent=now)
                await self._outbox.records.save_alert(state)
                self.firing[o.key] = state
                text = f"still firing, for {_span(now - state.since)}: {state.summary}"
                self._tell(o.key, "reminder", "🔴", text, state.since, now)
            return
        self._active_since.pop(o.key, None)
        if state is None:
            return
        clear = self._clear_since.setdefault(o.key, now)
        if now - clear >= self._s.alert_resolve_after_s:
            await self._outbox.records.clear_alert(o.key)
            del self.firing[o.key]
            self._clear_since.pop(o.key, None)
            text = f"resolved after {_span(clear - state.since)}: {state.summary}"
            self._tell(o.key, "resolved", "✅", text, state.since, now)

    async def _dead(self, now: float) -> None:
        """New dead events, told in batches (see ``DEAD_QUIET_S``)."""
        mark = await self._outbox.records.mark(_DEAD_MARK) or 0.0
        died = await self._outbox.records.dead_since(mark)
        if not died:
            self._dead_seen_at = None
            return
        first_seen = self._dead_seen_at = self._dead_seen_at or now
        latest = max(d.latest for d in died)
        if now - latest < DEAD_QUIET_S and now - first_seen < DEAD_BATCH_S:
            return
        total = sum(d.count for d in died)
        reasons = ", ".join(f"{d.outcome} \u00d7{d.count}" for d in died)
        text = (
            f"{total} event{'s' if total != 1 else ''} died, {reasons}: "
            "`mmolove-relay events list --status dead`"
        )
        await self._outbox.records.set_mark(_DEAD_MARK, latest)
        self._dead_seen_at = None
        self._tell("dead", "firing", "💀", text, None, now)

    def _tell(
        self, key: str, status: str, icon: str, text: str, since: float | None, now: float
    ) -> None:
        text = f"{icon} mmolove-relay on {self._host}: {text}"
        log.warning("alert.transition", alert=key, status=status)
        self._send(Message(key=key, status=status, text=text, since=since, at=now))


RULES = web.AppKey("alert_rules", Rules)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
