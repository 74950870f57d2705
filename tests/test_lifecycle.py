"""The daemon as operators run it: a real subprocess, real signals, loopback sockets, SQLite.

Each test starts ``python -m relay.cli serve`` configured by environment variables only (plus a
TOML file for tuning keys), against the project's sandbox served in the test process, and
judges it by what MMOLove (the sandbox) saw and what the outbox file holds afterwards. The
subprocess harness lives in ``tests/harness.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.cli.client import EXIT_CONFIG
from relay.sandbox import RunningSandbox
from tests.harness import (
    CONCURRENCY,
    DRAIN_TIMEOUT_S,
    Key,
    Spawn,
    accepted_keys,
    cpu_seconds,
    get_json,
    held_answers,
    in_progress,
    ingest,
    key_of,
    outbox_rows,
    post,
    relay_env,
    tuning,
    wait_delivered,
    wait_outbox_settled,
)
from tests.support import SECRET, SERVER, eventually, poll, qualified, registered

WRONG_SECRET = "s3cret-0b5d83aa-wrong"


# -- crash safety --------------------------------------------------------------------------


async def test_sigkill_mid_delivery_then_restart_on_the_same_file_loses_nothing(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """kill -9 with deliveries in flight; a restart delivers every ack once, in token order."""
    faults = sandbox.sandbox.faults
    faults.latency_ms = 300
    db = tmp_path / "outbox.db"
    first = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()

    tokens = [f"tok-{i:02d}" for i in range(30)]
    bodies = [body for t in tokens for body in (registered(t), qualified(t))]
    ids = await asyncio.gather(*(ingest(http, first.url, body) for body in bodies))
    acked = dict(zip(map(key_of, bodies), ids, strict=True))
    assert len(set(ids)) == 60

    async def mid_delivery() -> bool:
        counts = (await get_json(http, f"{first.url}/v1/status"))["counts"]
        return counts["delivered"] >= 4 and counts["in_flight"] >= 1 and in_progress(sandbox) >= 1

    await eventually(mid_delivery, timeout_s=15, what="some delivered and some in flight")
    first.send(signal.SIGKILL)
    assert await first.exited() == -signal.SIGKILL
    assert len(sandbox.sandbox.snapshot()["accepted"]) < 60, "the kill came too late to matter"

    faults.latency_ms = 0
    second = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    recovered = second.find_logs("outbox.recovered_in_flight")
    assert len(recovered) == 1
    assert recovered[0]["events"] >= 1
    records = await wait_delivered(http, second.url, ids, timeout_s=20)

    assert {key_of(r): r["id"] for r in records.values()} == acked
    snap = sandbox.sandbox.snapshot()
    seen = accepted_keys(sandbox)
    assert seen == Counter(dict.fromkeys(acked, 1)), "every acknowledged key exactly once"
    assert [r["outcome"] for r in snap["accepted"]] == ["accepted"] * 60
    # Only what was in flight at the kill may be sent again, and MMOLove dedups it.
    assert snap["duplicate_sends"] == snap["duplicates"] <= CONCURRENCY
    assert set(snap["by_status"]) == {"200"}, snap["by_status"]  # no 422: order held
    order = [(r["token"], r["event"]) for r in snap["accepted"]]
    for token in tokens:
        assert order.index((token, "registered")) < order.index((token, "qualified")), token
    print(f"idempotent replays after the kill: {snap['duplicates']}")


async def test_sigkill_after_mmolove_applied_events_resends_the_same_bytes_counted_once(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """MMOLove took the events but the answers never arrived: the restart resends identical
    bytes and MMOLove deduplicates them (one duplicate send per event in flight)."""
    db = tmp_path / "outbox.db"
    bodies = [registered(f"applied-{i}") for i in range(CONCURRENCY)]
    async with held_answers(sandbox.url, hold_s=2.0) as hop:
        first = await spawn(relay_env(hop.url, db), config=tuning()).ready()
        ids = await asyncio.gather(*(ingest(http, first.url, body) for body in bodies))
        await eventually(
            lambda: len(sandbox.sandbox.snapshot()["accepted"]) == CONCURRENCY,
            timeout_s=5,
            what="MMOLove to apply every event",
        )
        first.send(signal.SIGKILL)
        assert await first.exited() == -signal.SIGKILL

        hop.hold_s = 0.0
        second = await spawn(relay_env(hop.url, db), config=tuning()).ready()
        records = await wait_delivered(http, second.url, ids)

    assert [r["outcome"] for r in records.values()] == ["duplicate"] * CONCURRENCY
    assert [r["attempts"] for r in records.values()] == [2] * CONCURRENCY
    assert [len(r["delivery_log"]) for r in records.values()] == [1] * CONCURRENCY
    snap = sandbox.sandbox.snapshot()
    assert accepted_keys(sandbox) == Counter(dict.fromkeys(map(key_of, bodies), 1))
    assert (snap["duplicates"], snap["duplicate_sends"]) == (CONCURRENCY, CONCURRENCY)
    sent = Counter(hop.seen)
    assert sorted(sent.values()) == [2] * CONCURRENCY, "each resend must repeat the same bytes"
    assert set(sent) == {r["body"].encode() for r in records.values()}


async def test_sigkill_during_an_ingest_burst_keeps_every_acknowledged_event(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """kill -9 while POSTs are in flight: every 202 survives the restart and is delivered."""
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    bodies = iter([registered(f"burst-{i:03d}") for i in range(400)])
    acked: dict[Key, int] = {}
    failed: list[Key] = []
    killed = False

    async def game_server() -> None:
        nonlocal killed
        for body in bodies:  # shared by every worker: each body is posted once
            try:
                status, answer, _ = await post(http, relay.url, body)
            except aiohttp.ClientError:
                failed.append(key_of(body))
                continue
            assert status == 202, answer
            acked[key_of(body)] = int(answer["id"])
            if len(acked) >= 60 and not killed:
                killed = True
                relay.send(signal.SIGKILL)

    await asyncio.gather(*(game_server() for _ in range(16)))
    assert await relay.exited() == -signal.SIGKILL
    assert len(acked) >= 60
    assert failed, "no POST was cut off: the kill did not land during the burst"

    restarted = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    records = await wait_delivered(http, restarted.url, acked.values())
    assert {key_of(r): r["id"] for r in records.values()} == acked
    counts = await wait_outbox_settled(http, restarted.url)
    assert counts["dead"] == 0
    # Unacknowledged POSTs may or may not have been stored; whatever was stored is delivered.
    seen = accepted_keys(sandbox)
    assert counts["delivered"] == len(seen) >= len(acked)
    assert all(key in seen for key in acked), "an acknowledged event was lost"
    assert set(seen) <= set(acked) | set(failed)
    assert sandbox.sandbox.snapshot()["duplicate_sends"] <= CONCURRENCY  # in flight at the kill


# -- graceful shutdown ---------------------------------------------------------------------


@pytest.mark.timed  # the drain is timed in wall-clock seconds
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_drains_in_flight_deliveries_and_exits_0(
    sig: signal.Signals,
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """SIGTERM/SIGINT: refuse new events, finish in-flight attempts, exit 0, lose nothing."""
    faults = sandbox.sandbox.faults
    faults.latency_ms = 500
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    bodies = [registered(f"drain-{i}") for i in range(CONCURRENCY + 2)]
    ids = await asyncio.gather(*(ingest(http, relay.url, body) for body in bodies))
    await eventually(
        lambda: in_progress(sandbox) == CONCURRENCY, timeout_s=5, what="a full set in flight"
    )
    records = [await get_json(http, f"{relay.url}/v1/events/{i}") for i in ids]
    in_flight = {key_of(r) for r in records if r["status"] == "in_flight"}
    assert len(in_flight) == CONCURRENCY

    signalled = time.monotonic()
    relay.send(sig)
    await relay.wait_log("relay.stopping", timeout_s=DRAIN_TIMEOUT_S)
    # The listener answers until the drain ends, as the README promises: a refused
    # connection would tell the client nothing about when to come back.
    status, answer, headers = await post(http, relay.url, registered("late"))
    assert status == 503, f"a POST during shutdown got {status} {answer}"
    assert int(headers["Retry-After"]) > 0
    assert "shutting down" in answer["error"]["message"]
    assert await relay.exited(timeout_s=DRAIN_TIMEOUT_S + 5) == 0
    assert time.monotonic() - signalled < DRAIN_TIMEOUT_S
    assert relay.find_logs("relay.stopped")

    rows = outbox_rows(db)
    assert set(rows) == set(map(key_of, bodies)), "the late POST was stored, or one was lost"
    assert {key: rows[key][1] for key in in_flight} == dict.fromkeys(in_flight, "delivered")
    assert {status for _, status, _ in rows.values()} <= {"delivered", "pending"}
    assert all(accepted_keys(sandbox)[key] == 1 for key in in_flight)

    faults.latency_ms = 0
    restarted = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    await wait_delivered(http, restarted.url, ids)
    assert accepted_keys(sandbox) == Counter(dict.fromkeys(map(key_of, bodies), 1))
    assert sandbox.sandbox.snapshot()["duplicates"] == 0  # drained answers were recorded


@pytest.mark.timed  # the drain is timed in wall-clock seconds
async def test_sigterm_with_a_half_received_post_stops_claiming_and_keeps_the_drain_budget(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A client still sending its POST at SIGTERM neither stretches shutdown past the drain
    budget nor lets new attempts start; it gets no 202 for an event that was not stored."""
    sandbox.sandbox.faults.latency_ms = 1000
    budget_s = 2.5
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning(drain_timeout_s=budget_s)).ready()
    host, port = relay.url.removeprefix("http://").rsplit(":", 1)
    slow = registered("slow-client")
    raw = json.dumps(slow).encode()
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + raw[:10])
        await writer.drain()
        bodies = [registered(f"claim-{i}") for i in range(CONCURRENCY + 2)]
        await asyncio.gather(*(ingest(http, relay.url, body) for body in bodies))
        await eventually(
            lambda: in_progress(sandbox) == CONCURRENCY, timeout_s=5, what="a full set in flight"
        )
        signalled = time.monotonic()
        relay.send(signal.SIGTERM)
        await relay.wait_log("relay.stopping")
        writer.write(raw[10:])
        await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), timeout=3 * budget_s)
        except ConnectionError:
            answer = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert await relay.exited(timeout_s=3 * budget_s) == 0
    elapsed = time.monotonic() - signalled

    rows = outbox_rows(db)
    if answer.startswith(b"HTTP/1.1 202"):
        assert key_of(slow) in rows, "a 202 for an event the outbox does not hold"
    else:
        assert key_of(slow) not in rows
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
    started = sandbox.sandbox.snapshot()["requests"]
    assert (started, elapsed < budget_s) == (CONCURRENCY, True), (
        f"{started} attempts reached MMOLove (only the {CONCURRENCY} in flight at SIGTERM "
        f"should) and the relay exited {elapsed:.1f} s after SIGTERM (budget {budget_s} s): "
        "the ingest listener's shutdown waits its own drain_timeout_s for the half-received "
        "request while the dispatcher, not yet told to stop, keeps claiming, and only then "
        "does the delivery drain start its budget"
    )
    pending = [key for key, (_, status, _) in rows.items() if status == "pending"]
    assert len(pending) == 2


