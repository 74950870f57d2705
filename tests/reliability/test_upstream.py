"""MMOLove misbehaving, switched on in the sandbox: outages, 429 storms, hangs, resets, slow
bodies, redirects, an unresolvable host, an untrusted certificate and a wrong clock.

Each scenario ingests referrals into an in-process relay, turns a fault on and later off,
and hands what was acknowledged to the checker: 0 lost, 0 duplicate sends (except where
the fault strikes after MMOLove applied the event), and the requests the fault cost stay
within what the breaker's settings allow.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.config.settings import Settings
from relay.sandbox import RunningSandbox, running_sandbox
from tests.reliability.checker import Tally
from tests.support import (
    SECRET,
    SERVER,
    Relay,
    StartRelay,
    eventually,
    qualified,
    registered,
    require_tools,
    running_relay,
)


def referrals(prefix: str, n: int) -> list[dict[str, Any]]:
    """``n`` referrals, each a registered and a qualified for its own token."""
    return [
        body
        for i in range(n)
        for body in (registered(f"{prefix}-{i:03d}"), qualified(f"{prefix}-{i:03d}"))
    ]


async def ingest_all(relay: Relay, tally: Tally, bodies: Iterable[dict[str, Any]]) -> list[int]:
    """POST every body concurrently; each must be acknowledged. Returns the outbox ids."""

    async def one(body: dict[str, Any]) -> int:
        status, answer = await relay.post(body)
        assert tally.ack(body, status, answer), (status, answer)
        return int(answer["id"])

    return list(await asyncio.gather(*(one(body) for body in bodies)))


async def all_delivered(relay: Relay, ids: list[int], timeout_s: float) -> list[dict[str, Any]]:
    records = await relay.wait_finished(ids, timeout_s=timeout_s)
    statuses = Counter(r["status"] for r in records.values())
    assert statuses == {"delivered": len(ids)}, statuses
    return list(records.values())


def breaker_bound(settings: Settings, fault_s: float) -> int:
    """The most requests a fault lasting ``fault_s`` may cost, from the breaker's settings.

    ``breaker_failures`` failures in a row open the circuit; the attempts already in flight
    then (at most ``concurrency - 1``) fail too; after that one probe per cool-down, the
    cool-down doubling after each failed probe up to its cap.
    """
    cap_s = max(settings.backoff_cap_s, settings.breaker_cooldown_s)
    probes, waited, hold = 0, 0.0, settings.breaker_cooldown_s
    while waited + hold <= fault_s:
        waited += hold
        probes += 1
        hold = min(cap_s, hold * 2)
    return settings.breaker_failures + settings.concurrency - 1 + probes


@pytest.mark.long
async def test_long_outage_costs_probes_and_the_backlog_drains_at_the_paced_rate(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    """An 8 s outage under ingest: requests stay within the breaker's bound; then all 300
    events drain, no faster than max_send_rate_per_s."""
    outage_s, rate = 8.0, 100.0
    settings = replace(
        settings, breaker_cooldown_s=0.25, backoff_cap_s=2.0, max_send_rate_per_s=rate
    )
    relay = await start_relay(settings)
    tally = Tally("upstream: long outage, then recovery")
    sandbox.sandbox.faults.outage = True
    started = time.monotonic()
    ids = await ingest_all(relay, tally, referrals("outage", 150))
    await asyncio.sleep(outage_s - (time.monotonic() - started))
    during = sandbox.sandbox.snapshot()["requests"]
    sandbox.sandbox.faults.outage = False
    recovered = time.monotonic()
    await all_delivered(relay, ids, timeout_s=30)
    drain_s = time.monotonic() - recovered

    bound = breaker_bound(settings, outage_s)
    tally.check(
        sandbox,
        outage_s=outage_s,
        backlog=len(ids),
        requests_during_outage=during,
        breaker_bound=bound,
        drain_s=round(drain_s, 2),
    )
    assert settings.breaker_failures <= during <= bound, (during, bound)
    # Paced: after the first burst of `concurrency`, starts are 1/rate apart.
    assert drain_s >= (len(ids) - settings.concurrency) / rate * 0.95, drain_s
    assert sandbox.sandbox.snapshot()["by_status"] == {"503": during, "200": len(ids)}


async def test_429_storm_with_retry_after_is_honoured_by_every_event(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """Eight 429s with Retry-After: 1: the circuit holds 1 s after each, so the storm costs
    exactly one extra request per 429 and lasts at least 4 s."""
    throttles, retry_after_s = 8, 1
    relay = await start_relay()
    concurrency = relay.handle.settings.concurrency
    tally = Tally("upstream: 429 storm with Retry-After")
    sandbox.sandbox.faults.throttle_next = throttles
    sandbox.sandbox.faults.retry_after_s = retry_after_s
    started = time.monotonic()
    ids = await ingest_all(relay, tally, [registered(f"storm-{i:02d}") for i in range(40)])
    await all_delivered(relay, ids, timeout_s=30)
    elapsed_s = time.monotonic() - started

    report = tally.check(sandbox, throttled=throttles, elapsed_s=round(elapsed_s, 2))
    assert report["by_status"] == {"429": throttles, "200": len(ids)}
    assert report["requests"] == len(ids) + throttles
    # At most `concurrency` 429s before the first Retry-After takes hold, then one per second.
    assert elapsed_s >= (throttles - concurrency) * retry_after_s * 0.95, elapsed_s


async def transient(
    start_relay: StartRelay,
    sandbox: RunningSandbox,
    settings: Settings,
    *,
    scenario: str,
    fault: dict[str, Any],
    healed: dict[str, Any],
    fault_s: float,
    applied_before_failing: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ingest 20 referrals under ``fault`` for ``fault_s``, then ``healed``: check the counts."""
    relay = await start_relay(settings)
    tally = Tally(scenario)
    faults = sandbox.sandbox.faults
    for name, value in fault.items():
        setattr(faults, name, value)
    started = time.monotonic()
    ids = await ingest_all(relay, tally, referrals(scenario.split()[1], 10))
    await asyncio.sleep(fault_s - (time.monotonic() - started))
    during = sandbox.sandbox.snapshot()["requests"]
    for name, value in healed.items():
        setattr(faults, name, value)
    records = await all_delivered(relay, ids, timeout_s=30)
    bound = breaker_bound(settings, fault_s + settings.send_timeout_s)
    # A fault that strikes after MMOLove applied the event makes each retry a duplicate
    # send; every other fault strikes first, so nothing may be sent twice.
    report = tally.check(
        sandbox,
        max_duplicate_sends=bound if applied_before_failing else 0,
        requests_during_fault=during,
        breaker_bound=bound,
    )
    assert 1 <= during <= bound, (during, bound)
    return report, records


