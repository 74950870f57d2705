"""The outbox's disk fills up, or another process holds SQLite's write lock.

Ingest must answer 503 with Retry-After instead of storing (or hanging), the daemon must stay
up, nothing acknowledged before may be lost, and ingest must recover once the cause goes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.sandbox import RunningSandbox
from tests.harness import (
    SMALL_DISK_SIZE,
    RelayProcess,
    Spawn,
    another_writer,
    fill,
    get_json,
    in_progress,
    post,
    relay_env,
    tuning,
    wait_outbox_settled,
)
from tests.reliability.checker import Tally
from tests.support import eventually, registered

LOCK_TIMEOUT_S = 0.5
SQLITE_BUSY_TIMEOUT_S = 5.0  # the outbox connections' busy_timeout, which ingest undercuts
RESERVE_BYTES = 2 * 1024 * 1024


def full_disk_config(**tuning_args: Any) -> str:
    # Only the real ENOSPC guards here: min_free_bytes would refuse before the disk is full.
    return tuning(**tuning_args) + (
        f"[ingest]\nmin_free_bytes = 1\n[outbox]\nreserve_bytes = {RESERVE_BYTES}\n"
    )


FULL_DISK_CONFIG = full_disk_config()


async def _ready(http: aiohttp.ClientSession, relay: RelayProcess) -> bool:
    async with http.get(f"{relay.url}/readyz") as resp:
        return resp.status == 200


async def post_counted(
    http: aiohttp.ClientSession, relay: RelayProcess, tally: Tally, body: dict[str, Any]
) -> tuple[int, dict[str, Any], Any]:
    status, answer, headers = await post(http, relay.url, body)
    tally.ack(body, status, answer)
    return status, answer, headers


@pytest.mark.timed  # which check sees the full disk first depends on timing
@pytest.mark.timeout(120)
async def test_a_full_disk_answers_503_keeps_what_was_acknowledged_and_recovers(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    small_disk: Path,
) -> None:
    """Filled to the last byte: 503 + Retry-After, the daemon stays up, space returns and
    ingest with it, and every 202 reaches MMOLove once."""
    config = FULL_DISK_CONFIG
    relay = await spawn(relay_env(sandbox.url, small_disk / "outbox.db"), config=config).ready()
    tally = Tally("disk full: tmpfs filled, then freed")
    counter = iter(range(1_000_000))
    for _ in range(50):
        assert (await post_counted(http, relay, tally, registered(f"disk-{next(counter)}")))[
            0
        ] == 202
    filler = small_disk / "filler"
    filled = await asyncio.to_thread(fill, filler)

    refused: list[tuple[int, dict[str, Any], Any]] = []
    for _ in range(5000):  # the WAL's free frames are used first; ENOSPC follows
        body = registered(f"disk-{next(counter)}")
        status, answer, headers = await post_counted(http, relay, tally, body)
        if status != 202:
            refused.append((status, answer, headers))
            if len(refused) == 20:
                break
    assert len(refused) == 20, "the relay never noticed the full disk"
    assert [r[0] for r in refused] == [503] * 20, refused[0]
    assert {r[1]["error"]["code"] for r in refused} == {"unavailable"}
    assert all(int(r[2]["Retry-After"]) > 0 for r in refused)
    assert "full" in refused[0][1]["error"]["message"]
    assert relay.proc.poll() is None
    assert (await get_json(http, f"{relay.url}/healthz"))["ok"] is True
    acked_while_full = len(tally.acked)

    filler.unlink()
    # The relay notices within a second, makes its reserve again and is ready.
    await eventually(lambda: _ready(http, relay), timeout_s=10, what="the relay to be ready")
    recovered = 0
    for _ in range(50):
        status, _, _ = await post_counted(http, relay, tally, registered(f"disk-{next(counter)}"))
        recovered += status == 202
    assert recovered == 50, "ingest did not recover once space returned"

    counts = await wait_outbox_settled(http, relay.url, timeout_s=30)
    tally.check(
        sandbox,
        tmpfs_size=SMALL_DISK_SIZE,
        filler_bytes=filled,
        refused_503=len(refused),
        acknowledged_before_full=acked_while_full,
        acknowledged_after_recovery=recovered,
        outcome_writes_retried=len(relay.find_logs("delivery.outcome_not_saved")),
    )
    assert counts == {**counts, "dead": 0, "delivered": len(tally.acked)}
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0


@pytest.mark.long
@pytest.mark.timeout(120)  # up to thousands of posts until the disk is full, on a busy machine
async def test_a_full_disk_truncates_the_wal_so_the_space_comes_back(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    small_disk: Path,
) -> None:
    """After a write meets a full disk the WAL is checkpointed with TRUNCATE, and the space
    it gives back lets the relay recover by itself. Without it a WAL that filled the disk
    keeps its size, since SQLite's auto-checkpoint only runs after a commit that worked."""
    env = relay_env(sandbox.url, small_disk / "outbox.db")
    relay = await spawn(env, config=FULL_DISK_CONFIG).ready()
    wal = small_disk / "outbox.db-wal"
    tally = Tally("disk full: the WAL is truncated")
    for i in range(200):
        assert (await post_counted(http, relay, tally, registered(f"wal-{i}")))[0] == 202
    await wait_outbox_settled(http, relay.url)
    wal_before = wal.stat().st_size
    assert wal_before > 0
    filler = small_disk / "filler"
    await asyncio.to_thread(fill, filler)
    # Give back a little, so ingest (min_free_bytes = 1) stores until a WAL write fails.
    os.truncate(filler, filler.stat().st_size - 256 * 1024)
    for i in range(5000):
        await post_counted(http, relay, tally, registered(f"wal-full-{i}"))
        if relay.find_logs("outbox.disk_full"):
            break
    [full] = relay.find_logs("outbox.disk_full")
    assert full["wal_truncated"] is True, full
    # A WAL file only ever grows, unless it is truncated.
    wal_after = wal.stat().st_size
    assert wal_after < wal_before, (wal_before, wal_after)

    # The space the WAL gave back is enough: the relay recovers with the filler still there.
    await eventually(lambda: _ready(http, relay), timeout_s=10, what="the relay to be ready")
    assert (await post_counted(http, relay, tally, registered("wal-after")))[0] == 202
    await wait_outbox_settled(http, relay.url)
    tally.check(
        sandbox,
        wal_bytes_before=wal_before,
        wal_bytes_after_disk_full=wal_after,
    )
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0


