"""The four scenarios: durable ingest, delivery, end to end, and a 1,000,000-event backlog.

Each returns plain data for the report; every server runs in its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import console, fill, load, procs
from relay.sandbox import DEMO_SERVER_ID

CONNECTIONS = 32
# Delivery settings the delivery and backlog scenarios set explicitly: enough attempts in
# flight to show the machinery's overhead, and pacing far above what is reached, so the
# measured rate is the relay's own, not the configured limit.
DELIVERY_CONCURRENCY = 16
DELIVERY_RATE_PER_S = 100_000.0


@dataclass(frozen=True)
class Plan:
    """How long and how big: the full run, or the seconds-long smoke run for CI."""

    ingest_s: float
    delivery_window_s: float
    delivery_events: int
    e2e_events: int
    e2e_rate_per_s: float
    backlog_events: int
    cli_runs: int
    fsync_ms: float = 5.0


FULL = Plan(
    ingest_s=10,
    delivery_window_s=10,
    delivery_events=30_000,
    e2e_events=300,
    e2e_rate_per_s=20,
    backlog_events=1_000_000,
    cli_runs=9,
)
SMOKE = Plan(
    ingest_s=1,
    delivery_window_s=1,
    # More than two seconds' worth at ~2,000/s: the warm-up must not drain the outbox.
    delivery_events=20_000,
    e2e_events=10,
    e2e_rate_per_s=20,
    backlog_events=20_000,
    cli_runs=2,
)


def _fresh(db: Path) -> Path:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


# -- 1. durable ingest ---------------------------------------------------------------------


def ingest(plan: Plan, workdir: Path, shim: Path | None) -> dict[str, Any]:
    """Bare, naive and relay under the same wrk load; ``shim`` slows every fsync."""
    env = procs.preload_env(shim, plan.fsync_ms)
    tag = "slow" if shim else "fast"
    out: dict[str, Any] = {"fsync_ms": plan.fsync_ms if shim else None}
    for mode in ("bare", "naive"):
        with procs.baseline(mode, workdir, env) as proc:
            out[mode] = _wrk_with_cpu(proc, plan, workdir, f"{mode}-{tag}")
    if shim is None:
        # The loop the relay runs on, for reference: the target compares with plain aiohttp.
        with procs.baseline("bare", workdir, env, uvloop=True) as proc:
            result = load.wrk(
                proc.url,
                workdir=workdir,
                prefix=f"bare-uvloop-{tag}",
                connections=CONNECTIONS,
                seconds=plan.ingest_s,
            )
        out["bare_uvloop"] = result.as_json()
    with _relay_with_sandbox(workdir, f"ingest-{tag}", env=env) as relay:
        out["relay"] = _wrk_with_cpu(relay, plan, workdir, f"relay-{tag}")
        if shim is None:
            out["relay_half_rate"] = _half_rate(
                plan, workdir, relay.url, out["relay"]["rate_per_s"]
            )
    return out


def _wrk_with_cpu(proc: procs.Proc, plan: Plan, workdir: Path, prefix: str) -> dict[str, Any]:
    """One wrk run against ``proc``, with the server's CPU per acknowledged event.

    CPU is read from /proc around the run: far steadier than a rate on a shared machine. The
    relay's figure includes the delivery it does meanwhile (default pacing, 100/s at most).
    """
    cpu_before = proc.cpu_s()
    result = load.wrk(
        proc.url, workdir=workdir, prefix=prefix, connections=CONNECTIONS, seconds=plan.ingest_s
    )
    acked = max(1, result.requests - result.non_2xx)
    return {
        **result.as_json(),
        "cpu_us_per_event": round((proc.cpu_s() - cpu_before) / acked * 1e6),
    }


def _half_rate(plan: Plan, workdir: Path, url: str, max_rate: float) -> dict[str, Any]:
    """Ack latency at half the maximum rate: wrk paced by a per-connection delay."""
    target = max_rate / 2
    delay_ms = CONNECTIONS / target * 1000
    probe = load.wrk(
        url,
        workdir=workdir,
        prefix="relay-half-probe",
        connections=CONNECTIONS,
        seconds=max(1.0, plan.ingest_s / 2),
        delay_ms=delay_ms,
    )
    # Each connection's cycle is its delay plus the request's own time; take that time off.
    spent_ms = CONNECTIONS / max(probe.rate_per_s, 1.0) * 1000 - delay_ms
    delay_ms = max(0.0, delay_ms - max(0.0, spent_ms))
    result = load.wrk(
        url,
        workdir=workdir,
        prefix="relay-half",
        connections=CONNECTIONS,
        seconds=plan.ingest_s,
        delay_ms=delay_ms,
    )
    return {**result.as_json(), "target_rate_per_s": round(target, 1)}


# -- 2. delivery ---------------------------------------------------------------------------


def delivery(plan: Plan, workdir: Path, latency_ms: float) -> dict[str, Any]:
    """Events/s from a pre-filled outbox to the sandbox answering after ``latency_ms``."""
    db = _fresh(workdir / f"delivery-{latency_ms:g}.db")
    fill.fill(db, plan.delivery_events, server_id=DEMO_SERVER_ID, prefix=f"d{latency_ms:g}-")
    with _relay_with_sandbox(
        workdir,
        f"delivery-{latency_ms:g}",
        db=db,
        latency_ms=latency_ms,
        concurrency=DELIVERY_CONCURRENCY,
        rate_per_s=DELIVERY_RATE_PER_S,
    ) as relay:
        rate, cpu_us = _drain_rate(db, plan.delivery_window_s, relay)
        rss_mb, peak_mb = relay.rss_mb()
    ideal = DELIVERY_CONCURRENCY / (latency_ms / 1000) if latency_ms else None
    return {
        "latency_ms": latency_ms,
        "concurrency": DELIVERY_CONCURRENCY,
        "max_send_rate_per_s": DELIVERY_RATE_PER_S,
        "rate_per_s": round(rate, 1),
        "cpu_us_per_event": round(cpu_us),
        "ideal_per_s": ideal,
        "ratio_to_ideal": round(rate / ideal, 3) if ideal else None,
        "rss_mb": round(rss_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
    }


def _drain_rate(db: Path, window_s: float, relay: procs.Proc) -> tuple[float, float]:
    """Delivered per second over ``window_s`` after a short warm-up, and the relay's CPU
    microseconds per delivered event in that window."""
    time.sleep(min(1.0, window_s))
    first, t0, cpu0 = fill.delivered(db), time.monotonic(), relay.cpu_s()
    time.sleep(window_s)
    last, t1, cpu1 = fill.delivered(db), time.monotonic(), relay.cpu_s()
    if last == first:
        raise RuntimeError(
            f"nothing was delivered from {db} in {window_s} s ({first} were during the "
            "warm-up): fill more events, or see the relay's log beside it"
        )
    return (last - first) / (t1 - t0), (cpu1 - cpu0) / (last - first) * 1e6


# -- 3. end to end -------------------------------------------------------------------------


def end_to_end(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Ingest-to-accepted latency at a light, steady rate, default delivery settings."""
    db = _fresh(workdir / "e2e.db")
    with _relay_with_sandbox(workdir, "e2e", db=db) as relay:
        sent, acks = asyncio.run(_steady(relay.url, plan.e2e_events, plan.e2e_rate_per_s))
        deadline = time.monotonic() + 30
        accepted: dict[str, float] = {}
        while time.monotonic() < deadline:
            accepted = fill.accepted_times(db)
            if len(accepted) >= len(sent):
                break
            time.sleep(0.05)
    latencies = sorted((accepted[sid] - at) * 1000 for sid, at in sent.items() if sid in accepted)
    if len(latencies) < len(sent):
        raise RuntimeError(f"only {len(latencies)} of {len(sent)} events were accepted")
    return {
        "events": len(sent),
        "rate_per_s": plan.e2e_rate_per_s,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(_percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2),
        "ack_p50_ms": round(statistics.median(acks), 2),
        "ack_p99_ms": round(_percentile(sorted(acks), 99), 2),
    }