async def test_hangs_past_the_client_timeout_are_cut_at_the_timeout_and_retried(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    """A hung MMOLove: each attempt ends at send_timeout_s, the breaker limits them, and
    everything is delivered once it answers again."""
    settings = replace(settings, send_timeout_s=0.5, backoff_cap_s=1.0)
    _, records = await transient(
        start_relay,
        sandbox,
        settings,
        scenario="upstream: hang past the client timeout",
        fault={"hang": True},
        healed={"hang": False},
        fault_s=2.5,
    )
    timeouts = [a for r in records for a in r["delivery_log"] if a["outcome"] == "timeout"]
    assert len(timeouts) == sandbox.sandbox.snapshot()["dropped"] >= 1
    assert max(a["duration_ms"] for a in timeouts) < 500 + 1000, "an attempt outlived its timeout"


async def test_connection_resets_are_retried_until_delivered(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    """Connections dropped without an answer: retried, within the breaker's bound."""
    _, records = await transient(
        start_relay,
        sandbox,
        settings,
        scenario="upstream: connection resets",
        fault={"reset": True},
        healed={"reset": False},
        fault_s=1.5,
    )
    resets = [a for r in records for a in r["delivery_log"] if a["outcome"] == "network"]
    assert len(resets) == sandbox.sandbox.snapshot()["dropped"] >= 1


@pytest.mark.timed  # its resend bound depends on timing
async def test_slow_bodies_past_the_timeout_are_resent_and_deduplicated(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    """MMOLove applied the event but its answer trickles past the timeout: the resend of the
    same bytes is answered as a duplicate, never applied twice."""
    settings = replace(settings, send_timeout_s=0.5, backoff_cap_s=1.0)
    report, records = await transient(
        start_relay,
        sandbox,
        settings,
        scenario="upstream: slow bodies",
        fault={"slow_body_ms": 1500},
        healed={"slow_body_ms": 100},  # slow, but within the timeout
        fault_s=2.0,
        applied_before_failing=True,
    )
    replays = [r for r in records if r["outcome"] == "duplicate"]
    assert len(replays) == report["idempotent_replays"] >= 1
    # The whole answer was read, however slowly it came: MMOLove's referral id is kept.
    assert all(r["referral_id"] for r in records if r["outcome"] == "accepted")


async def test_a_redirect_is_not_followed_and_pauses_the_server_as_a_config_error(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    """A 307 pauses the server (one probe per pause_probe_s), the Location never gets the
    POST, and the events go out once the endpoint answers again."""
    settings = replace(settings, pause_probe_s=0.5)
    async with running_sandbox({SERVER: SECRET}) as elsewhere:
        relay = await start_relay(settings)
        tally = Tally("upstream: 3xx redirect")
        sandbox.sandbox.faults.redirect_to = elsewhere.url
        ids = await ingest_all(relay, tally, referrals("redirect", 10))

        async def paused() -> str | None:
            _, status = await relay.get("/v1/status")
            reason: str | None = status["servers"][0]["paused_reason"]
            return reason

        reason = await eventually(paused, timeout_s=5, what="the server to pause")
        await asyncio.sleep(2.0)
        during = sandbox.sandbox.snapshot()["requests"]
        sandbox.sandbox.faults.redirect_to = None
        await all_delivered(relay, ids, timeout_s=10)
        bound = settings.concurrency + int(2.0 / settings.pause_probe_s) + 2
        report = tally.check(sandbox, requests_while_paused=during, bound=bound)
        assert elsewhere.sandbox.snapshot()["requests"] == 0, "the redirect was followed"
    assert "307" in reason
    assert "MMOLOVE_ENDPOINT" in reason
    assert report["by_status"] == {"307": during, "200": len(ids)}
    assert 1 <= during <= bound


async def test_an_unresolvable_host_keeps_every_event_for_a_fixed_endpoint(
    sandbox: RunningSandbox, settings: Settings
) -> None:
    """A host that does not resolve: events stay pending with a DNS error; a restart with
    the right endpoint on the same outbox delivers each once."""
    tally = Tally("upstream: unresolvable host, then the right endpoint")
    wrong = replace(settings, endpoint="http://mmolove-relay-test.invalid/api/referral/events")
    async with running_relay(wrong) as relay:
        ids = await ingest_all(relay, tally, referrals("dns", 5))

        async def dns_error() -> str | None:
            _, status = await relay.get("/v1/status")
            error: str | None = status["servers"][0]["last_error"]
            return error

        error = await eventually(dns_error, timeout_s=5, what="a DNS failure")
        _, status = await relay.get("/v1/status")
        assert status["counts"]["delivered"] == status["counts"]["dead"] == 0
    assert "cannot resolve" in error
    async with running_relay(settings) as relay:
        await all_delivered(relay, ids, timeout_s=10)
    tally.check(sandbox)


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key (openssl CLI)."""
    require_tools("openssl", why="the TLS scenario makes a self-signed certificate with it")
    cert, key = tmp_path / "sandbox.crt", tmp_path / "sandbox.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=mmolove-sandbox",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_with_a_self_signed_certificate_needs_the_configured_ca_file(
    settings: Settings, self_signed: tuple[Path, Path]
) -> None:
    """Without ca_file the certificate is refused (nothing sent, nothing lost); with it the
    same outbox is delivered over TLS, each event once."""
    cert, key = self_signed
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    tally = Tally("upstream: TLS, self-signed certificate")
    async with running_sandbox({SERVER: SECRET}, ssl_context=server_side) as tls:
        assert tls.url.startswith("https://")
        untrusting = replace(settings, endpoint=tls.url, ca_file=None)
        async with running_relay(untrusting) as relay:
            ids = await ingest_all(relay, tally, referrals("tls", 5))

            async def tls_error() -> str | None:
                _, status = await relay.get("/v1/status")
                error: str | None = status["servers"][0]["last_error"]
                return error

            error = await eventually(tls_error, timeout_s=5, what="a TLS failure")
        assert "TLS certificate not trusted" in error
        assert tls.sandbox.snapshot()["requests"] == 0
        async with running_relay(replace(untrusting, ca_file=cert)) as relay:
            await all_delivered(relay, ids, timeout_s=10)
        report = tally.check(tls)
    assert report["by_status"] == {"200": len(ids)}


async def test_a_clock_ten_minutes_off_is_measured_from_date_and_corrected(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """MMOLove's clock 600 s ahead: the first answers are 401, the relay reports the skew it
    read from Date and signs with MMOLove's time; every event lands once."""
    relay = await start_relay()
    concurrency = relay.handle.settings.concurrency
    tally = Tally("upstream: clock off by ten minutes")
    sandbox.sandbox.faults.clock_offset_s = 600
    ids = await ingest_all(relay, tally, referrals("clock", 10))
    await all_delivered(relay, ids, timeout_s=10)
    _, status = await relay.get("/v1/status")
    skew = status["servers"][0]["clock_offset_s"]
    report = tally.check(sandbox, reported_skew_s=skew)
    assert abs(skew - 600) <= 2, skew
    rejected = report["by_status"].get("401", 0)
    assert 1 <= rejected <= concurrency, report["by_status"]  # only those already in flight
    assert report["by_status"]["200"] == len(ids)
