"""Upgrades: an outbox written by an older release, opened by this one.

The older releases run for real, each installed from its commit into its own venv (cached
under ``~/.cache/mmolove-relay``): building their outbox from today's migrations would hide
a migration that was edited after it shipped, and one was (the first's ``events_due``
index). Each leaves pending, in-flight and dead events with their attempts; this release
must migrate the file, lose nothing and send nothing twice, counted at the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.cli.client import EXIT_CONFIG
from relay.sandbox import RunningSandbox
from relay.store.sqlite_schema import MIGRATIONS
from tests.harness import (
    Spawn,
    accepted_keys,
    get_json,
    in_progress,
    ingest,
    key_of,
    relay_env,
    tuning,
    wait_outbox_settled,
)
from tests.support import eventually, registered
from tests.systems import ROOT, cache_dir, cache_lock, sh

# The oldest commit whose relay runs (schema version 1, before migration 1 was edited; the
# commit before it imports a sandbox module it does not have), and v0.1.0, the first
# release (schema version 2).
RELEASES = {
    "first-runnable": "74aaaf3b6d9e9a4b1a593ef8c4a0f42053d39b8d",
    "v0.1.0": "34d74e62c00565d2693818043e1937f7258dbd8c",
}

pytestmark = pytest.mark.timeout(300)  # a cold run installs each release into a venv


def release_relay(commit: str) -> list[str]:
    """The ``mmolove-relay`` command of ``commit``, installed once into its own venv."""
    home = cache_dir() / f"release-{commit[:12]}"
    with cache_lock():
        if not home.is_dir():
            partial = home.with_suffix(".partial")
            shutil.rmtree(partial, ignore_errors=True)
            (partial / "src").mkdir(parents=True)
            tarball = partial / "src.tar"
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", "-o", str(tarball), commit],
                capture_output=True,
                text=True,
                check=False,
            )
            if archive.returncode != 0:
                pytest.fail(
                    f"git archive {commit} failed: {archive.stderr}; the upgrade tests need "
                    "a checkout with its history (not a shallow clone)."
                )
            sh("tar", "-xf", str(tarball), "-C", str(partial / "src"), timeout_s=60, what="tar")
            sh(sys.executable, "-m", "venv", str(partial / "venv"), timeout_s=120, what="venv")
            sh(
                *(str(partial / "venv/bin/pip"), "install", "--quiet", str(partial / "src")),
                timeout_s=600,
                what=f"pip install of {commit[:12]}",
            )
            partial.rename(home)
    return [str(home / "venv/bin/python"), "-m", "relay.cli"]


def rows(db: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute(
            "SELECT e.*, (SELECT count(*) FROM attempts a WHERE a.event_id = e.id) AS logged"
            " FROM events e"
        ).fetchall()
    return {(r["token"], r["event"], r["server_event_id"]): dict(r) for r in found}


def schema(db: Path) -> tuple[int, set[tuple[str, str]]]:
    """The version and every table and index, as SQLite normalises their definitions."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        items = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        return version, {(name, " ".join(sql.split())) for name, sql in items}


async def old_release_outbox(
    spawn: Spawn, program: list[str], sandbox: RunningSandbox, db: Path, http: Any
) -> dict[str, list[dict[str, Any]]]:
    """Run the old relay into a delivered, a dead, pending and an in-flight event, then
    kill -9 it mid-delivery. Returns the posted bodies by what became of them."""
    faults = sandbox.sandbox.faults
    # The first failure opens the breaker for a minute, so failed events stay pending (due
    # soon) until the kill instead of going back in flight; every release knows these keys.
    config = (
        "[delivery]\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.5\n"
        "breaker_failures = 1\nbreaker_cooldown_s = 60.0\n"
    )
    relay = await spawn(relay_env(sandbox.url, db), config=config, program=program).ready()
    made: dict[str, list[dict[str, Any]]] = {
        "delivered": [registered("up-delivered")],
        "dead": [registered("up-dead")],
        "in_flight": [registered("up-in-flight")],
        "pending": [registered(f"up-pending-{n}") for n in range(3)],
    }
    await ingest(http, relay.url, made["delivered"][0])
    await eventually(lambda: accepted_keys(sandbox), timeout_s=10, what="the first delivery")

    async def status(event_id: int) -> str:
        return str((await get_json(http, f"{relay.url}/v1/events/{event_id}"))["status"])

    faults.unknown_tokens = {"up-dead"}
    dead = await ingest(http, relay.url, made["dead"][0])

    async def died() -> bool:
        return await status(dead) == "dead"

    await eventually(died, timeout_s=10, what="the unknown token's event to die")

    faults.hang = True
    await ingest(http, relay.url, made["in_flight"][0])
    await eventually(lambda: in_progress(sandbox), timeout_s=10, what="a hung delivery")
    faults.hang, faults.outage = False, True
    pending = [await ingest(http, relay.url, body) for body in made["pending"]]

    async def retried() -> bool:
        records = [await get_json(http, f"{relay.url}/v1/events/{i}") for i in pending]
        waiting = all(r["status"] == "pending" for r in records)
        return waiting and any(r["attempts"] >= 1 for r in records)

    await eventually(retried, timeout_s=15, what="the pending events to be retried")
    relay.send(signal.SIGKILL)
    await relay.exited()
    faults.outage = False
    faults.unknown_tokens = set()
    return made


