"""Starting on a disk with no room for the reserve, and stopping while starting.

A relay that cannot start must say why and exit 3 at once, so systemd or the container
runtime restarts it (or an operator sees it); one that hangs instead is never restarted.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest

from relay.sandbox import RunningSandbox
from tests.harness import RelayProcess, Spawn, another_writer, fill, relay_env, tuning
from tests.support import eventually

RESERVE_BYTES = 8 * 1024 * 1024  # the default reserve_bytes; the tmpfs is 16 MiB
LOCKED_FOR_S = 5  # how long start-up waits for the write lock before it gives up (exit 3)


def leave_free(disk: Path, free_bytes: int) -> int:
    """Fill ``disk`` and give ``free_bytes`` back; returns what is free then."""
    filler = disk / "filler"
    fill(filler)
    if free_bytes:
        os.truncate(filler, filler.stat().st_size - free_bytes)
    return shutil.disk_usage(disk).free


def sigterm_caught(relay: RelayProcess) -> bool:
    """Whether the relay has its own SIGTERM handler in place (its start-up has begun).

    Read from SIGHUP, which the relay takes right after SIGTERM: under coverage, the
    measured process catches SIGTERM from its first instruction (to save its data, then
    die by the signal), so a caught SIGTERM alone said nothing and the test raced."""
    status = Path(f"/proc/{relay.proc.pid}/status").read_text(encoding="ascii")
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))[7:], 16)
    return bool(caught >> (signal.SIGHUP - 1) & 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("free_bytes", [0, 64 * 1024, 1024 * 1024])
async def test_no_room_for_the_reserve_exits_3_naming_the_space_and_leaves_nothing(
    spawn: Spawn, sandbox: RunningSandbox, small_disk: Path, free_bytes: int
) -> None:
    """Less free space than reserve_bytes: exit 3, the free and the needed bytes in the
    message, and the outbox, its WAL, shared memory and reserve made by this start removed."""
    free = await asyncio.to_thread(leave_free, small_disk, free_bytes)
    relay = spawn(relay_env(sandbox.url, small_disk / "outbox.db"), config=tuning())
    # A hang is what is tested against: a generous bound, which a correct start never nears.
    try:
        code = await relay.exited(timeout_s=20)
    finally:
        relay.send(signal.SIGTERM)  # a hung relay must still die of it
    assert code == 3, relay.output()
    message = relay.output()
    assert f"{free} bytes free" in message, message
    assert f"needs {RESERVE_BYTES}" in message, message
    assert "reserve_bytes" in message, message
    assert sorted(os.listdir(small_disk)) == ["filler"]


@pytest.mark.timeout(60)
async def test_no_room_for_the_reserve_keeps_an_outbox_that_was_there(
    spawn: Spawn, sandbox: RunningSandbox, small_disk: Path
) -> None:
    """A relay restarted after the disk filled (its reserve released): exit 3, and the
    outbox it found is left exactly as it was."""
    db = small_disk / "outbox.db"
    env = relay_env(sandbox.url, db)
    first = await spawn(env, config=tuning()).ready()
    first.send(signal.SIGTERM)
    assert await first.exited() == 0
    (small_disk / "outbox.db.reserve").unlink()  # what a full spell leaves behind
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    await asyncio.to_thread(leave_free, small_disk, 0)

    relay = spawn(env, config=tuning())
    try:
        code = await relay.exited(timeout_s=20)
    finally:
        relay.send(signal.SIGTERM)
    assert code == 3, relay.output()
    assert "reserve_bytes" in relay.output()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(os.listdir(small_disk)) == ["filler", "outbox.db"]


@pytest.mark.timeout(60)
async def test_sigterm_while_starting_ends_the_start(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Start-up waits on an outbox another process holds locked; a SIGTERM then ends it
    (exit 0, nothing taken yet, within the one SQLite wait in progress) instead of being
    noticed only once start-up got through or gave up on the lock (exit 3)."""
    db = tmp_path / "outbox.db"
    env = relay_env(sandbox.url, db)
    first = await spawn(env, config=tuning()).ready()
    first.send(signal.SIGTERM)
    assert await first.exited() == 0
    async with another_writer(db):
        config = tuning() + f"[ingest]\nlock_timeout_s = {LOCKED_FOR_S}\n"
        relay = spawn(env, config=config)
        await eventually(lambda: sigterm_caught(relay), timeout_s=20, what="signal handlers")
        relay.send(signal.SIGTERM)
        code = await relay.exited(timeout_s=20)
    assert code == 0, relay.output()
    assert not relay.find_logs("relay.ready")
    assert relay.find_logs("relay.stopped")
