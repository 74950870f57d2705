"""What one answer from MMOLove means: for the event (delivered, dead, or when to retry), for
the shared circuit breaker, and for the server it belongs to (pause, resume, next probe).

Pure functions from values to a frozen ``Verdict``; the dispatcher applies it. Nothing here
awaits, reads a file or a clock, or draws a random number unless handed the means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from relay import utc
from relay.breaker import backoff_s, full_jitter
from relay.config.settings import Settings
from relay.errors import DeliveryError, PermanentDelivery, RetryableDelivery, SenderPaused
from relay.sender import Delivered
from relay.store.contract import WAITING_FOR_REGISTERED, EventRecord, Outcome

# A measured skew above this is corrected when signing; MMOLove's window is ±300 s.
SKEW_CORRECTION_S = 30.0

# MMOLove answered (a verdict on the event, or a pause that is our fault, not its): the
# circuit closes. It failed or was not reached: the failure counts toward opening it.
BreakerMove = Literal["success", "failure"]


@dataclass(frozen=True, slots=True)
class Timing:
    """The settings a verdict depends on."""

    backoff_base_s: float
    backoff_cap_s: float
    retry_after_cap_s: float
    pause_probe_s: float
    max_age_s: float

    @classmethod
    def of(cls, settings: Settings) -> Timing:
        return cls(
            backoff_base_s=settings.backoff_base_s,
            backoff_cap_s=settings.backoff_cap_s,
            retry_after_cap_s=settings.retry_after_cap_s,
            pause_probe_s=settings.pause_probe_s,
            max_age_s=settings.max_age_s,
        )


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the verdict needs of the event's server as the attempt ended."""

    probing: bool = False  # the attempt was the probe of a paused server
    paused: bool = False
    clock_offset_s: float = 0.0  # what signing adds to our clock now


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop sending for the server: why, when to probe, and what may fix it by itself."""

    reason: str
    probe_at: float
    clock_offset_s: float | None = None  # sign with MMOLove's time from now on
    # A 401 the clock does not explain: the secret file may have changed under us.
    reread_secret: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt decided; ``outcome.next_attempt_at`` is the retry time when pending."""

    outcome: Outcome
    breaker: BreakerMove
    breaker_hold_s: float | None = None  # a Retry-After (capped) holding the circuit open
    resume: bool = False  # the paused server's probe got a verdict: send again
    pause: Pause | None = None
    probe_at: float | None = None  # a failed probe: when the paused server is probed next
    last_error: str | None = None  # what the server view shows; None when delivered


def verdict(
    result: Delivered | DeliveryError,
    record: EventRecord,
    server: ServerFacts,
    timing: Timing,
    now: float,
    *,
    jitter: Callable[[float], float] = full_jitter,
) -> Verdict:
    """The verdict on one attempt; ``now`` is its end (backoff must not be eaten by a
    15 s timeout), ``jitter`` maps a backoff ceiling to the delay actually waited."""
    # Any verdict on the event means the signature and endpoint work again.
    resume = server.probing and server.paused
    if isinstance(result, Delivered):
        delivered = Outcome(
            status="delivered",
            outcome=result.outcome,
            http_status=result.http_status,
            response=result.response,
            referral_id=result.referral_id,
            state=result.state,
        )
        return Verdict(delivered, "success", resume=resume)
    error = str(result)
    if isinstance(result, PermanentDelivery):
        dead = Outcome(
            status="dead",
            outcome=result.reason,
            error=error,
            http_status=result.http_status,
            response=result.response or None,
        )
        return Verdict(dead, "success", resume=resume, last_error=error)
    if isinstance(result, SenderPaused):
        # The pause holds the event back; a probe or a reload may take it any time.
        held = _retry(result, record, timing, now)
        return Verdict(held, "success", pause=pause(result, server, timing, now), last_error=error)
    retry_after = result.retry_after_s if isinstance(result, RetryableDelivery) else None
    if retry_after is not None:
        # Honoured, but a Retry-After of days must not stall the relay for days.
        retry_after = min(retry_after, timing.retry_after_cap_s)
    delay = backoff_s(
        record.attempts, base_s=timing.backoff_base_s, cap_s=timing.backoff_cap_s, jitter=jitter
    )
    retry_at = now + max(delay, retry_after or 0.0)
    return Verdict(
        _retry(result, record, timing, retry_at),
        "failure",
        breaker_hold_s=retry_after,
        probe_at=now + timing.pause_probe_s if server.probing else None,
        last_error=error,
    )


def _retry(error: DeliveryError, record: EventRecord, timing: Timing, at: float) -> Outcome:
    return Outcome(
        status="pending",
        outcome=error.reason,
        error=str(error),
        next_attempt_at=min(at, record.age_from + timing.max_age_s),
        http_status=error.http_status,
        response=error.response or None,
    )


def pause(error: SenderPaused, server: ServerFacts, timing: Timing, now: float) -> Pause:
    """Why the server stops, and the probe that may resume it."""
    skew = error.clock_skew_s
    if skew is not None and abs(skew - server.clock_offset_s) >= SKEW_CORRECTION_S:
        # A wrong clock is the one 401 cause the relay can fix by itself: sign with
        # MMOLove's time from now on, and probe straight away.
        reason = f"{error}; MMOLove's clock is {skew:+.0f} s from ours, now signing with its time"
        return Pause(reason, now, clock_offset_s=round(skew))
    reread = error.reason == "unauthorized"
    return Pause(str(error), now + timing.pause_probe_s, reread_secret=reread)


def secret_reread(paused: Pause, now: float, *, changed: bool, failure: str | None) -> Pause:
    """The pause once the secret file was read again: probe at once if it changed."""
    if failure is not None:
        return replace(paused, reason=f"{paused.reason}; re-reading the secret failed: {failure}")
    if changed:
        reason = f"{paused.reason}; the secret file changed, probing with the new secret"
        return replace(paused, reason=reason, probe_at=now)
    reason = (
        f"{paused.reason}; check the secret (and kid) for this server on MMOLove's "
        "dashboard, fix it and send SIGHUP"
    )
    return replace(paused, reason=reason)


def may_have_overtaken(record: EventRecord, outcome: Outcome) -> bool:
    """A qualified or reversed refused as illegal may only have overtaken its registered
    (two code paths in the game server race)."""
    return (
        outcome.outcome == "illegal_transition" and record.event != "registered" and not record.test
    )


def hold_for_registered(
    record: EventRecord,
    outcome: Outcome,
    *,
    registered_delivered_at: float | None,
    started: float,
    now: float,
    max_age_s: float,
) -> Outcome:
    """Keep an event that may have overtaken its registered until one is delivered for its
    token; it is dead-lettered as orphaned only when max_age_s runs out."""
    if registered_delivered_at is not None and registered_delivered_at < started:
        return outcome  # MMOLove had the registered already: really illegal
    expires_at = record.age_from + max_age_s
    error = (
        f"MMOLove refused this {record.event} as an illegal transition ({outcome.error}), "
        f"and no registered for token {record.token} had been delivered: waiting for one; "
        "it is sent again as soon as one is, and dead-lettered as orphaned at "
        f"{utc.stamp(expires_at)} (max_age_s)"
    )
    return replace(
        outcome,
        status="pending",
        outcome=WAITING_FOR_REGISTERED,
        error=error,
        # A registered delivered while this one was on its way: try again at once.
        next_attempt_at=now if registered_delivered_at is not None else expires_at,
    )