@pytest.mark.parametrize("release", sorted(RELEASES))
async def test_an_older_releases_outbox_is_migrated_and_loses_nothing(
    release: str,
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    program = await asyncio.to_thread(release_relay, RELEASES[release])
    db = tmp_path / "outbox.db"
    made = await old_release_outbox(spawn, program, sandbox, db, http)
    before = rows(db)
    statuses = {key: row["status"] for key, row in before.items()}
    expected = {key_of(body): kind for kind, bodies in made.items() for body in bodies}
    assert statuses == expected, "the old release did not leave the outbox this test needs"
    assert all(before[key_of(body)]["logged"] >= 1 for body in made["dead"])
    assert any(before[key_of(body)]["logged"] >= 1 for body in made["pending"])
    sent_before = accepted_keys(sandbox)

    relay = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    await wait_outbox_settled(http, relay.url, timeout_s=30)
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0, relay.output()

    after = rows(db)
    assert set(after) == set(before), "events appeared or vanished"
    for key, old in before.items():
        new = after[key]
        assert new["id"] == old["id"]
        assert new["body"] == old["body"]
        assert new["logged"] >= old["logged"], f"{key}: the attempts logged before are gone"
        if old["status"] in ("delivered", "dead"):
            # Columns added since (replayed_at, referee_identity, reported_by) are the only
            # difference; the backfill of referee_identity is tested with the player view.
            added = {c: new.get(c) for c in ("replayed_at", "referee_identity", "reported_by")}
            assert new == {**old, **added}, key
            assert new.get("reported_by") is None, "an event posted before sources existed"
        else:
            assert new["status"] == "delivered", new
            assert new["attempts"] == old["attempts"] + 1, (old, new)

    fresh = tmp_path / "fresh.db"
    fresh_relay = await spawn(relay_env(sandbox.url, fresh), config=tuning()).ready()
    fresh_relay.send(signal.SIGTERM)
    await fresh_relay.exited()
    assert schema(db) == schema(fresh), "the migrated outbox differs from a new one"

    sends = accepted_keys(sandbox)
    duplicates = sandbox.sandbox.snapshot()["duplicates"] + sum(c - 1 for c in sends.values())
    lost = set(expected) - {k for k, v in expected.items() if v == "dead"} - set(sends)
    print(
        f"upgrade from {release}: {len(expected)} events sent ({len(made['dead'])} dead by "
        f"design), {len(sends)} delivered ({len(sends) - len(sent_before)} after the "
        f"upgrade), {len(lost)} lost, {duplicates} duplicate sends"
    )
    assert not lost
    assert duplicates == 0
    assert set(sends) == {k for k, v in expected.items() if v != "dead"}


async def test_an_outbox_from_a_newer_release_is_refused_and_left_untouched(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    os.utime(db, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    content, mtime = db.read_bytes(), db.stat().st_mtime_ns
    beside = sorted(os.listdir(tmp_path))

    newer = spawn(relay_env(sandbox.url, db))
    assert await newer.exited() == EXIT_CONFIG
    error = newer.output()
    assert f"schema version {len(MIGRATIONS) + 1}, newer than this relay knows" in error
    assert "run the newer relay" in error
    assert (db.read_bytes(), db.stat().st_mtime_ns) == (content, mtime)
    assert sorted(os.listdir(tmp_path)) == beside
