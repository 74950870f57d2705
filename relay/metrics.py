"""Prometheus metrics: counters the daemon bumps as it works, gauges filled in at scrape time.

Each relay has its own registry (tests run several in one process). Label values are server
ids, event types and outcome names: never a token, a player or a secret.
"""

from __future__ import annotations

from collections.abc import Mapping

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    exposition,
    generate_latest,
)

from relay.snapshot import HELD, PAUSED, DeliverySnapshot

# The *_created series (when each counter was born) only double the output here.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
CONTENT_TYPE = exposition.CONTENT_TYPE_LATEST
_PREFIX = "mmolove_relay"
# Attempt latency: MMOLove answers in milliseconds when healthy; the send timeout is 15 s.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)


class Metrics:
    """The relay's metrics; ``render`` produces the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._ingested: dict[tuple[str, str], Counter] = {}
        self.ingested = Counter(
            f"{_PREFIX}_events_ingested",
            "Events stored by ingest (duplicates not counted).",
            ["server_id", "event"],
            registry=r,
        )
        self.rejected = Counter(
            f"{_PREFIX}_ingest_rejected",
            "Inputs ingest refused with a 4xx, by error code (see mmolove-relay rejected).",
            ["code"],
            registry=r,
        )
        self.alerts = Counter(
            f"{_PREFIX}_alerts",
            "Alert messages by target kind and result (sent, failed).",
            ["kind", "result"],
            registry=r,
        )
        self.console_logins = Counter(
            f"{_PREFIX}_console_logins",
            "Console logins by result (ok, wrong_token, rate_limited, cross_origin, no_token).",
            ["result"],
            registry=r,
        )
        self.source_polls = Counter(
            f"{_PREFIX}_source_polls",
            "Polls of each [[sources]] game database, by result (ok, or how it failed).",
            ["source", "result"],
            registry=r,
        )
        self.delivered = Counter(
            f"{_PREFIX}_delivered",
            "Attempts MMOLove took, by outcome (accepted, duplicate, ignored, test).",
            ["server_id", "outcome"],
            registry=r,
        )
        self.failures = Counter(
            f"{_PREFIX}_attempt_failures",
            "Attempts that did not deliver, by reason (server_error, timeout, not_found, ...).",
            ["server_id", "reason"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            f"{_PREFIX}_attempt_duration_seconds",
            "Time from sending an event to MMOLove's answer (or the failure).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._depth = Gauge(
            f"{_PREFIX}_outbox_events",
            "Events in the outbox by server and status.",
            ["server_id", "status"],
            registry=r,
        )
        self._oldest = Gauge(
            f"{_PREFIX}_oldest_pending_age_seconds",
            "Age of the oldest undelivered event (0 when none is waiting).",
            registry=r,
        )
        self._size = Gauge(
            f"{_PREFIX}_outbox_bytes", "Size of the outbox file and its WAL.", registry=r
        )
        self._circuit = Gauge(
            f"{_PREFIX}_circuit_open",
            "1 while the circuit to MMOLove is open or half-open (MMOLove failing).",
            registry=r,
        )
        self.outbox_lost = Gauge(
            f"{_PREFIX}_outbox_file_lost",
            "1 once the outbox file was deleted or replaced under the running relay.",
            registry=r,
        )
        self._paused = Gauge(
            f"{_PREFIX}_server_paused",
            "1 while a server's deliveries are paused (401, redirect, proxy error).",
            ["server_id"],
            registry=r,
        )

    def count_ingested(self, server_id: str, event: str) -> None:
        """Count one stored event. Its labelled child is looked up once per pair: ``labels``
        takes a lock and builds a key on every call, on the path of every ingest."""
        child = self._ingested.get((server_id, event))
        if child is None:
            child = self._ingested[(server_id, event)] = self.ingested.labels(server_id, event)
        child.inc()

    def attempt(self, server_id: str, outcome: str, *, delivered: bool, seconds: float) -> None:
        """Count one finished delivery attempt."""
        self.attempt_seconds.observe(seconds)
        counter = self.delivered if delivered else self.failures
        counter.labels(server_id, outcome).inc()

    def render(
        self,
        *,
        counts: Mapping[str, Mapping[str, int]],
        oldest_pending_age_s: float | None,
        outbox_bytes: int,
        delivery: DeliverySnapshot,
    ) -> bytes:
        """Set the gauges from the outbox and dispatcher state just read, then expose all."""
        self._depth.clear()
        for server_id, by_status in counts.items():
            for status, count in by_status.items():
                self._depth.labels(server_id, status).set(count)
        self._oldest.set(oldest_pending_age_s or 0.0)
        self._size.set(outbox_bytes)
        self._circuit.set(0 if delivery.circuit == "closed" else 1)
        self._paused.clear()
        for server in delivery.servers:
            if server.state != HELD:
                self._paused.labels(server.server_id).set(1 if server.state == PAUSED else 0)
        return generate_latest(self.registry)
