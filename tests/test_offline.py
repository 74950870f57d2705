"""Offline reads: `status`, `events`, `player` and `rejected` answer from the outbox file,
read-only, with `--db` or when the daemon does not answer; `retry` and `purge` say they need
the daemon. Against real daemons (in-process, and a real process killed with SIGKILL)."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from relay.config.settings import Settings
from relay.errors import OutboxError
from relay.events import validate
from relay.sandbox import RunningSandbox
from relay.store.contract import Attempt, Outcome
from relay.store.contract_records import AlertState
from relay.store.sqlite import SqliteOutbox
from relay.store.sqlite_readonly import ReadOnlyOutbox
from relay.store.sqlite_schema import MIGRATIONS
from tests.harness import Spawn, ingest, relay_env, tuning, wait_delivered
from tests.support import SECRET, SERVER, StartRelay, cli, qualified, registered, running_relay

BANNER = "read from the outbox file"


def files(directory: Path) -> dict[str, str]:
    """Every file beside the outbox, with a digest of its bytes."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def stopped_relay_with_history(settings: Settings) -> int:
    """Run a relay: one referral delivered, one input rejected; stop it. The event's id."""
    async with running_relay(settings) as relay:
        _, reg = await relay.post(registered("tok-still", "still-1"))
        await relay.wait_finished([reg["id"]])
        # Written by the time the relay has stopped: it flushes its record on the way out.
        await relay.post({"event": "registered", "token": "tok-still"})
    return int(reg["id"])


async def test_reads_from_the_file_beside_a_running_daemon(start_relay: StartRelay) -> None:
    relay = await start_relay()
    db = relay.handle.outbox.path
    _, reg = await relay.post(registered("tok-off", "off-1"))
    await relay.wait_finished([reg["id"]])

    code, out, err = await cli("player", "off-1", "--json", "--db", str(db))
    assert code == 0, err
    assert BANNER in err
    story = json.loads(out)
    assert [(e["id"], e["status"]) for e in story["events"]] == [(reg["id"], "delivered")]
    code, out, err = await cli("status", "--json", "--db", str(db))
    assert code == 0, err
    assert json.loads(out)["counts"]["delivered"] == 1

    # The daemon never noticed: it still takes and delivers events.
    _, qual = await relay.post(qualified("tok-off", "off-1"))
    assert (await relay.wait_finished([qual["id"]]))[qual["id"]]["status"] == "delivered"


async def test_a_stopped_relays_file_is_read_without_a_byte_changing(
    settings: Settings, tmp_path: Path
) -> None:
    event_id = await stopped_relay_with_history(settings)
    before = files(tmp_path)
    db = str(settings.db_path)
    for args, shown in (
        (("status",), "srv-1"),
        (("events", "list"), "tok-still"),
        (("events", "show", str(event_id)), "accepted"),
        (("player", "still-1"), "Counted:"),
        (("rejected",), "missing_field"),
    ):
        code, out, err = await cli(*args, "--db", db)
        assert code == 0, err
        assert BANNER in err
        assert shown in out
    assert files(tmp_path) == before  # no write, no -wal or -shm made, no lock file touched


async def test_reads_fall_back_to_the_configured_file_and_writes_say_they_need_the_daemon(
    settings: Settings, sandbox: RunningSandbox
) -> None:
    await stopped_relay_with_history(settings)
    env = {
        "MMOLOVE_SERVER_ID": SERVER,
        "MMOLOVE_SECRET": SECRET,
        "MMOLOVE_ENDPOINT": sandbox.url,
        "MMOLOVE_RELAY_DB": str(settings.db_path),
        "MMOLOVE_RELAY_LISTEN": f"127.0.0.1:{unused_port()}",  # no daemon answers there
    }
    code, out, err = await cli("status", "--json", env=env)
    assert code == 0, err
    assert BANNER in err
    assert json.loads(out)["counts"]["delivered"] == 1

    for args in (("retry", "1", "--yes"), ("purge", "--dead", "--older-than", "1d", "--yes")):
        code, _, err = await cli(*args, env=env)
        assert code == 4
        assert "cannot reach the relay" in err
        assert "retry and purge need the daemon" in err


async def test_the_read_only_outbox_answers_its_checks_and_refuses_every_write(
    tmp_path: Path,
) -> None:
    """Opened read-only, the outbox reads; its health, file and delivery checks answer
    instead of failing on what only a writer holds; every write says it needs the daemon."""
    db, now = tmp_path / "outbox.db", 1_800_000_000.0
    event = validate(
        registered("tok-ro", "ro-1"), server_ids=[SERVER], allow_extra_fields=False, now=now
    )
    writable = await SqliteOutbox.open(db)
    [added] = await writable.add([event], now)
    await writable.close()
    assert not db.with_name("outbox.db-wal").exists()  # closing merged the log: immutable
    outbox = await ReadOnlyOutbox.open_file(db, immutable=True)
    try:
        record = await outbox.get(added.id)
        assert record is not None
        assert record.token == "tok-ro"
        assert await outbox.check_file() is None
        assert await outbox.can_deliver() is False
        assert "opened read-only" in (await outbox.health()).problems[0]
        assert outbox.size_bytes() > 0
        finished = Outcome(status="delivered", outcome="accepted")
        for write in (
            lambda: outbox.add([event], now),
            lambda: outbox.claim(now, 1, servers=[SERVER], lease_s=30, max_age_s=60),
            lambda: outbox.finish(record, finished, Attempt(record.id, now, 1.0, 200, "ok", None)),
            lambda: outbox.release([record], now),
            lambda: outbox.retry([added.id], now),
            lambda: outbox.prune(now),
            lambda: outbox.purge("dead", now),
            lambda: outbox.requeue_in_flight(now),
            lambda: outbox.records.save_alert(AlertState("k", now, now, "s")),
        ):
            with pytest.raises(OutboxError, match=r"opened read-only.*mmolove-relay serve"):
                await write()
    finally:
        await outbox.close()


async def test_after_kill_9_the_wal_is_read_and_left_as_it_was(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    ids = [await ingest(http, relay.url, registered(f"tok-k{i}", f"k{i}")) for i in range(3)]
    await wait_delivered(http, relay.url, ids)
    relay.send(signal.SIGKILL)
    assert await relay.exited() == -signal.SIGKILL
    assert (tmp_path / "outbox.db-wal").exists()  # the crash left the log unmerged
    before = files(tmp_path)

    code, out, err = await cli("events", "list", "--json", "--db", str(db))
    assert code == 0, err
    assert sorted(e["id"] for e in json.loads(out)["events"]) == ids
    # The database and its log are untouched: no write, no checkpoint. The -shm index is
    # shared memory every WAL reader marks its snapshot in; it holds no data.
    after = files(tmp_path)
    assert {k: v for k, v in after.items() if not k.endswith("-shm")} == {
        k: v for k, v in before.items() if not k.endswith("-shm")
    }


async def test_an_outbox_of_another_schema_version_is_refused_with_the_way_out(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(f"BEGIN;\n{MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
    conn.close()
    before = files(tmp_path)
    code, _, err = await cli("status", "--db", str(db))
    assert code == 3
    assert "schema version 1" in err
    assert "cannot migrate it" in err
    assert files(tmp_path) == before
