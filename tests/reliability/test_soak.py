"""Ten minutes of steady ingest while MMOLove flaps, with the relay's memory sampled.

Not in the default run: ``python -m pytest -m soak --no-cov`` (CI runs it as a separate
step). ``RELIABILITY_SOAK_S`` shortens it for a quick try.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from itertools import cycle
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.sandbox import RunningSandbox
from tests.harness import Spawn, post, relay_env, tuning, wait_outbox_settled
from tests.reliability.checker import Tally
from tests.support import qualified, registered

SOAK_S = float(os.environ.get("RELIABILITY_SOAK_S", "600"))
WARM_UP_S = min(60.0, SOAK_S / 5)  # caches, pools and SQLite's page cache fill first
FLAP_S = 10.0
SAMPLE_S = 5.0
CLIENTS = 2
THINK_S = 0.2  # each client: one referral (two events) every 0.2 s, about 20 events/s in all
RSS_GROWTH_BOUND_MIB = 25.0  # after warm-up; a leak per event would pass it within minutes
# What MMOLove does in each 10 s slot, in turn: it flaps between healthy and broken.
PHASES: list[dict[str, Any]] = [
    {},
    {"outage": True},
    {},
    {"error_rate": 0.3},
    {"latency_ms": 200},
    {"reset": True},
    {},
    {"throttle_next": 20, "retry_after_s": 1},
    {"hang": True},
]
HEALTHY = {"outage": False, "error_rate": 0.0, "latency_ms": 0, "reset": False, "hang": False}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc status")


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + 300)
async def test_soak_under_a_flapping_upstream_loses_nothing_and_memory_stays_flat(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Steady ingest for SOAK_S while MMOLove flaps: 0 lost, 0 duplicate sends (every fault
    strikes before MMOLove applies the event), RSS bounded."""
    config = tuning(extra="send_timeout_s = 2.0\nbreaker_cooldown_s = 1.0\npause_probe_s = 5.0\n")
    relay = await spawn(relay_env(sandbox.url, tmp_path / "outbox.db"), config=config).ready()
    tally = Tally("soak: steady ingest, flapping upstream")
    started = time.monotonic()
    samples: list[tuple[float, float]] = []
    counter = iter(range(10_000_000))

    async def client() -> None:
        while time.monotonic() - started < SOAK_S:
            token = f"soak-{next(counter):07d}"
            for body in (registered(token), qualified(token)):
                status, answer, _ = await post(http, relay.url, body)
                assert tally.ack(body, status, answer), (status, answer)
            await asyncio.sleep(THINK_S)

    async def flapper() -> None:
        for phase in cycle(PHASES):
            if time.monotonic() - started >= SOAK_S:
                break
            for name, value in {**HEALTHY, **phase}.items():
                setattr(sandbox.sandbox.faults, name, value)
            await asyncio.sleep(FLAP_S)
        for name, value in HEALTHY.items():
            setattr(sandbox.sandbox.faults, name, value)
        sandbox.sandbox.faults.throttle_next = 0

    async def sampler() -> None:
        while time.monotonic() - started < SOAK_S:
            samples.append((time.monotonic() - started, rss_mib(relay.proc.pid)))
            await asyncio.sleep(SAMPLE_S)

    await asyncio.gather(flapper(), sampler(), *(client() for _ in range(CLIENTS)))
    counts = await wait_outbox_settled(http, relay.url, timeout_s=240)
    after_drain = rss_mib(relay.proc.pid)
    baseline = next(rss for t, rss in samples if t >= WARM_UP_S)
    peak = max(rss for t, rss in samples if t >= WARM_UP_S)
    tally.check(
        sandbox,
        soak_s=SOAK_S,
        rss_start_mib=round(samples[0][1], 1),
        rss_after_warm_up_mib=round(baseline, 1),
        rss_peak_mib=round(peak, 1),
        rss_after_drain_mib=round(after_drain, 1),
        rss_growth_bound_mib=RSS_GROWTH_BOUND_MIB,
        rss_samples=len(samples),
    )
    relay.send(signal.SIGTERM)
    assert await relay.exited(timeout_s=30) == 0
    assert counts == {**counts, "dead": 0, "delivered": len(tally.acked)}
    assert peak - baseline <= RSS_GROWTH_BOUND_MIB, samples
    assert after_drain - baseline <= RSS_GROWTH_BOUND_MIB, (after_drain, baseline)
