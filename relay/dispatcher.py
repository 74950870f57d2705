"""Claim → sign → send → record: the delivery loop, its circuit breaker and per-server pauses.

Retries live in the outbox (``next_attempt_at``), not in memory, so a restart resumes the
same schedule; this module decides when to claim and how many at once. What each answer
means is ``policy``'s verdict, which the dispatcher applies to the breaker, the server
(``servers``) and the event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from relay import policy
from relay.breaker import Breaker, Pacer, full_jitter
from relay.config.settings import Settings
from relay.config.values import ServerConfig
from relay.errors import DeliveryError, OutboxDown, OutboxError, RetryableDelivery
from relay.metrics import Metrics
from relay.sender import Delivered, Sender
from relay.servers import ServerState
from relay.signing import signature_header
from relay.snapshot import DeliverySnapshot, Live
from relay.store.contract import Attempt, EventRecord, Outbox, Outcome

log = structlog.get_logger("relay.dispatcher")

_IDLE_WAIT_S = 30.0  # re-check the outbox at least this often, in case a wake-up was missed
_OUTBOX_RETRY_S = 2.0


class Dispatcher:
    """Owns every delivery task; ``run`` until ``stop`` is set, then drains within budget."""

    def __init__(
        self,
        outbox: Outbox,
        sender: Sender,
        live: Live,
        *,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[float], float] = full_jitter,
    ) -> None:
        self._outbox = outbox
        self._metrics = metrics
        self._sender = sender
        self._live = live
        self._clock = clock
        self._jitter = jitter
        settings = live.settings
        self.servers = {s.server_id: ServerState(s) for s in settings.servers}
        self.breaker = Breaker(
            failures=settings.breaker_failures,
            cooldown_s=settings.breaker_cooldown_s,
            cap_s=max(settings.backoff_cap_s, settings.breaker_cooldown_s),
            retry_after_cap_s=settings.breaker_retry_after_cap_s,
        )
        self._pacer = Pacer(settings.max_send_rate_per_s, burst=settings.concurrency)
        self._tasks: dict[asyncio.Task[None], EventRecord] = {}
        # Tasks whose answer is in and only their outcome is being written: their slot is
        # free already, so the next claim is queued beside that write.
        self._finishing = 0
        self._wake = asyncio.Event()

    def reload(self, servers: Sequence[ServerConfig]) -> None:
        """Take new secrets and kids, new servers and removed ones; every paused server is
        probed at once. A removed server is sent nothing more; its events are held."""
        kept = {config.server_id for config in servers}
        for known in self.servers.values():
            known.removed = known.config.server_id not in kept
        for config in servers:
            state = self.servers.get(config.server_id)
            if state is None:
                self.servers[config.server_id] = ServerState(config)
                continue
            state.config = config
            if state.paused_reason:
                state.probe_at = 0.0
        self._wake.set()

    def share_rate(self, replicas: int) -> None:
        """Take this replica's share of ``max_send_rate_per_s``; the fleet's total stays it."""
        self._pacer.rate_per_s = self._settings.max_send_rate_per_s / max(1, replicas)

    def wake(self) -> None:
        self._wake.set()

    def snapshot(self) -> DeliverySnapshot:
        """What observers may know of delivery right now."""
        circuit, open_until = self.breaker.state, self.breaker.open_until
        return DeliverySnapshot(
            circuit=circuit,
            circuit_open_until=open_until,
            in_flight=len(self._tasks),
            draining=self._live.draining,
            servers=tuple(s.snapshot(circuit, open_until) for s in self.servers.values()),
        )

    @property
    def _settings(self) -> Settings:
        return self._live.settings

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and send until ``stop``; then let in-flight attempts finish or cancel them."""
        stop_wait = asyncio.create_task(stop.wait(), name="dispatcher-stop")
        try:
            while not stop.is_set():
                try:
                    timeout = await self._dispatch_once()
                except OutboxError as exc:
                    # Disk full or locked for a moment: keep the daemon, try again shortly.
                    if not isinstance(exc, OutboxDown):  # logged once by the outbox
                        log.error(
                            "dispatcher.outbox_error", error=str(exc), retry_in_s=_OUTBOX_RETRY_S
                        )
                    timeout = _OUTBOX_RETRY_S
                await self._sleep(timeout, stop_wait)
        finally:
            stop_wait.cancel()
            await self._drain()

    async def _dispatch_once(self) -> float:
        """Start what may start now; returns how long to sleep unless woken earlier."""
        self._wake.clear()
        self._outbox.new_events.clear()
        now = self._clock()
        s = self._settings
        free = s.concurrency - self._sending
        if free <= 0:
            return _IDLE_WAIT_S
        if not await self._outbox.can_deliver():
            # The disk is full: an attempt started now could not record its outcome, and
            # would be sent again after its lease.
            return _OUTBOX_RETRY_S
        active = [
            sid for sid, st in self.servers.items() if not st.paused_reason and not st.removed
        ]
        claimed = await self._claim_probes(now, free)
        free -= len(claimed)
        allowed = self.breaker.allowance(now, free) if free else 0
        if allowed:
            batch = await self._outbox.claim(
                now, allowed, servers=active, lease_s=self._lease_s, max_age_s=s.max_age_s
            )
            if len(batch) < allowed and self.breaker.state == "half_open":
                self.breaker.release_probe()
            claimed += batch
        for record in claimed:
            await self._pacer.wait()
            task = asyncio.create_task(self._attempt(record), name=f"deliver-{record.id}")
            self._tasks[task] = record
            task.add_done_callback(self._task_done)
        if self._sending >= s.concurrency:
            return _IDLE_WAIT_S  # nothing can start before a send ends, and that wakes us
        if claimed:
            return 0.0  # there may be more due right now
        return await self._time_to_next(now, active)

    async def _claim_probes(self, now: float, free: int) -> list[EventRecord]:
        """One event for each paused server whose probe time has come."""
        probes: list[EventRecord] = []
        for state in self.servers.values():
            due = (
                state.paused_reason
                and not state.removed
                and not state.probing
                and state.probe_at <= now
            )
            if not due or len(probes) >= free or not self.breaker.allowance(now, 1):
                continue
            claimed = await self._outbox.claim(
                now,
                1,
                servers=[state.config.server_id],
                lease_s=self._lease_s,
                max_age_s=self._settings.max_age_s,
            )
            if claimed:
                state.probing = True
                probes += claimed
            else:
                # Nothing to probe with: look again later rather than spin on an empty claim.
                state.probe_at = now + self._settings.pause_probe_s
                self.breaker.release_probe()
        return probes

    async def _time_to_next(self, now: float, active: list[str]) -> float:
        """Seconds until something can start: a due event, the breaker's probe, a pause probe.

        While the breaker is half-open nothing else may start, so only the probe's end
        (a task-done wake-up) matters; counting due events then would spin the loop.
        """
        moments = [now + _IDLE_WAIT_S]
        if self.breaker.state == "open" and self.breaker.open_until is not None:
            moments.append(self.breaker.open_until)
        elif self.breaker.state == "closed":
            due = await self._outbox.next_due(active)
            if due is not None:
                moments.append(due)
            moments += [
                st.probe_at
                for st in self.servers.values()
                if st.paused_reason and not st.probing and not st.removed
            ]
        return max(0.0, min(moments) - now)

    async def _sleep(self, seconds: float, stop_wait: asyncio.Task[bool]) -> None:
        if seconds <= 0 or stop_wait.done():
            return
        waiters = [
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._outbox.new_events.wait()),
        ]
        try:
            await asyncio.wait(
                [*waiters, stop_wait], timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        record = self._tasks.pop(task, None)
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The row stays in flight until its lease runs out; housekeeping then requeues it.
            log.error("delivery.crashed", outbox_id=record.id if record else None, error=repr(exc))

    async def _drain(self) -> None:
        if not self._tasks:
            return
        log.info(
            "dispatcher.draining",
            in_flight=len(self._tasks),
            budget_s=self._settings.drain_timeout_s,
        )
        _, pending = await asyncio.wait(list(self._tasks), timeout=self._settings.drain_timeout_s)
        leftover = [self._tasks[t] for t in pending if t in self._tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if leftover:
            # Their request may have reached MMOLove; resending the same bytes is deduplicated.
            await self._outbox.release(leftover, self._clock())
            log.warning("dispatcher.drain_timeout", released=len(leftover))

    @property
    def _sending(self) -> int:
        return len(self._tasks) - self._finishing

    @property
    def _lease_s(self) -> float:
        return self._settings.send_timeout_s * 2 + self._settings.drain_timeout_s

    async def _attempt(self, record: EventRecord) -> None:
        state = self.servers[record.server_id]
        if state.removed:
            # A reload removed the server while this event waited for the pacer: hold it.
            state.probing = False
            self.breaker.release_probe()
            await self._outbox.release([record], self._clock())
            return
        started, t0 = self._clock(), time.monotonic()
        try:
            result = await self._send(record, state, started)
        except asyncio.CancelledError:
            # Shutdown cut the attempt short: it proves nothing about MMOLove or the server.
            if state.probing:
                state.probing = False
            self.breaker.release_probe()
            raise
        latency_ms = (time.monotonic() - t0) * 1000
        # Backoff counts from the end of the attempt: a 15 s timeout must not eat it.
        now = self._clock()
        timing = policy.Timing.of(self._settings)
        verdict = policy.verdict(result, record, state.facts, timing, now, jitter=self._jitter)
        if verdict.breaker == "success":
            self.breaker.success()
        else:
            self.breaker.failure(now, verdict.breaker_hold_s)
        await state.apply(verdict, now)
        outcome = verdict.outcome
        if policy.may_have_overtaken(record, outcome):
            delivered_at = await self._outbox.registered_delivered_at(
                record.server_id, record.token
            )
            outcome = policy.hold_for_registered(
                record,
                outcome,
                registered_delivered_at=delivered_at,
                started=started,
                now=self._clock(),
                max_age_s=timing.max_age_s,
            )
        label = outcome.outcome or outcome.status
        detail = result.response if isinstance(result, Delivered) else str(result)
        attempt = Attempt(
            event_id=record.id,
            started_at=started,
            duration_ms=round(latency_ms, 2),
            http_status=result.http_status,
            outcome=label,
            detail=detail,
        )
        self._finishing += 1
        self._wake.set()
        try:
            if not await self._save(record, outcome, attempt):
                return
        finally:
            self._finishing -= 1
        self._metrics.attempt(
            record.server_id,
            label,
            delivered=outcome.status == "delivered",
            seconds=latency_ms / 1000,
        )
        bound = log.bind(
            outbox_id=record.id,
            server_id=record.server_id,
            event_type=record.event,
            server_event_id=record.server_event_id,
            attempt=record.attempts,
            status=result.http_status,
            outcome=label,
            latency_ms=round(latency_ms, 1),
        )
        if outcome.status == "delivered":
            bound.info("delivery.delivered", referral_id=outcome.referral_id)
        elif outcome.status == "dead":
            bound.warning("delivery.dead_lettered", error=outcome.error)
        else:
            retry_in_s = round(outcome.next_attempt_at - self._clock(), 2)
            bound.info("delivery.retry_scheduled", error=outcome.error, retry_in_s=retry_in_s)

    async def _save(self, record: EventRecord, outcome: Outcome, attempt: Attempt) -> bool:
        """Record the attempt's outcome, retrying while the outbox refuses writes (disk full,
        locked) until the event's lease ends; False if it never could.

        Giving up leaves the row in flight; once its lease has run out the next claim makes
        it pending again and it is resent, which MMOLove deduplicates.
        """
        while True:
            try:
                await self._outbox.finish(record, outcome, attempt)
                return True
            except OutboxError as exc:
                left_s = record.next_attempt_at - self._clock()
                log.error(
                    "delivery.outcome_not_saved",
                    outbox_id=record.id,
                    error=str(exc),
                    retry_in_s=_OUTBOX_RETRY_S if left_s > _OUTBOX_RETRY_S else None,
                )
                if left_s <= _OUTBOX_RETRY_S:
                    # Ending with the lease wakes the dispatcher just as the row can be reclaimed.
                    await asyncio.sleep(max(0.0, left_s))
                    return False
                await asyncio.sleep(_OUTBOX_RETRY_S)

    async def _send(
        self, record: EventRecord, state: ServerState, now: float
    ) -> Delivered | DeliveryError:
        """Sign with a fresh t and post once; every failure comes back as a DeliveryError."""
        try:
            t = int(now + state.clock_offset_s)
            header = signature_header(
                record.body, state.config.secret.reveal(), t, state.config.kid
            )
            return await self._sender.deliver(record.body, header)
        except DeliveryError as exc:
            return exc
        except Exception as exc:
            # A bug must cost one retry, not the dispatcher (and never leave a probe stuck).
            log.exception("delivery.crashed", outbox_id=record.id)
            return RetryableDelivery("internal", f"the relay failed to send: {exc!r}")