@pytest.mark.timeout(90)
async def test_a_disk_filled_during_delivery_sends_nothing_twice_and_purge_still_works(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    small_disk: Path,
) -> None:
    """The disk fills while attempts are in flight and stays full past their lease: their
    outcomes are recorded in the released reserve, no new attempt starts, so no event is
    sent twice; purge, the one tool that frees space, succeeds on the full disk."""
    # A 3 s lease (2 x send_timeout_s + drain_timeout_s): outcomes not recorded within it
    # would be claimed and sent again while the disk is still full.
    config = full_disk_config(drain_timeout_s=1.0, extra="send_timeout_s = 1.0\n")
    relay = await spawn(relay_env(sandbox.url, small_disk / "outbox.db"), config=config).ready()
    tally = Tally("disk full during delivery: reserve, purge")
    faults = sandbox.sandbox.faults
    faults.unknown_tokens = {f"gone-{i}" for i in range(20)}
    for token in sorted(faults.unknown_tokens):  # 404: dead, for purge to delete later
        await post(http, relay.url, registered(token))
    await wait_outbox_settled(http, relay.url)

    # Few events, each in flight a while: the fill meets attempts in flight while the WAL
    # is still growing for the first time, so every later write needs new space.
    faults.latency_ms = 300
    for i in range(60):
        assert (await post_counted(http, relay, tally, registered(f"fill-{i}")))[0] == 202
    await eventually(lambda: in_progress(sandbox) > 0, timeout_s=5, what="attempts in flight")
    filler = small_disk / "filler"
    await asyncio.to_thread(fill, filler)
    await relay.wait_log("outbox.write_failed", timeout_s=15)  # a write met the full disk
    await asyncio.sleep(4.0)  # past the lease of every attempt in flight at the fill
    async with http.post(
        f"{relay.url}/v1/admin/purge", json={"status": "dead", "before": time.time()}
    ) as resp:
        purge_status, purged = resp.status, await resp.json()
    assert (purge_status, purged) == (200, {"purged": 20}), purged
    delivered_while_full = len(sandbox.sandbox.snapshot()["accepted"])

    filler.unlink()
    counts = await wait_outbox_settled(http, relay.url, timeout_s=60)
    report = tally.check(
        sandbox,
        delivered_before_space_returned=delivered_while_full,
        outcome_writes_retried=len(relay.find_logs("delivery.outcome_not_saved")),
        purged_on_full_disk=purged["purged"],
    )
    assert report["duplicate_sends"] == 0
    assert counts == {**counts, "dead": 0, "delivered": len(tally.acked)}
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0


@pytest.mark.timed  # the lock wait is timed in wall-clock seconds
@pytest.mark.timeout(90)
async def test_another_process_holding_the_write_lock_gets_503_then_recovery(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A second process in a write transaction: ingest answers 503 + Retry-After after its
    own lock_timeout_s, not SQLite's 5 s busy timeout; nothing is lost, and everything
    flows once the lock is released."""
    db = tmp_path / "outbox.db"
    config = tuning() + f"[ingest]\nlock_timeout_s = {LOCK_TIMEOUT_S}\n"
    relay = await spawn(relay_env(sandbox.url, db), config=config).ready()
    tally = Tally("disk: another process holds the SQLite write lock")
    for i in range(20):
        assert (await post_counted(http, relay, tally, registered(f"lock-{i}")))[0] == 202
    await wait_outbox_settled(http, relay.url)

    async with another_writer(db):
        started = time.monotonic()
        results = await asyncio.gather(
            *(post_counted(http, relay, tally, registered(f"locked-{i}")) for i in range(4))
        )
        waited_s = time.monotonic() - started
        assert relay.proc.poll() is None
        assert (await get_json(http, f"{relay.url}/healthz"))["ok"] is True
    statuses = [status for status, _, _ in results]
    assert statuses == [503] * 4, results
    assert all(int(headers["Retry-After"]) > 0 for _, _, headers in results)
    assert all("locked" in answer["error"]["message"] for _, answer, _ in results)
    # The four queue behind one another in at most two transactions, each waiting
    # lock_timeout_s; SQLite's own busy timeout would have held the first for 5 s.
    assert LOCK_TIMEOUT_S <= waited_s < SQLITE_BUSY_TIMEOUT_S / 2, waited_s

    for i in range(20):
        assert (await post_counted(http, relay, tally, registered(f"after-{i}")))[0] == 202
    counts = await wait_outbox_settled(http, relay.url)
    tally.check(sandbox, refused_503=len(results))
    assert counts == {**counts, "dead": 0, "delivered": 40}
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0