async def _steady(url: str, count: int, rate_per_s: float) -> tuple[dict[str, float], list[float]]:
    """POST ``count`` events at a steady rate on one keep-alive connection."""
    sent: dict[str, float] = {}
    acks: list[float] = []
    prefix = f"e2e-{int(time.time())}"
    interval = 1 / rate_per_s
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
            sid = f"reg-{prefix}-{i}"
            body = {
                "event": "registered",
                "token": f"mmref-{prefix}-{i}",
                "referee_identity": f"player-{prefix}-{i}",
                "server_event_id": sid,
            }
            t0 = time.time()
            async with session.post(url + "/v1/events", json=body) as resp:
                await resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"ingest answered {resp.status}")
            acks.append((time.time() - t0) * 1000)
            sent[sid] = t0
    return sent, acks


def _percentile(ordered: list[float], pct: float) -> float:
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


# -- 4. backlog ----------------------------------------------------------------------------


def backlog(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Start-up, memory, ``status`` and drain rate with ``backlog_events`` pending."""
    db = workdir / "backlog.db"
    fill_s = fill.fill(db, plan.backlog_events, server_id=DEMO_SERVER_ID, prefix="b-")
    fill.rejections(db, console.REJECTED)  # the console's rejected page at its worst
    log = workdir / "relay-backlog.log"
    log.unlink(missing_ok=True)
    with _relay_with_sandbox(
        workdir,
        "backlog",
        db=db,
        concurrency=DELIVERY_CONCURRENCY,
        rate_per_s=DELIVERY_RATE_PER_S,
    ) as relay:
        started_s = relay.started_s
        rate, _ = _drain_rate(db, plan.delivery_window_s, relay)
        t0 = time.monotonic()
        with urllib.request.urlopen(relay.url + "/v1/status", timeout=30) as resp:  # noqa: S310
            json.load(resp)
        status_api_s = time.monotonic() - t0
        # The player view of one referral in the middle of the backlog.
        player = f"player-b-{plan.backlog_events // 2}"
        t0 = time.monotonic()
        with urllib.request.urlopen(f"{relay.url}/v1/players/{player}", timeout=30) as resp:  # noqa: S310
            told = json.load(resp)
        player_api_s = time.monotonic() - t0
        assert told["token"] == f"mmref-b-{plan.backlog_events // 2}", told
        status_cli_s = _cli_s(["status", "--url", relay.url])
        console_ms = console.page_times_ms(relay.url, prefix="b-", count=plan.backlog_events)
        rss_mb, peak_mb = relay.rss_mb()
    return {
        "events": plan.backlog_events,
        "fill_s": round(fill_s, 1),
        "db_mb": round(db.stat().st_size / 1e6, 1),
        "startup_s": round(started_s, 3),
        "startup_in_process_ms": _startup_ms(workdir / "relay-backlog.log"),
        "status_cli_s": round(status_cli_s, 3),
        "status_api_s": round(status_api_s, 3),
        "player_api_s": round(player_api_s, 4),
        "ledger_mb_per_million": round(
            fill.ledger_bytes(workdir / "ledger.db", plan.backlog_events)
            / plan.backlog_events
            * 1e6
            / 1e6,
            1,
        ),
        "rss_mb": round(rss_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "drain_rate_per_s": round(rate, 1),
        "console_ms": console_ms,
    }


def _startup_ms(log: Path) -> float | None:
    for line in log.read_text().splitlines():
        if '"relay.ready"' in line:
            value = json.loads(line).get("startup_ms")
            return float(value) if value is not None else None
    return None


# -- 5. the operator's CLI -----------------------------------------------------------------


def cli(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Whole-process wall time of ``--help`` and of ``status`` against a running relay.

    Each is run ``plan.cli_runs`` times; the median is the figure, the slowest is shown too.
    """
    with _relay_with_sandbox(workdir, "cli") as relay:
        out = {}
        for name, argv in (("help", ["--help"]), ("status", ["status", "--url", relay.url])):
            times = sorted(_cli_s(argv) for _ in range(plan.cli_runs))
            out[name] = {"median_s": round(statistics.median(times), 3), "max_s": times[-1]}
    return out


def _cli_s(argv: list[str]) -> float:
    """Seconds one ``mmolove-relay ARGV`` process takes, from spawn to exit."""
    t0 = time.monotonic()
    subprocess.run(  # noqa: S603 (our own interpreter and module)
        [procs.PYTHON, "-m", "relay.cli", *argv],
        check=True,
        capture_output=True,
        cwd=procs.relay_src,
        env={**os.environ, **procs.relay_src_env()},
    )
    return round(time.monotonic() - t0, 3)


# -- plumbing ------------------------------------------------------------------------------


@contextlib.contextmanager
def _relay_with_sandbox(
    workdir: Path,
    name: str,
    *,
    db: Path | None = None,
    latency_ms: float = 0.0,
    concurrency: int = 4,
    rate_per_s: float = 100.0,
    env: dict[str, str] | None = None,
) -> Iterator[procs.Proc]:
    """The sandbox in one process and the relay in another, both stopped on exit."""
    with procs.sandbox(latency_ms, workdir / f"sandbox-{name}.log") as sandbox:
        config = procs.relay_config(workdir, concurrency=concurrency, rate_per_s=rate_per_s)
        with procs.relay(
            db or _fresh(workdir / f"{name}.db"),
            sandbox.url + "/api/referral/events",
            config,
            workdir / f"relay-{name}.log",
            env=env,
        ) as relay:
            yield relay