@pytest.mark.timed  # the drain is timed in wall-clock seconds
async def test_sigterm_with_a_hung_upstream_exits_0_at_the_drain_budget_and_keeps_events(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Attempts still hanging when the drain budget ends are cancelled and left pending."""
    faults = sandbox.sandbox.faults
    faults.hang = True
    budget_s = 1.0
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning(drain_timeout_s=budget_s)).ready()
    bodies = [registered("hung-a"), registered("hung-b")]
    ids = [await ingest(http, relay.url, body) for body in bodies]
    await eventually(lambda: in_progress(sandbox) == 2, timeout_s=5, what="two hung attempts")

    signalled = time.monotonic()
    relay.send(signal.SIGTERM)
    assert await relay.exited(timeout_s=budget_s + 5) == 0
    elapsed = time.monotonic() - signalled
    assert budget_s * 0.9 <= elapsed < budget_s + 2.5, elapsed
    timeouts = relay.find_logs("dispatcher.drain_timeout")
    assert [t["released"] for t in timeouts] == [2]
    rows = outbox_rows(db)
    assert sorted(rows.values()) == [(ids[0], "pending", 1), (ids[1], "pending", 1)]

    faults.hang = False
    restarted = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    await wait_delivered(http, restarted.url, ids)
    assert accepted_keys(sandbox) == Counter(dict.fromkeys(map(key_of, bodies), 1))


@pytest.mark.timed  # the forced exit is timed in wall-clock seconds
async def test_a_second_sigterm_during_the_drain_forces_exit_1_and_nothing_is_lost(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The operator's second signal ends the drain at once; the restart resends the event."""
    sandbox.sandbox.faults.hang = True
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    body = registered("forced")
    event_id = await ingest(http, relay.url, body)
    await eventually(lambda: in_progress(sandbox) == 1, timeout_s=5, what="a hung attempt")

    relay.send(signal.SIGTERM)
    await relay.wait_log("dispatcher.draining")
    signalled = time.monotonic()
    relay.send(signal.SIGTERM)
    assert await relay.exited(timeout_s=DRAIN_TIMEOUT_S) == 1
    assert time.monotonic() - signalled < 1.5
    assert relay.find_logs("relay.forced_exit")

    sandbox.sandbox.faults.hang = False
    restarted = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    await wait_delivered(http, restarted.url, [event_id])
    assert accepted_keys(sandbox) == Counter({key_of(body): 1})


# -- start-up failures -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"MMOLOVE_SERVER_ID": None}, "MMOLOVE_SERVER_ID"),
        ({"MMOLOVE_SECRET": None}, "MMOLOVE_SECRET"),
        ({"MMOLOVE_RELAY_LISTEN": "0.0.0.0:0"}, "MMOLOVE_RELAY_INGEST_TOKEN"),
    ],
    ids=["no-server-id", "no-secret", "public-listen-without-token"],
)
async def test_missing_configuration_exits_3_with_one_line_naming_it(
    overrides: dict[str, str | None], named: str, spawn: Spawn, tmp_path: Path
) -> None:
    """A start-up refusal is exit code 3 and one stderr line naming what is missing."""
    db = tmp_path / "outbox.db"
    relay = spawn(relay_env("http://127.0.0.1:9/api/referral/events", db, **overrides))
    assert await relay.exited() == EXIT_CONFIG
    lines = [line for line in relay.stderr if line.strip()]
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert relay.stdout == []
    assert not db.exists(), "a refused start must not create the outbox"


