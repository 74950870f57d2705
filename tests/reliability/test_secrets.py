"""Secrets stay secret through a whole run: logs, outbox, metrics and CLI output never hold
the signing secret or the ingest token, and the outbox and socket files are private.
"""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import aiohttp
import pytest

from relay.sandbox import RunningSandbox
from tests.harness import INGEST_TOKEN, Spawn, get_json, ingest, post, relay_env, tuning
from tests.reliability.checker import record
from tests.support import SECRET, cli, poll, qualified, registered


def private(path: Path, *, group_ok: bool = False) -> bool:
    """Nobody but the owner (and, for a socket, its group) may read or write it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode & (0o007 if group_ok else 0o077) == 0


@pytest.mark.long
async def test_a_full_run_never_writes_the_secret_or_token_and_keeps_files_private(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Through a 401 (clock skew), a 429, a dead-letter, deliveries and a
    shutdown, neither secret is ever written anywhere an operator or scraper can look."""
    faults = sandbox.sandbox.faults
    # A clock far ahead makes MMOLove answer 401 until the relay corrects its skew.
    faults.clock_offset_s = 900
    db = tmp_path / "outbox.db"
    env = relay_env(sandbox.url, db, MMOLOVE_RELAY_INGEST_TOKEN=INGEST_TOKEN)
    relay = await spawn(env, config=tuning()).ready()
    status, _, _ = await post(http, relay.url, registered("nope"), token="wrong-token")
    assert status == 401

    async def counts() -> dict[str, int]:
        status = await get_json(http, f"{relay.url}/v1/status", token=INGEST_TOKEN)
        return dict(status["counts"])

    def settled(c: dict[str, int]) -> bool:
        return c["pending"] == c["in_flight"] == 0

    await ingest(http, relay.url, registered("secretive"), token=INGEST_TOKEN)
    assert (await poll(counts, settled, timeout_s=10))["delivered"] == 1
    # Then a 429 and a dead-letter (404, MMOLove's answer kept in the outbox).
    faults.throttle_next = 1
    faults.unknown_tokens = {"secret-dead"}
    last_id = 0
    for body in (qualified("secretive"), registered("secret-dead"), qualified("secret-dead")):
        last_id = await ingest(http, relay.url, body, token=INGEST_TOKEN)
    final = await poll(counts, settled, timeout_s=20)
    assert final == {"pending": 0, "in_flight": 0, "delivered": 2, "dead": 2}, final
    auth = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    by_status = sandbox.sandbox.snapshot()["by_status"]
    assert {"401", "429", "404", "200"} <= set(by_status), by_status

    # What operators and scrapers see: every CLI view, and metrics.
    seen = []
    given = {name: value for name, value in env.items() if value is not None}
    for command in (
        ["status", "--url", relay.url],
        ["status", "--json", "--url", relay.url],
        ["events", "list", "--url", relay.url],
        ["events", "list", "--status", "dead", "--json", "--url", relay.url],
        ["events", "show", str(last_id), "--url", relay.url],
        ["check-config"],
    ):
        code, out, err = await cli(*command, env=given)
        assert code == 0, err
        seen.append(out + err)
    async with http.get(f"{relay.url}/metrics", headers=auth) as resp:
        seen.append(await resp.text())
    # While it runs, the write-ahead log and shared-memory files exist too.
    live = sorted(db.parent.glob(db.name + "*"))
    assert {f.name for f in live} >= {"outbox.db-wal", "outbox.db-shm"}
    exposed = [f.name for f in live if not private(f)]
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0

    output = relay.output() + "".join(seen)
    assert relay.find_logs("sender.paused"), "the run should have included a 401"
    assert relay.find_logs("delivery.dead_lettered")
    files = sorted(db.parent.glob(db.name + "*"))
    assert {f.name for f in files} >= {"outbox.db"}
    leaks = [str(f) for f in files if SECRET.encode() in f.read_bytes()]
    leaks += [str(f) for f in files if INGEST_TOKEN.encode() in f.read_bytes()]
    leaks += ["output"] * ((SECRET in output) + (INGEST_TOKEN in output))
    exposed += [f.name for f in files if not private(f)]
    record(
        {
            "scenario": "secrets: a full run",
            "log_lines": len(relay.stderr),
            "cli_views": len(seen) - 1,
            "files_checked": sorted({f.name for f in live + files}),
            "leaks": len(leaks),
            "files_not_private": exposed,
        }
    )
    assert leaks == []
    assert exposed == []


async def test_the_unix_socket_is_not_world_accessible(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """The ingest socket is 0660: the relay's group may connect, others may not."""
    sock = tmp_path / "ingest.sock"
    env = relay_env(sandbox.url, tmp_path / "outbox.db", MMOLOVE_RELAY_LISTEN=f"unix:{sock}")
    relay = await spawn(env, config=tuning()).ready()
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert private(sock, group_ok=True), oct(sock.stat().st_mode)
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0
