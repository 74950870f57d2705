"""What status says about delivery (the snapshot), and the live settings a SIGHUP replaces."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config.settings import Settings
from relay.config.values import Secret, ServerConfig
from relay.sandbox import RunningSandbox, running_sandbox
from relay.snapshot import (
    CIRCUIT_OPEN,
    DELIVERING,
    BreakerState,
    DeliverySnapshot,
    ServerSnapshot,
)
from tests.harness import Spawn, get_json, ingest, relay_env, tuning, wait_delivered
from tests.support import SECRET, SERVER, Relay, StartRelay, cli, eventually, registered

SECRET_2 = "secret-2-for-the-removal-test"


def row_of(out: str, server_id: str) -> list[str]:
    """The words of a server's row in the status table."""
    return next(line.split() for line in out.splitlines() if line.startswith(server_id + " "))


async def status_of(relay: Relay) -> dict[str, Any]:
    _, body = await relay.get("/v1/status")
    return body


async def test_status_of_a_paused_server_shows_the_probe_not_zero(
    start_relay: StartRelay, settings: Settings
) -> None:
    """Paused on a 401 with the probe a minute away: state paused, next attempt ~60 s."""
    relay = await start_relay(
        servers=(ServerConfig(SERVER, Secret("wrong-secret")),), pause_probe_s=60.0
    )
    await relay.post(registered("tok-paused"))
    body = await eventually(
        lambda: _paused(relay), timeout_s=5, what="the server to pause on its 401"
    )
    assert 55 <= body["next_attempt_in_s"] <= 60, body["next_attempt_in_s"]
    [server] = body["servers"]
    assert (server["state"], server["paused"]) == ("paused", True)
    assert 55 <= server["next_attempt_in_s"] <= 60

    code, out, err = await cli("status", "--url", relay.url)
    assert code == 0, err
    assert "next attempt in: 0.0s" not in out
    assert row_of(out, SERVER)[:2] == [SERVER, "PAUSED"]


async def _paused(relay: Relay) -> dict[str, Any] | None:
    body = await status_of(relay)
    return body if body["servers"][0]["paused"] else None


async def test_status_with_the_circuit_open_shows_when_it_reopens(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """MMOLove down: the server's state says the circuit holds it, and the next attempt is
    the circuit's reopening, not the event's due time."""
    sandbox.sandbox.faults.outage = True
    relay = await start_relay(breaker_failures=1, breaker_cooldown_s=40.0, backoff_cap_s=0.1)
    await relay.post(registered("tok-open"))
    body = await eventually(
        lambda: _open(relay), timeout_s=5, what="the circuit to open on the outage"
    )
    assert 35 <= body["next_attempt_in_s"] <= 40, body["next_attempt_in_s"]
    [server] = body["servers"]
    assert server["state"] == "circuit_open"
    assert body["next_attempt_in_s"] == server["next_attempt_in_s"]

    code, out, err = await cli("status", "--url", relay.url)
    assert code == 0, err
    assert "next attempt in: 0.0s" not in out
    assert row_of(out, SERVER)[:3] == [SERVER, "CIRCUIT", "OPEN"]


async def _open(relay: Relay) -> dict[str, Any] | None:
    body = await status_of(relay)
    return body if body["circuit"] == "open" else None


def two_servers(*ids: str) -> str:
    secrets = {SERVER: SECRET, "srv-2": SECRET_2}
    entries = "".join(f'[[servers]]\nid = "{i}"\nsecret = "{secrets[i]}"\n' for i in ids)
    # Many failures before the circuit opens: the retries of srv-2's events must go on.
    return tuning(extra="breaker_failures = 1000\n") + entries


async def test_sighup_removing_a_server_holds_its_events_and_adding_it_back_sends_them(
    spawn: Spawn, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Servers srv-1, srv-2 → srv-1: srv-2's retrying events are sent no more and status
    shows them held with the reason; srv-2 back → they are delivered."""
    async with running_sandbox({SERVER: SECRET, "srv-2": SECRET_2}) as sandbox:
        env = relay_env(
            sandbox.url, tmp_path / "outbox.db", MMOLOVE_SERVER_ID=None, MMOLOVE_SECRET=None
        )
        relay = await spawn(env, config=two_servers(SERVER, "srv-2")).ready()
        config = tmp_path / "relay-0.toml"  # where spawn wrote it
        assert config.exists()
        faults = sandbox.sandbox.faults
        faults.error_rate, faults.error_status = 1.0, 503
        held = [
            await ingest(http, relay.url, {**registered(f"held-{i}"), "server_id": "srv-2"})
            for i in range(3)
        ]
        await eventually(
            lambda: sandbox.sandbox.snapshot()["requests"] >= 3,
            timeout_s=5,
            what="srv-2's events to be tried",
        )

        config.write_text(two_servers(SERVER), encoding="utf-8")
        relay.send(signal.SIGHUP)
        reloaded = await relay.wait_log("relay.reloaded")
        assert reloaded["removed"] == ["srv-2"]
        faults.error_rate = 0.0
        sent = await ingest(http, relay.url, registered("still-served"))
        await wait_delivered(http, relay.url, [sent])
        await asyncio.sleep(1.0)  # several backoffs (cap 0.5 s) for srv-2's retries to show
        servers = {a["server_id"] for a in sandbox.sandbox.snapshot()["accepted"]}
        assert servers == {SERVER}, "a removed server's events were still delivered"

        status = await get_json(http, f"{relay.url}/v1/status")
        by_id = {s["server_id"]: s for s in status["servers"]}
        assert by_id["srv-2"]["state"] == "held"
        assert "not in the configuration" in by_id["srv-2"]["reason"]
        assert by_id["srv-2"]["counts"]["pending"] == 3
        code, out, err = await cli("status", "--url", relay.url)
        assert code == 0, err
        assert row_of(out, "srv-2")[:3] == ["srv-2", "HELD", "3"]
        assert "srv-2 is held: server srv-2 is not in the configuration" in out

        config.write_text(two_servers(SERVER, "srv-2"), encoding="utf-8")
        relay.send(signal.SIGHUP)
        await wait_delivered(http, relay.url, held)


def _snapshot(
    *, circuit: BreakerState, in_flight: int, reopens_at: float | None
) -> DeliverySnapshot:
    server = ServerSnapshot(SERVER, CIRCUIT_OPEN if circuit == "open" else DELIVERING)
    return DeliverySnapshot(circuit, reopens_at, in_flight, False, (server,))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("circuit", "in_flight", "due", "expected"),
    [
        ("closed", 0, None, None),  # nothing waits
        ("closed", 1, None, None),  # only an attempt in flight: no next one is known
        ("closed", 0, 100.0, 100.0),
        ("open", 0, 100.0, 140.0),  # due, but the circuit holds it until it reopens
        ("open", 0, 150.0, 150.0),
        # The attempt that opened the circuit is not written back yet: it is retried when
        # the circuit reopens (status once said "no next attempt" in this window).
        ("open", 1, None, 140.0),
    ],
)
def test_next_attempt_is_never_before_the_circuit_reopens(
    circuit: BreakerState, in_flight: int, due: float | None, expected: float | None
) -> None:
    reopens_at = 140.0 if circuit == "open" else None
    snapshot = _snapshot(circuit=circuit, in_flight=in_flight, reopens_at=reopens_at)
    assert snapshot.next_attempt_at(due) == expected
