"""What the relay's parts share while it runs: the live settings and draining flag (``Live``),
and the frozen ``DeliverySnapshot`` that status, readiness, metrics and the CLI read.

The dispatcher makes snapshots; nobody reads its internals. JSON is made at the HTTP edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from relay.config.settings import Settings
from relay.errors import OutboxUnavailable

# The breaker's states (relay.breaker), here so the CLI can name them without importing the
# breaker and, with it, asyncio and structlog (they doubled `--help`'s start-up).
# closed: send freely; open: send nothing until the cool-down ends; half_open: one probe is out.
BreakerState = Literal["closed", "open", "half_open"]
TRIPPED: tuple[BreakerState, ...] = ("open", "half_open")  # MMOLove is failing

# A server's delivery state as an operator needs to know it.
Sending = Literal["delivering", "circuit_open", "paused", "held", "stopped"]
DELIVERING: Final = "delivering"  # its due events are sent
CIRCUIT_OPEN: Final = "circuit_open"  # MMOLove is failing: nothing is sent until it reopens
PAUSED: Final = "paused"  # its credentials or endpoint are wrong: only a probe now and then
HELD: Final = "held"  # not in the configuration: its events wait until it is added back
STOPPED: Final = "stopped"  # read from the outbox file alone: the daemon is not running
# The circuit as the outbox file alone tells it.
CIRCUIT_UNKNOWN: Final = "unknown (daemon not running)"
NOT_CONFIGURED = (
    "not in the configuration; its events are held, not sent. Add it back (and send SIGHUP) "
    "to deliver them, or purge them."
)
DRAINING_RETRY_AFTER_S = 2


class Live:
    """The one copy of what may change while the relay runs.

    ``settings`` is replaced whole on SIGHUP and read where used, so no part keeps a stale
    copy; ``draining`` is set once at shutdown, after which ingest answers 503.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.draining = False

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise OutboxUnavailable(
                "the relay is shutting down; send again in a few seconds "
                "(it, or the instance replacing it, will take the event).",
                retry_after_s=DRAINING_RETRY_AFTER_S,
            )


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """One MMOLove server as delivery sees it now.

    ``next_attempt_at`` is set when something other than its events' due times decides the
    next send: the probe of a paused server, or the circuit's reopening.
    """

    server_id: str
    state: Sending
    reason: str | None = None
    next_attempt_at: float | None = None
    clock_offset_s: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None

    @classmethod
    def held(cls, server_id: str) -> ServerSnapshot:
        return cls(server_id, HELD, f"server {server_id} is {NOT_CONFIGURED}")


@dataclass(frozen=True, slots=True)
class DeliverySnapshot:
    """The circuit to MMOLove, the attempts in flight and every server the relay knows."""

    circuit: BreakerState | Literal["unknown (daemon not running)"]
    circuit_open_until: float | None
    in_flight: int
    draining: bool
    servers: tuple[ServerSnapshot, ...]

    @property
    def circuit_reopens_at(self) -> float | None:
        """When the open circuit lets its probe through; None unless it is open."""
        return self.circuit_open_until if self.circuit == "open" else None

    @property
    def mmolove_failing(self) -> bool:
        """The circuit is open or its probe is out: nothing but a probe is sent."""
        return self.circuit in TRIPPED

    @property
    def sending(self) -> list[str]:
        """Servers whose due events are sent (at once, or when the circuit reopens)."""
        return [s.server_id for s in self.servers if s.state in (DELIVERING, CIRCUIT_OPEN)]

    @property
    def paused(self) -> dict[str, str]:
        """Why each paused server is paused, by server id."""
        return {s.server_id: s.reason or "" for s in self.servers if s.state == PAUSED}

    def server(self, server_id: str) -> ServerSnapshot | None:
        return next((s for s in self.servers if s.server_id == server_id), None)

    def next_attempt_at(self, due: float | None) -> float | None:
        """When the relay will next send, given ``due``, the earliest due time of the
        sending servers' events: not before the circuit reopens, or a paused server's probe.
        """
        moments = [s.next_attempt_at for s in self.servers if s.state == PAUSED]
        if due is None and self.in_flight:
            # The attempt that opened the circuit is still being written back: it comes
            # due again, and nothing is sent before the circuit reopens.
            due = self.circuit_reopens_at
        if due is not None:
            if self.circuit_reopens_at is not None:
                due = max(due, self.circuit_reopens_at)  # nothing but a probe starts before
            moments.append(due)
        return min((m for m in moments if m is not None), default=None)
