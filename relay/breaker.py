"""What limits the pressure on MMOLove: per-event backoff, the shared circuit breaker, and
pacing of attempt starts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from relay.snapshot import BreakerState

log = structlog.get_logger("relay.dispatcher")


def full_jitter(ceiling_s: float) -> float:
    """A delay uniform in [0, ceiling]: retries of many events spread instead of bunching."""
    return random.uniform(0, ceiling_s)


def backoff_s(
    attempts: int,
    *,
    base_s: float,
    cap_s: float,
    jitter: Callable[[float], float] = full_jitter,
) -> float:
    """Exponential backoff with jitter: by default uniform in [0, min(cap, base·2^(attempts-1))]."""
    return jitter(min(cap_s, base_s * 2 ** max(0, attempts - 1)))


class Breaker:
    """One circuit for the upstream shared by every server, so an outage costs probes.

    Closed: send freely. After ``failures`` retryable failures in a row it opens for a
    cool-down that doubles with each failed probe (capped); then one probe goes through
    (half-open) and its answer closes or re-opens the circuit. A ``Retry-After`` on 429 or
    503 holds the circuit open at least that long, up to ``retry_after_cap_s``: MMOLove
    asked the whole client to wait, but one answer must not halt every event for an hour.
    """

    def __init__(
        self, *, failures: int, cooldown_s: float, cap_s: float, retry_after_cap_s: float
    ) -> None:
        self._threshold = failures
        self._base_s = cooldown_s
        self._cap_s = cap_s
        self._retry_after_cap_s = retry_after_cap_s
        self._failures = 0
        self._cooldown_s = cooldown_s
        self.open_until: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        if self.open_until is None:
            return "closed"
        return "half_open" if self._probing else "open"

    @property
    def reopens_at(self) -> float | None:
        """When the open circuit lets its probe through; None unless it is open."""
        return self.open_until if self.state == "open" else None

    def allowance(self, now: float, wanted: int) -> int:
        """How many attempts may start now (0 while open; 1 probe once the cool-down ends)."""
        if self.open_until is None:
            return wanted
        if self._probing or now < self.open_until:
            return 0
        self._probing = True
        return min(wanted, 1)

    def success(self) -> None:
        if self.open_until is not None:
            log.info("breaker.closed")
        self._failures = 0
        self._cooldown_s = self._base_s
        self.open_until = None
        self._probing = False

    def failure(self, now: float, retry_after_s: float | None = None) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold or retry_after_s:
            if self._probing:
                self._cooldown_s = min(self._cap_s, self._cooldown_s * 2)
            hold_s = max(self._cooldown_s, min(retry_after_s or 0.0, self._retry_after_cap_s))
            self.open_until = now + hold_s
            self._probing = False
            log.warning("breaker.opened", failures=self._failures, reopen_in_s=round(hold_s, 1))

    def hold_open(self, until: float) -> None:
        """Another replica of the fleet opened the circuit: stay open (no probe) until then."""
        if self.open_until is None or self.open_until < until:
            self.open_until = until

    def release_probe(self) -> None:
        """A probe ended without an answer about MMOLove's health (e.g. shutdown)."""
        self._probing = False


@dataclass
class Pacer:
    """Spaces out attempt starts so a recovering upstream sees a bounded rate, not a flood."""

    rate_per_s: float
    burst: int
    _next: float = field(default=0.0)

    async def wait(self) -> None:
        now = time.monotonic()
        interval = 1.0 / self.rate_per_s
        self._next = max(self._next, now - interval * (self.burst - 1))
        delay = self._next - now
        self._next += interval
        if delay > 0:
            await asyncio.sleep(delay)