async def test_a_second_relay_on_the_same_outbox_exits_3_and_the_first_keeps_serving(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Only one relay may own an outbox file; the second says so and exits 3."""
    db = tmp_path / "outbox.db"
    first = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    second = spawn(relay_env(sandbox.url, db), config=tuning())
    assert await second.exited() == EXIT_CONFIG
    lines = [line for line in second.stderr if line.strip()]
    assert len(lines) == 1, lines
    assert "another relay is already using the outbox" in lines[0]
    assert str(db) in lines[0]

    event_id = await ingest(http, first.url, registered("still-served"))
    await wait_delivered(http, first.url, [event_id])


async def test_a_listen_address_in_use_exits_3_naming_the_setting(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """A taken port is a start-up failure (exit 3) that points at MMOLOVE_RELAY_LISTEN."""
    first = await spawn(relay_env(sandbox.url, tmp_path / "a.db"), config=tuning()).ready()
    taken = first.url.removeprefix("http://")
    second = spawn(
        relay_env(sandbox.url, tmp_path / "b.db", MMOLOVE_RELAY_LISTEN=taken), config=tuning()
    )
    assert await second.exited() == EXIT_CONFIG
    lines = [line for line in second.stderr if line.strip()]
    assert len(lines) == 1, lines
    assert "MMOLOVE_RELAY_LISTEN" in lines[0]
    assert taken in lines[0]


async def test_an_outbox_path_that_cannot_be_created_exits_3_naming_the_path(
    spawn: Spawn, sandbox: RunningSandbox
) -> None:
    """An outbox in a directory that cannot exist is reported as an outbox problem, with the
    path and what to set, not as a port that cannot be listened on."""
    db = "/proc/nope/outbox.db"
    relay = spawn(relay_env(sandbox.url, Path(db)), config=tuning())
    assert await relay.exited() == EXIT_CONFIG
    lines = [line for line in relay.stderr if line.strip()]
    assert len(lines) == 1, lines
    assert f"cannot open the outbox {db}: No such file or directory" in lines[0]
    assert "MMOLOVE_RELAY_DB" in lines[0]
    assert "listen" not in lines[0]


# -- reload and secrets --------------------------------------------------------------------


def wrong_secret_file_env(
    sandbox: RunningSandbox, tmp_path: Path
) -> tuple[Path, dict[str, str | None]]:
    """A relay environment whose secret comes from a file that holds the wrong secret."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(WRONG_SECRET + "\n", encoding="utf-8")
    env = relay_env(
        sandbox.url,
        tmp_path / "outbox.db",
        MMOLOVE_SECRET=None,
        MMOLOVE_SECRET_FILE=str(secret_file),
    )
    return secret_file, env


async def test_sighup_rereads_the_secret_file_and_resumes_a_paused_server(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 401 pauses the server (one attempt, not a retry storm); fix the file + SIGHUP resumes."""
    secret_file, env = wrong_secret_file_env(sandbox, tmp_path)
    relay = await spawn(env, config=tuning()).ready()
    event_id = await ingest(http, relay.url, registered("rotated"))

    async def paused() -> dict[str, Any] | None:
        server = (await get_json(http, f"{relay.url}/v1/status"))["servers"][0]
        return server if server["paused"] else None

    server = await eventually(paused, timeout_s=5, what="the server to pause on 401")
    assert server["server_id"] == SERVER
    assert "401" in server["paused_reason"]
    await asyncio.sleep(0.3)  # time for a retry storm to show, were there one
    assert sandbox.sandbox.snapshot()["by_status"] == {"401": 1}

    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    relay.send(signal.SIGHUP)
    await relay.wait_log("relay.reloaded")
    record = await poll(
        lambda: get_json(http, f"{relay.url}/v1/events/{event_id}"),
        lambda r: r["status"] == "delivered",
        timeout_s=5,
    )
    assert record["status"] == "delivered", (
        f"5 s after SIGHUP the event is still {record['status']}, its next attempt "
        f"{record['next_attempt_at'] - time.time():.0f} s away: the reload did not make the "
        "event that got the 401 due again, so nothing could probe the new secret"
    )
    assert record["outcome"] == "accepted"
    status = await get_json(http, f"{relay.url}/v1/status")
    assert [s["paused"] for s in status["servers"]] == [False]
    assert sandbox.sandbox.snapshot()["by_status"] == {"401": 1, "200": 1}
    assert relay.proc.poll() is None, "SIGHUP must not stop the daemon"


@pytest.mark.timed  # measures the daemon's CPU time
async def test_sighup_with_nothing_left_to_probe_leaves_the_daemon_idle(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A paused server whose only event expired: after SIGHUP the daemon sleeps, not spins."""
    secret_file, env = wrong_secret_file_env(sandbox, tmp_path)
    relay = await spawn(env, config=tuning(extra="max_age_s = 1.0\n")).ready()
    event_id = await ingest(http, relay.url, registered("expiring"))
    await relay.wait_log("sender.paused")
    record = await get_json(http, f"{relay.url}/v1/events/{event_id}")
    await asyncio.sleep(max(0.0, record["created_at"] + 1.1 - time.time()))  # past max_age_s

    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    relay.send(signal.SIGHUP)
    await relay.wait_log("relay.reloaded")
    record = await poll(
        lambda: get_json(http, f"{relay.url}/v1/events/{event_id}"),
        lambda r: r["status"] == "dead",
        timeout_s=3,
    )
    assert (record["status"], record["outcome"]) == ("dead", "expired")

    before = cpu_seconds(relay.proc.pid)
    await asyncio.sleep(1.0)
    busy_s = cpu_seconds(relay.proc.pid) - before
    assert busy_s < 0.3, (
        f"the idle relay burnt {busy_s:.2f} s of CPU in 1 s after SIGHUP: the dispatcher "
        "loops without sleeping while a paused server's probe is due and nothing can be claimed"
    )


async def test_sighup_under_ingest_load_drops_no_request(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Five reloads while 16 clients post: every POST is acknowledged, every event delivered."""
    relay = await spawn(relay_env(sandbox.url, tmp_path / "outbox.db"), config=tuning()).ready()
    bodies = iter([registered(f"reload-{i:03d}") for i in range(300)])
    acked: list[int] = []
    reloads = 0

    async def game_server() -> None:
        nonlocal reloads
        for body in bodies:
            acked.append(await ingest(http, relay.url, body))
            if len(acked) % 50 == 0 and reloads < 5:
                reloads += 1
                relay.send(signal.SIGHUP)

    await asyncio.gather(*(game_server() for _ in range(16)))
    await wait_delivered(http, relay.url, acked)
    await eventually(
        lambda: len(relay.find_logs("relay.reloaded")) == 5 or None,
        timeout_s=5,
        what="five relay.reloaded log lines",
    )
    assert len(acked) == 300
    assert len(accepted_keys(sandbox)) == 300
    assert relay.proc.poll() is None
