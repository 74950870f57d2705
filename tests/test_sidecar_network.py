"""The sidecar across real networks: a game server, the relay and MMOLove (the sandbox) on
three hosts, each its own network namespace, joined by veth pairs.

    game 10.77.1.1 --ingest-- 10.77.1.2 relay 10.77.2.1 --upstream-- 10.77.2.2 sandbox

The addresses exist only inside these namespaces. The relay listens on its ingest address
with a token; the game server posts from its own host; the sandbox is served by this test
on a socket made in its host. Taking ``upstream`` down under load must lose nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from relay.sandbox import running_sandbox
from tests.harness import INGEST_TOKEN, Spawn, accepted_keys, key_of, relay_env, tuning
from tests.support import SECRET, SERVER, eventually, registered
from tests.systems import Host, hosts, link, set_link, sh

INGEST = ("10.77.1.2", 8787)
SANDBOX = ("10.77.2.2", 8080)
EVENTS = 400

# A game server's posts, from its own host: one event per line of argv[4:] tokens, the
# answers counted by status. Standard library only, as a game server's own code might be.
_POST = r"""
import http.client, json, sys, time
host, port, token, interval = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
statuses = {}
for body in sys.stdin:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        conn.request("POST", "/v1/events", body.encode(), headers)
        status = str(conn.getresponse().status)
        conn.close()
    except OSError as exc:
        status = type(exc).__name__
    statuses[status] = statuses.get(status, 0) + 1
    time.sleep(interval)
print(json.dumps(statuses))
"""


async def post_from(
    host: Host, bodies: list[dict[str, object]], *, token: str = "", interval_s: float = 0.0
) -> dict[str, int]:
    """POST each body to the relay's ingest from ``host``; the answers counted by status."""
    proc = await asyncio.create_subprocess_exec(
        *host.exec_args(),
        *(sys.executable, "-c", _POST, INGEST[0], str(INGEST[1]), token, str(interval_s)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    lines = "".join(json.dumps(body) + "\n" for body in bodies).encode()
    out, err = await proc.communicate(lines)
    assert proc.returncode == 0, err.decode()
    statuses: dict[str, int] = json.loads(out)
    return statuses


@pytest.mark.long
async def test_sidecar_across_three_hosts_loses_nothing_when_the_upstream_link_drops(
    spawn: Spawn, tmp_path: Path
) -> None:
    with hosts("game", "relay", "sandbox") as net:
        game, relay_host, sandbox_host = net["game"], net["relay"], net["sandbox"]
        link(game, "10.77.1.1/24", relay_host, "10.77.1.2/24", name="ingest")
        link(relay_host, "10.77.2.1/24", sandbox_host, "10.77.2.2/24", name="upstream")
        # A route from the sandbox's host to ingest, so it can at least try to post there.
        sh(
            *("ip", "-n", sandbox_host.name, "route", "add", "10.77.1.0/24", "via", "10.77.2.1"),
            timeout_s=30,
            what="ip route add",
        )
        sock = sandbox_host.socket()
        sock.bind(SANDBOX)
        async with running_sandbox({SERVER: SECRET}, sock=sock) as sb:
            env = relay_env(
                sb.url,
                tmp_path / "outbox.db",
                MMOLOVE_RELAY_LISTEN=f"{INGEST[0]}:{INGEST[1]}",
                MMOLOVE_RELAY_INGEST_TOKEN=INGEST_TOKEN,
            )
            config = tuning(extra="breaker_cooldown_s = 0.5\nconnect_timeout_s = 1.0\n")
            relay = await spawn(env, config=config, wrap=relay_host.exec_args()).ready()
            assert relay.url == f"http://{INGEST[0]}:{INGEST[1]}"

            # Without the token, no other host gets in: not the game server's, not
            # MMOLove's, not even a process on the relay's own host off loopback.
            probe = [registered("net-probe")]
            for host in (game, sandbox_host, relay_host):
                assert await post_from(host, probe) == {"401": 1}, host.name
                wrong = await post_from(host, probe, token="not-the-token")
                assert wrong == {"401": 1}, host.name
            assert await post_from(game, probe, token=INGEST_TOKEN) == {"202": 1}

            # Under load, the relay-sandbox link goes down for three seconds.
            bodies = [registered(f"net-{n}") for n in range(EVENTS)]
            load = asyncio.create_task(post_from(game, bodies, token=INGEST_TOKEN, interval_s=0.01))
            await asyncio.sleep(1.0)
            set_link(relay_host, "upstream", "down")
            await asyncio.sleep(0.5)  # what was on the wire has landed or failed
            cut_off = len(accepted_keys(sb))
            await asyncio.sleep(2.5)
            during = len(accepted_keys(sb)) - cut_off
            set_link(relay_host, "upstream", "up")
            assert await load == {"202": EVENTS}
            sent = {key_of(body) for body in [*probe, *bodies]}
            await eventually(
                lambda: set(accepted_keys(sb)) >= sent, timeout_s=60, what="every event delivered"
            )
            relay.send(signal.SIGTERM)
            assert await relay.exited(timeout_s=20) == 0, relay.output()

        delivered = accepted_keys(sb)
        duplicates = sb.sandbox.snapshot()["duplicates"] + sum(
            count - 1 for count in delivered.values()
        )
        print(
            f"netns: {len(sent)} events sent, {len(set(delivered) & sent)} delivered, "
            f"{len(sent - set(delivered))} lost, {duplicates} duplicate sends; "
            f"{len(delivered) - cut_off} of them after the link came back"
        )
        assert during == 0, "the link was down, yet events reached the sandbox"
        assert cut_off < EVENTS, "the link went down after everything had been delivered"
        assert set(delivered) == sent
        assert INGEST_TOKEN not in relay.output()
        assert SECRET not in relay.output()
